"""Nothing a user does or suffers corrupts state, and every user error is one clear line (issue 12): the CLI's error
boundary, argument checks, atomic outputs, the crash-safe embedding cache, the trainer's run folder."""
from __future__ import annotations

import errno
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from poolattn.cli import app

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "POOLATTN_DEBUG": ""}
runner = CliRunner()


def cli(*args: str):
    res = runner.invoke(app, [str(a) for a in args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    return res.exit_code, lines


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "t.txt"
    path.write_text("a man is playing a guitar\ntwo dogs run in the park\n")
    return path


@pytest.fixture
def saved_model(tiny_llama, tmp_path_factory) -> Path:
    from poolattn import EmbeddingModel, ModelConfig

    folder = tmp_path_factory.mktemp("m") / "model"
    EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="mean", dtype="float32")).save_pretrained(folder)
    return folder


# ---- 2, 3: encode's arguments and output ----------------------------------------------------------------------------

@pytest.mark.parametrize("option,value", [("--batch-size", "-1"), ("--batch-size", "0"), ("--max-length", "0"),
                                          ("--max-length", "-5")])
def test_encode_rejects_non_positive_sizes(saved_model, texts, tmp_path, option, value):
    code, lines = cli("encode", "--model", saved_model, "-i", texts, "-o", tmp_path / "e.npy", option, value)
    assert code == 2 and option in "\n".join(lines) and not (tmp_path / "e.npy").exists()


def test_encode_writes_exactly_the_path_given_and_checks_it_first(saved_model, texts, tmp_path):
    code, _ = cli("encode", "--model", saved_model, "-i", texts, "-o", tmp_path / "emb.txt")
    assert code == 0 and np.load(tmp_path / "emb.txt").shape[0] == 2 and not (tmp_path / "emb.txt.npy").exists()
    (tmp_path / "adir").mkdir()
    code, lines = cli("encode", "--model", saved_model, "-i", texts, "-o", tmp_path / "adir")
    assert code == 2 and "is a folder" in lines[-1] and list((tmp_path / "adir").iterdir()) == []
    # a missing output folder is found before the model loads (a model that does not exist is never reached)
    code, lines = cli("encode", "--model", "no-such-model", "-i", texts, "-o", tmp_path / "missing" / "e.npy")
    assert code == 2 and "does not exist" in lines[-1] and "missing" in lines[-1]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_encode_disk_full_keeps_the_old_file_and_says_so(saved_model, texts, tmp_path, monkeypatch):
    out = tmp_path / "e.npy"
    assert cli("encode", "--model", saved_model, "-i", texts, "-o", out)[0] == 0
    good = out.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    code, lines = cli("encode", "--model", saved_model, "-i", texts, "-o", out)
    assert code == 1 and lines[-1].startswith("error: disk full") and str(out) in lines[-1]
    assert out.read_bytes() == good and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- 6: one line, no traceback --------------------------------------------------------------------------------------

def test_user_errors_are_one_line_without_traceback(saved_model, texts, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "empty").mkdir()
    cases = [
        (["encode", "--model", saved_model, "-i", bad, "-o", tmp_path / "e.npy"], 2, ["latin1.txt", "UTF-8"]),
        (["encode", "--model", tmp_path / "empty", "-i", texts, "-o", tmp_path / "e.npy"], 2, ["empty", "without a model"]),
        (["encode", "--model", saved_model, "-i", tmp_path / "nope.txt", "-o", tmp_path / "e.npy"], 2, ["nope.txt"]),
        (["encode", "--model", saved_model, "-i", texts, "-o", "/sys/e.npy"], 2, ["/sys", "not writable"]),
        (["eval", "--model", saved_model, "--tasks", "STSBenchmark", "-o", "/sys/out"], 2, ["/sys", "not writable"]),
        (["experiment", tmp_path / "nope.yaml"], 2, ["nope.yaml"]),
        (["train", tmp_path / "nope.yaml"], 2, ["nope.yaml"]),
    ]
    for args, want_code, words in cases:
        code, lines = cli(*args)
        text = "\n".join(lines)
        assert code == want_code, (args, text)
        assert "Traceback" not in text and len(lines) <= 6, text  # typer's usage box is a few lines
        assert all(w in text for w in words), (words, text)


