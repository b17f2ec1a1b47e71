"""Plain helpers that several test modules share (fixtures live in conftest.py; the synthetic experiment folder in
synthetic.py): tiny training data and configs, gradient comparisons, a tiny experiment over a two-task pack, a tiny
sentence-transformers peer, and the serve tests' API key and texts. No test module imports another test module."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from poolattn.experiment import Design, ExperimentConfig
from poolattn.training import TrainConfig, Trainer, apply_overrides

# ---- training -------------------------------------------------------------------------------------------------------
WORDS = "the quick brown fox jumps over a lazy dog cat sat on mat man is playing guitar two dogs run in park".split()


def write_data(folder: Path) -> list[dict]:
    """Two small sources, one with hard negatives."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, n, neg in (("nli", 60, True), ("pairs", 40, False)):
        with open(folder / f"{name}.jsonl", "w") as f:
            for _ in range(n):
                q = " ".join(rng.choices(WORDS, k=6))
                row = {"query": q, "positive": q + " " + rng.choice(WORDS)}
                if neg and rng.random() < 0.7:  # some rows without: processes get different numbers of texts
                    row["negative"] = " ".join(rng.choices(WORDS, k=5))
                f.write(json.dumps(row) + "\n")
    return [{"path": str(folder / "nli.jsonl")}, {"path": str(folder / "pairs.jsonl")}]


def tiny_config(backbone: str, tmp_path: Path, **overrides) -> TrainConfig:
    """A 6-step LoRA + latent-pooler run on write_data's texts under tmp_path; overrides are dotted `--set` keys."""
    raw = dict(model=dict(backbone=backbone, pooling="latent", pooling_kwargs={"num_latents": 4, "num_heads": 4},
                          dtype="float32", max_length=32),
               data=write_data(tmp_path / "data"), batch_size=8, max_steps=6, save_every=2, warmup_steps=1,
               lr=1e-3, mixed_precision="no", output_dir=str(tmp_path / "run"), progress=False, seed=0)
    return TrainConfig.model_validate(apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))


def trainer_and_batch(cfg: TrainConfig) -> tuple[Trainer, list]:
    """A set-up Trainer and its first batch of examples."""
    t = Trainer(cfg)
    t.setup()
    return t, t.sampler.next_batch().examples


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def with_lora_effect(model, std: float = 0.05):
    """`model` with a LoRA (r 4, alpha 8, no dropout) whose update is not zero, as after training (lora_B starts
    at zero)."""
    model.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return model


def assert_same(a: dict, b: dict, atol=1e-5):
    """Same keys, every tensor within atol; returns the worst difference."""
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst
    return worst


# ---- experiments ----------------------------------------------------------------------------------------------------
PAIRS = [("a man plays a guitar", "someone is playing music", "a cat sleeps"),
         ("the dog runs in the park", "a dog is running outside", "the stock market fell"),
         ("what is the capital of france", "paris is the capital of france", "berlin is in germany"),
         ("a woman slices an onion", "someone is cutting vegetables", "two men play chess"),
         ("how do i reset my password", "steps to change your password", "the weather is sunny"),
         ("the cat sat on the mat", "a cat is sitting on a rug", "a plane takes off")]


def mini_pack(data_dir, root, rows=100):
    """A two-task pack (the first `rows` pairs of BIOSSES and STS13) so the end-to-end test stays fast."""
    tasks = json.loads((data_dir / "tasks.json").read_text())["tasks"]
    out = {}
    for name in ("BIOSSES", "STS13"):
        entry = tasks[name]
        (root / entry["path"]).mkdir(parents=True)
        lines = (data_dir / entry["path"] / "test.jsonl").read_text().splitlines()[:rows]
        (root / entry["path"] / "test.jsonl").write_text("\n".join(lines) + "\n")
        out[name] = entry
    (root / "tasks.json").write_text(json.dumps({"tasks": out, "train": {}}))
    return root


def tiny_experiment_config(tmp_path, backbone, data_dir) -> ExperimentConfig:
    """Two designs (eos-causal, multilayer-bi), 3 training steps each, evaluated on mini_pack's two tasks."""
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}) + "\n" for q, p, n in PAIRS * 3))
    return ExperimentConfig(
        name="tiny", output_dir=str(tmp_path / "exp"),
        base={"backbone": backbone, "dtype": "float32", "max_length": 128},  # byte-level tokens: room for
        # the instruction and the text (at 32 every text was cut to the same instruction prefix)
        designs=[Design(name="eos-causal", pooling="eos"),
                 Design(name="multilayer-bi", pooling="multilayer", attention="bidirectional",
                        pooling_kwargs={"num_latents": 4, "num_heads": 4})],
        train={"data": [{"path": str(train_file)}], "batch_size": 4, "max_steps": 3, "warmup_steps": 1,
               "save_every": 2, "progress": False, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        eval={"tasks": ["BIOSSES", "STS13"], "data_dir": str(mini_pack(data_dir, tmp_path / "pack")),
              "batch_size": 64},
        report={"n_resamples": 200},
    )


def tiny_sentence_transformer(backbone: str, folder) -> str:
    """A sentence-transformers model folder (modules.json) over the tiny decoder, mean pooling."""
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(backbone, max_seq_length=64)
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension  # renamed in 6.x
    model = SentenceTransformer(modules=[word, models.Pooling(dim(), "mean")], device="cpu")
    model.save(str(folder))
    return str(folder)


# ---- serving --------------------------------------------------------------------------------------------------------
KEY = "sk-test"
TEXTS = ["the cat sat on the mat", "a man is playing a guitar", "paris is the capital of france", "x"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for a server started by a test)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(proc, port: int, log, timeout_s: float = 120) -> None:
    """Wait until the `poolattn serve` process `proc` answers /health on `port` with 200. Raises AssertionError with
    `log()` (the server's output) when it exits first or does not answer within `timeout_s`; the caller stops it."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"serve did not answer /health in {timeout_s:.0f} s:\n{log()}")
