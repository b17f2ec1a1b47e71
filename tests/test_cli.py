import numpy as np
from typer.testing import CliRunner

from poolattn import EmbeddingModel, ModelConfig
from poolattn.cli import app

runner = CliRunner()


def test_encode_and_info(tiny_llama, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat\n\na dog runs in the park\n")
    out = tmp_path / "emb.npy"
    res = runner.invoke(app, ["encode", "--model", tiny_llama, "--pooling", "mean", "--attention", "bidirectional",
                              "--dtype", "float32", "--input", str(texts), "--output", str(out)])
    assert res.exit_code == 0, res.output
    emb = np.load(out)
    ref = EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="mean", attention="bidirectional",
                                     dtype="float32")).encode(["the cat sat", "", "a dog runs in the park"])
    assert emb.shape == (3, 64) and np.abs(emb - ref).max() < 1e-5

    folder = EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="multilayer", dtype="float32",
                                        pooling_kwargs={"num_latents": 4, "num_heads": 4})).save_pretrained(tmp_path / "m")
    res = runner.invoke(app, ["info", str(folder)])
    assert res.exit_code == 0 and "multilayer" in res.output and "num_latents" in res.output


def test_unknown_pooling_fails_with_valid_list(tiny_llama, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("x\n")
    res = runner.invoke(app, ["encode", "--model", tiny_llama, "--pooling", "cls", "--input", str(texts),
                              "--output", str(tmp_path / "e.npy")])
    assert res.exit_code == 2 and "weighted_mean" in res.output  # one line from the CLI's error boundary


def test_version():
    from poolattn import __version__
    from poolattn.allocator import in_use

    res = runner.invoke(app, ["--version"])
    # the allocator mapped into this process (pytest's: the system's, unless the tests run under a preload)
    assert res.exit_code == 0 and res.output.strip() == f"poolattn {__version__} (memory allocator: {in_use()})"


def test_untrained_pooler_on_a_plain_backbone_is_warned_about(tiny_llama, tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("x\n")
    for pooling, warned in (("latent", True), ("multilayer", True), ("mean", False)):
        res = runner.invoke(app, ["encode", "--model", tiny_llama, "--pooling", pooling, "--dtype", "float32",
                                  "-i", str(texts), "-o", str(tmp_path / "e.npy")])
        assert res.exit_code == 0 and ("pooler is untrained" in res.output) == warned, (pooling, res.output)
    folder = EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="latent", dtype="float32")).save_pretrained(
        tmp_path / "m")  # a saved model's pooler is its own: no warning
    res = runner.invoke(app, ["encode", "--model", str(folder), "-i", str(texts), "-o", str(tmp_path / "e.npy")])
    assert res.exit_code == 0 and "pooler is untrained" not in res.output