def test_debug_shows_the_traceback(saved_model, texts, tmp_path):
    bad = tmp_path / "cfg.yaml"
    bad.write_text("output_dir: [unclosed\n")
    code, lines = cli("experiment", bad)
    assert code == 2 and "not valid YAML" in lines[-1] and "cfg.yaml" in lines[-1]
    res = runner.invoke(app, ["--debug", "experiment", str(bad)])
    assert res.exit_code != 0 and res.exception is not None and not isinstance(res.exception, SystemExit)


# ---- 4, 5, 7, 9: training data, run folder, checkpoints -------------------------------------------------------------

def _train_yaml(tiny_llama, tmp_path, data: Path, **extra) -> Path:
    from helpers import tiny_config

    cfg = tiny_config(tiny_llama, tmp_path).model_dump(mode="json")
    cfg.update(data=[{"path": str(data)}], max_steps=2, save_every=1, **extra)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_truncated_training_file_names_the_file_and_leaves_no_folder(tiny_llama, tmp_path):
    from helpers import write_data

    write_data(tmp_path / "good")
    raw = (tmp_path / "good" / "nli.jsonl").read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "nli.jsonl.gz").write_bytes(gzip.compress(raw)[:200])
    cfg = _train_yaml(tiny_llama, tmp_path, tmp_path / "bad")
    code, lines = cli("train", cfg)
    assert code == 1 and "nli.jsonl.gz" in lines[-1] and "truncated" in lines[-1], lines
    assert not (tmp_path / "run").exists()  # nothing written: the folder is as it was
    cfg = _train_yaml(tiny_llama, tmp_path, tmp_path / "good" / "nli.jsonl")  # the corrected data path
    code, lines = cli("train", cfg)
    assert code == 0, lines


def test_checkpoint_disk_full_says_so_and_resume_skips_incomplete_checkpoints(tiny_llama, tmp_path, monkeypatch):
    import torch

    from poolattn.training import checkpoint, list_checkpoints

    from helpers import tiny_config

    cfg = tiny_config(tiny_llama, tmp_path, max_steps=3, save_every=1)
    real_save = torch.save

    def save(obj, f, *a, **k):
        if "optimizer" in str(f) and "step-000002" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 90176 vs 90068")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 1024})())
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    code, lines = cli("train", path)
    assert code == 1 and lines[-1].startswith("error: disk full") and ".tmp-step-000002" in lines[-1], lines
    monkeypatch.undo()
    out = Path(cfg.output_dir)
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]
    # a pruning killed half-way in older versions left a folder holding only trainer_state.json: not resumed from
    (out / "checkpoints" / "step-000005").mkdir()
    (out / "checkpoints" / "step-000005" / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / ".tmp-step-000004").mkdir()
    (out / ".final.tmp-abc").mkdir()
    assert [p.name for p in list_checkpoints(out)] == ["step-000001"]
    assert (out / "checkpoints" / "step-000001" / checkpoint.MARKER).exists()
    from poolattn.training import train

    train(cfg)
    assert not (out / "checkpoints" / ".tmp-step-000004").exists() and not (out / ".final.tmp-abc").exists()
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 3


# ---- 8: experiment refusal names the field --------------------------------------------------------------------------

def test_experiment_config_refusal_names_the_changed_field(tmp_path):
    from poolattn.experiment import ExperimentConfig, write_config_once

    cfg = ExperimentConfig(output_dir=str(tmp_path))
    write_config_once(tmp_path, cfg)
    write_config_once(tmp_path, cfg.model_copy(update={"report": cfg.report.model_copy()}))  # same: accepted
    changed = ExperimentConfig.model_validate({**cfg.model_dump(), "train": {"max_steps": 7}})
    with pytest.raises(ValueError, match=r"train\.max_steps changed"):
        write_config_once(tmp_path, changed)


# ---- 1, 10: the embedding cache -------------------------------------------------------------------------------------

def _sts_pack(root: Path) -> Path:
    import random

    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog man playing guitar two dogs run in park cat".split()
    rows = [{"sentence1": " ".join(rng.choices(words, k=6)), "sentence2": " ".join(rng.choices(words, k=6)),
             "score": rng.uniform(0, 5)} for _ in range(300)]
    (root / "mteb/STSBenchmark").mkdir(parents=True)
    (root / "mteb/STSBenchmark/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps({"tasks": {"STSBenchmark": {
        "type": "STS", "path": "mteb/STSBenchmark", "splits": {"test": "test.jsonl"}}}}))
    return root


def test_broken_store_is_rebuilt_with_a_warning_and_read_only_cache_is_skipped(saved_model, tmp_path, caplog):
    """The store mteb left after a kill (dimension and vectors.npy, no index.json) is named and rebuilt; a cache
    folder that cannot be written is skipped with a warning; every run gives the same score."""
    pack = _sts_pack(tmp_path / "pack")
    env = {"POOLATTN_CACHE": str(tmp_path / "cache")}
    code, _ = cli_env(env, "eval", "--model", saved_model, "--tasks", "STSBenchmark", "--data", pack, "-o", tmp_path / "a")
    assert code == 0
    ref = _score(tmp_path / "a")
    store = next((tmp_path / "cache" / "embeddings").glob("*/*/index.json")).parent
    (store / "index.json").unlink()
    code, lines = cli_env(env, "eval", "--model", saved_model, "--tasks", "STSBenchmark", "--data", pack, "-o",
                          tmp_path / "b")
    assert code == 0 and _score(tmp_path / "b") == ref
    assert any("incomplete" in r.getMessage() and str(store) in r.getMessage() for r in caplog.records)
    assert (store / "index.json").exists()
    caplog.clear()
    code, _ = cli_env({"POOLATTN_CACHE": "/sys/poolattn-cache"}, "eval", "--model", saved_model, "--tasks",
                      "STSBenchmark", "--data", pack, "-o", tmp_path / "c")
    assert code == 0 and _score(tmp_path / "c") == ref
    assert any("evaluating without it" in r.getMessage() for r in caplog.records)


def cli_env(env: dict, *args):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return cli(*args)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _score(folder: Path) -> float:
    return json.loads((folder / "summary.json").read_text())["tasks"][0]["main_score"]


def _kill_when(cmd: list[str], env: dict, ready, timeout: float = 120) -> int | None:
    """Run the real CLI, SIGKILL it as soon as ready() holds; its return code (None if it finished first)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    return proc.wait()


@pytest.mark.slow  # three CLI processes per case (about 30 s each on a loaded 2-core machine)
@pytest.mark.parametrize("moment", ["store created", "vectors written"])
def test_kill_during_the_cache_write_then_rerun_gives_identical_scores(saved_model, tmp_path, moment):
    pack = _sts_pack(tmp_path / "pack")
    cache = tmp_path / "cache"
    env = {**ENV, "POOLATTN_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "poolattn.cli", "eval", "--model", str(saved_model), "--tasks", "STSBenchmark",
           "--data", str(pack), "--batch-size", "8"]
    subprocess.run(cmd + ["-o", str(tmp_path / "ref")], env={**env, "POOLATTN_CACHE": str(tmp_path / "c0")},
                   check=True, capture_output=True)

    def ready() -> bool:
        stores = list((cache / "embeddings").glob("*/*")) if (cache / "embeddings").exists() else []
        if moment == "store created":
            return bool(stores)
        return any((s / "vectors.npy").exists() and (s / "vectors.npy").stat().st_size > 0 for s in stores)
    rc = _kill_when(cmd + ["-o", str(tmp_path / "killed")], env, ready)
    assert rc in (-9, 0)
    done = subprocess.run(cmd + ["-o", str(tmp_path / "rerun")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _score(tmp_path / "rerun") == _score(tmp_path / "ref")


# ---- issue 26: first touch (bad configs, outputs equal to inputs, the data folder, early option checks) -------------

@pytest.mark.parametrize("command", ["train", "experiment", "study"])
@pytest.mark.parametrize("content,word", [("", "is empty"), ("# nothing but a comment\n\n", "is empty"),
                                          ("[1, 2]\n", "not a mapping")])
def test_empty_or_non_mapping_config_is_one_line_before_anything_runs(tmp_path, monkeypatch, command, content, word):
    monkeypatch.chdir(tmp_path)  # the built-in output_dir (runs/...) would land here
    monkeypatch.setenv("POOLATTN_DATA", str(tmp_path / "no-pack"))  # old code: fails fast instead of training
    (tmp_path / "c.yaml").write_text(content)
    code, lines = cli(command, "c.yaml")
    assert code == 2 and lines[-1].startswith("error: CONFIG:") and "c.yaml" in lines[-1] and word in lines[-1], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing created


def test_an_output_that_is_the_input_is_refused_before_anything_is_read(saved_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "t.txt"
    src.write_text("a man is playing a guitar\n")
    (tmp_path / "link.txt").symlink_to(src)
    os.link(src, tmp_path / "hard.txt")
    for out in ("t.txt", "./t.txt", str(src), "link.txt", "hard.txt"):
        code, lines = cli("encode", "--model", "no-such-model", "-i", "t.txt", "-o", out)
        assert code == 2 and "--input" in lines[-1] and "destroy the input" in lines[-1], (out, lines)
        assert src.read_text() == "a man is playing a guitar\n"
    # export replaces its destination whole: the model folder itself, or a folder holding it, is refused
    from poolattn import EmbeddingModel

    model = EmbeddingModel.from_pretrained(saved_model).save_pretrained(tmp_path / "runs" / "m")
    before = sorted(p.name for p in model.iterdir())
    for out in (model, tmp_path / "runs", f"{model}/."):
        code, lines = cli("export", model, out)
        assert code == 2 and "MODEL folder" in lines[-1], (out, lines)
        assert sorted(p.name for p in model.iterdir()) == before


def test_one_rule_for_the_data_folder(tmp_path, monkeypatch):
    from poolattn.datadir import DEFAULT, resolve_data_dir
    from poolattn.errors import UserError
    from poolattn.experiment import ExperimentConfig
    from poolattn.training import TrainConfig

    given, env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    env.mkdir()
    monkeypatch.setenv("POOLATTN_DATA", str(env))
    assert resolve_data_dir(str(given)) == given and resolve_data_dir(None) == env
    # every config leaves the folder to the rule unless it names one (the experiment ignored the variable)
    assert ExperimentConfig().eval.data_dir is None and TrainConfig().data_dir is None
    monkeypatch.delenv("POOLATTN_DATA")
    assert resolve_data_dir(None) == Path(DEFAULT)
    for explicit, env_value, origin in ((tmp_path / "nope", None, "--data"), (None, tmp_path / "nope", "$POOLATTN_DATA")):
        if env_value:
            monkeypatch.setenv("POOLATTN_DATA", str(env_value))
        with pytest.raises(UserError, match=rf"^{re.escape(origin)}: no such folder: .*nope$"):
            resolve_data_dir(explicit)
    monkeypatch.chdir(tmp_path)  # ../shared/data is not here: the default is refused where the pack is needed
    monkeypatch.delenv("POOLATTN_DATA")
    with pytest.raises(UserError, match="the default data folder"):
        resolve_data_dir(None, required=True)


def test_every_command_names_the_missing_data_folder_and_creates_nothing(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "nonexistent")
    code, lines = cli("eval", "--model", "no-such-model", "--data", missing, "--tasks", "STSBenchmark", "-o", "runs/ev")
    assert code == 2 and lines[-1] == f"error: --data: no such folder: {missing}", lines
    code, lines = cli("layers", "--model", "no-such-model", "--data", missing, "--output", "runs/layers")
    assert code == 2 and lines[-1] == f"error: --data: no such folder: {missing}", lines
    monkeypatch.setenv("POOLATTN_DATA", missing)  # the experiment honours the variable as every command does
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"base": {"backbone": tiny_llama}, "designs": ["1-eos-causal"],
                                                       "output_dir": "runs/exp"}))
    code, lines = cli("experiment", "exp.yaml")
    assert code == 2 and lines[-1] == f"error: $POOLATTN_DATA: no such folder: {missing}", lines
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"model": {"backbone": tiny_llama}, "data_dir": missing,
                                                         "output_dir": "runs/train"}))
    code, lines = cli("train", "train.yaml")
    assert code == 2 and lines[-1] == f"error: data_dir: no such folder: {missing}", lines
    assert not (tmp_path / "runs").exists()


def test_a_failed_eval_leaves_no_empty_output_folder(saved_model, tmp_path):
    (tmp_path / "no-pack").mkdir()  # a folder without tasks.json: the task is not found anywhere (offline)
    args = ["eval", "--model", saved_model, "--data", tmp_path / "no-pack", "--tasks", "STSBenchmark", "--no-cache"]
    code, lines = cli(*args, "-o", tmp_path / "runs" / "ev")
    assert code == 1 and not (tmp_path / "runs").exists(), lines
    (tmp_path / "mine").mkdir()  # a folder that existed before is never removed
    code, _ = cli(*args, "-o", tmp_path / "mine")
    assert code == 1 and (tmp_path / "mine").is_dir()


def test_removed_if_failed_removes_only_what_it_made_and_left_empty(tmp_path):
    from poolattn.fileio import removed_if_failed

    for written in (False, True):
        out = tmp_path / f"a{written}" / "b" / "c"
        with pytest.raises(RuntimeError), removed_if_failed(out):
            (out / "sub").mkdir(parents=True)
            if written:
                (out / "sub" / "kept.txt").write_text("x")
            raise RuntimeError
        assert (out / "sub" / "kept.txt").exists() if written else not (tmp_path / f"a{written}").exists()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_serve_rejects_a_bad_port_before_loading_the_model(port):
    code, lines = cli("serve", "no-such-model", "--port", port)  # loading this model would fail otherwise
    assert code == 2 and "--port" in lines[-1], lines
    code, lines = cli("serve", "no-such-model", "--log-level", "loud")
    assert code == 2 and "--log-level" in lines[-1] and "debug" in lines[-1], lines


@pytest.mark.parametrize("command", [["encode", "-i", "t.txt", "-o", "e.npy"], ["layers"], ["serve"]])
def test_every_dtype_option_rejects_an_unknown_dtype_with_the_valid_list(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("x\n")
    args = command[:1] + (["no-such-model"] if command[0] == "serve" else ["--model", "no-such-model"]) + command[1:]
    code, lines = cli(*args, "--dtype", "int8")
    assert code == 2 and "'int8'" in lines[-1] and "bfloat16" in lines[-1], lines


@pytest.mark.parametrize("item,words", [("=5", ["--set =5", "no key"]), ("foo", ["--set foo", "not key=value"]),
                                        ("a..b=1", ["--set a..b=1", "empty part"])])
def test_a_malformed_set_names_its_problem(tmp_path, item, words):
    (tmp_path / "c.yaml").write_text("max_steps: 1\n")
    for command in ("train", "experiment"):
        code, lines = cli(command, tmp_path / "c.yaml", "--set", item)
        assert code == 2 and all(w in lines[-1] for w in words), lines


def test_max_length_beyond_the_models_positions_is_refused(saved_model, texts, tmp_path):
    code, lines = cli("encode", "--model", saved_model, "-i", texts, "-o", tmp_path / "e.npy", "--max-length", "100000")
    assert code == 2 and "--max-length 100000" in lines[-1] and "256" in lines[-1], lines
    assert not (tmp_path / "e.npy").exists()


def test_layers_rejects_an_unknown_task_before_the_layer_pass(data_dir, tmp_path):
    code, lines = cli("layers", "--model", "no-such-model", "--tasks", "Nope", "--data", data_dir,
                      "--output", tmp_path / "layers")
    assert code == 2 and "unknown task 'Nope'" in lines[-1] and "STSBenchmark" in lines[-1], lines
    assert not (tmp_path / "layers").exists()


def test_serve_says_a_port_in_use_before_loading_the_model():
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        code, lines = cli("serve", "no-such-model", "--port", held.getsockname()[1])
    assert code == 2 and "cannot listen on 127.0.0.1" in lines[-1], lines

# ---- issue 26: corrupt model files, file modes, the cache of an interrupted evaluation ------------------------------

@pytest.fixture
def lora_model(tiny_llama, tmp_path_factory) -> Path:
    from poolattn import EmbeddingModel, ModelConfig

    folder = tmp_path_factory.mktemp("lora") / "model"
    m = EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="eos", dtype="float32", max_length=16), device="cpu")
    return m.add_lora(r=4, alpha=8, dropout=0.0).save_pretrained(folder)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_corrupt_model_files_are_named_in_one_line(lora_model, texts, tmp_path):
    """Issue 26 row 7: a truncated pooler / adapter / exported weight file, or a malformed poolattn_config.json,
    is one line that names the file (was "internal error: SafetensorError" or a bare JSON message); exit 1."""
    import shutil

    from poolattn.export import export_model

    export_model(lora_model, tmp_path / "hf-export", "hf")
    cases = {"pooler": "pooler.safetensors", "adapter": "adapter/adapter_model.safetensors",
             "config": "poolattn_config.json", "hf": "model.safetensors"}
    for name, file in cases.items():
        folder = tmp_path / name
        shutil.copytree(tmp_path / "hf-export" if name == "hf" else lora_model, folder)
        if file.endswith(".json"):
            (folder / file).write_text((folder / file).read_text()[:100])
        else:
            _truncate(folder / file)
        code, lines = cli("encode", "-i", texts, "-o", tmp_path / "out.npy", "--model", folder)
        assert code == 1 and len(lines) == 1, (name, lines)
        assert str(folder / file) in lines[0] and "is corrupt" in lines[0], (name, lines)
    code, lines = cli("export", tmp_path / "pooler", tmp_path / "exported")
    assert code == 1 and "pooler.safetensors is corrupt or truncated" in lines[0], lines
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "exported").exists()


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_outputs_have_the_modes_the_umask_gives(saved_model, texts, tmp_path, mask):
    """Issue 26 row 10: tempfile's 0600 / 0700 and safetensors' 0600 made every output private whatever the umask;
    exports are meant to be shared."""
    from poolattn import EmbeddingModel
    from poolattn.export import export_model
    from poolattn.fileio import write_json

    old = os.umask(mask)
    try:
        code, _ = cli("encode", "-i", texts, "-o", tmp_path / "emb.npy", "--model", saved_model)
        assert code == 0
        write_json(tmp_path / "summary.json", {})
        EmbeddingModel.from_pretrained(saved_model, device="cpu").save_pretrained(tmp_path / "final")
        export_model(tmp_path / "final", tmp_path / "export")
    finally:
        os.umask(old)
    files = [tmp_path / "emb.npy", tmp_path / "summary.json", *(tmp_path / "final").rglob("*"),
             *(tmp_path / "export").rglob("*")]
    assert tmp_path / "final" / "pooler.safetensors" in files and tmp_path / "export" / "model.safetensors" in files
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files + [tmp_path / "final",
                                                                                         tmp_path / "export"]}
    want = {k: oct((0o777 if (tmp_path / k).is_dir() else 0o666) & ~mask) for k in modes}
    assert modes == want


def test_an_interrupted_encode_keeps_its_saved_chunks_in_the_cache(tmp_path, monkeypatch):
    """The README's promise: an interrupted evaluation serves its embeddings so far from the cache. The cache was
    saved every 60 s, so a run killed 45 s into a task kept nothing; now every SAVE_EVERY_S (10 s)."""
    from types import SimpleNamespace

    from datasets import Dataset
    from torch.utils.data import DataLoader

    from poolattn.evaluation import encoders

    clock = iter(range(0, 10_000, 11))  # every chunk takes 11 s
    monkeypatch.setattr(encoders, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    rows = [f"text number {i}" for i in range(20)]

    class Encoder:  # 4 chunks of 4 texts go through, the 5th is interrupted (Ctrl-C or a kill)
        calls = 0

        def encode(self, loader, **kwargs):
            self.calls += 1
            if self.calls == 5:
                raise KeyboardInterrupt
            texts = [t for batch in loader for t in batch["text"]]
            return np.array([[float(rows.index(t)), 1.0] for t in texts], dtype=np.float32)

    run = encoders.EncodeRunner(Encoder(), tmp_path / "cache", key=lambda meta, side: "plain", chunk_size=4)
    inputs = DataLoader(Dataset.from_dict({"text": rows}), batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        run.encode(inputs, task_metadata=None, hf_split="test", hf_subset="default")
    store = encoders._numpy_cache_class()(tmp_path / "cache" / "plain")  # what the next run finds
    store.load()
    kept = [i for i, t in enumerate(rows) if store.get_vector({"text": t}) is not None]
    assert kept == sorted(sorted(range(20), key=lambda i: -len(rows[i]))[:16])  # encoded longest first
    assert store.get_vector({"text": rows[17]})[0] == 17.0
