"""Peer models: reference rows evaluated beside the designs (runs/peer-<slug>/eval), shown in the report's tables,
never tested as designs."""
import json

import pytest
import yaml

from poolattn.experiment import Design, ExperimentConfig, run_experiment
from poolattn.experiment.peers import peer_name
from poolattn.report import load_experiment, write_report

from helpers import tiny_experiment_config, tiny_sentence_transformer
from synthetic import write_synthetic_experiment

A, B, MINILM = "1-eos-causal", "4-latent-bidirectional", "peer-all-MiniLM-L6-v2"


def test_peer_names_and_config_checks():
    assert peer_name("all-MiniLM-L6-v2") == MINILM
    assert peer_name("sentence-transformers/all-MiniLM-L6-v2") == "peer-sentence-transformers-all-MiniLM-L6-v2"
    assert peer_name("/models/st model/") == "peer-models-st-model"
    long = peer_name("/x/" + "m" * 300)
    assert len(long) < 100 and long != peer_name("/y/" + "m" * 300)  # the hash keeps long names apart
    cfg = ExperimentConfig(peers=["all-MiniLM-L6-v2", "org/m"])
    assert [r.name for r in cfg.reference_rows()] == ["baseline", MINILM, "peer-org-m"]
    assert [s.name for s in cfg.steps()][:3] == ["baseline", MINILM, "peer-org-m"]
    with pytest.raises(ValueError, match="peers must name different models"):
        ExperimentConfig(peers=["org/m", "org-m"])  # two names, one folder
    with pytest.raises(ValueError, match="may not start with 'peer-'"):
        ExperimentConfig(designs=[Design(name="peer-x", pooling="eos")])


def test_a_misnamed_peer_fails_before_anything_trains(tmp_path, tiny_llama, data_dir):
    cfg = tiny_experiment_config(tmp_path, tiny_llama, data_dir)
    cfg = cfg.model_copy(update={"peers": [str(tmp_path / "no-such-model")]})
    with pytest.raises(ValueError, match="no-such-model.*does not exist"):
        run_experiment(cfg, progress=False)
    assert not (tmp_path / "exp" / "runs").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no model"):
        run_experiment(cfg.model_copy(update={"peers": [str(tmp_path / "empty")]}), progress=False)
    with pytest.raises(ValueError, match="--design nope"):
        run_experiment(cfg.model_copy(update={"peers": []}), progress=False, only=["nope"])


def test_peers_are_evaluated_once_and_reported_as_reference_rows(tiny_llama, data_dir, tmp_path):
    """`--design peers` evaluates only the peer; the full run adds a second peer to the pinned experiment, trains the
    design and leaves the first peer's evaluation alone; the report shows both peers beside the baseline, untested."""
    from poolattn import EmbeddingModel, ModelConfig

    st = tiny_sentence_transformer(tiny_llama, tmp_path / "st-peer")
    saved = EmbeddingModel(ModelConfig(backbone=tiny_llama, dtype="float32", pooling="eos"))
    saved = str(saved.save_pretrained(tmp_path / "saved-peer"))
    cfg = tiny_experiment_config(tmp_path, tiny_llama, data_dir).model_copy(update={"peers": [st]})
    cfg.designs = cfg.designs[:1]
    cfg.eval.tasks = ["BIOSSES"]
    exp = tmp_path / "exp"
    run_experiment(cfg, progress=False, only=["peers"])
    st_eval = exp / "runs" / peer_name(st) / "eval" / "summary.json"
    assert st_eval.exists() and peer_name(st) == "peer-" + st.strip("/").replace("/", "-")
    assert not (exp / "runs" / "eos-causal").exists() and not (exp / "runs" / "baseline").exists()
    stamp = st_eval.stat().st_mtime_ns

    cfg = cfg.model_copy(update={"peers": [st, saved]})  # a peer added to a started experiment: allowed
    paths = write_report(run_experiment(cfg, progress=False), progress=False)
    assert st_eval.stat().st_mtime_ns == stamp  # evaluated once
    assert (exp / "runs" / peer_name(saved) / "eval" / "BIOSSES.items.json").exists()
    assert not (exp / "runs" / peer_name(st) / "train").exists()
    data = json.loads(paths["json"].read_text())
    peers = [peer_name(st), peer_name(saved)]
    assert data["designs"] == ["eos-causal"] and data["references"] == ["baseline"] + peers
    assert data["labels"][peers[0]] == f"{st} (peer)" and data["labels"]["baseline"] == "baseline (untrained)"
    score = json.loads(st_eval.read_text())["tasks"][0]["main_score"]
    assert data["tasks"]["BIOSSES"]["scores"][peers[0]] == pytest.approx(score)
    assert data["categories"]["STS"]["mean"][peers[1]] is not None
    assert not set(peers) & set(data["tested"])
    assert not set(peers) & {r[k] for r in data["paired_tests"] + data["wilcoxon"] for k in ("a", "b")}
    assert not set(peers) & set(data["seed_level"]["designs"])
    md = paths["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task | type |"))
    assert header == f"| task | type | eos-causal | baseline (untrained) | {st} (peer) | {saved} (peer) |"
    assert f"| {st} (peer) | not trained here |" in md and "not tested against the designs" in md
    assert f"{saved} (peer)" in paths["html"].read_text()


def test_report_carries_peers_as_reference_columns(tmp_path):
    """Synthetic results: the peer is the best model, the tables show it (bold), the tests leave it out even with
    baseline_in_tests; a configured peer without results is noted, not a design."""
    folder = write_synthetic_experiment(tmp_path / "exp", designs={A: (0.0, 1), B: (1.0, 2), MINILM: (3.0, 5)},
                                        tasks={"STS1": ("STS", 80), "ClusterA": ("Clustering", 10)})
    cfg = yaml.safe_load((folder / "experiment.yaml").read_text())
    cfg["designs"] = [d for d in cfg["designs"] if d["name"] != MINILM]
    cfg["peers"] = ["all-MiniLM-L6-v2", "org/not-run"]
    (folder / "experiment.yaml").write_text(yaml.safe_dump(cfg))
    exp = load_experiment(folder)
    assert exp.designs == [A, B] and exp.references == ["baseline", MINILM] and exp.missing == ["peer-org-not-run"]
    data = json.loads(write_report(folder, progress=False, baseline_in_tests=True)["json"].read_text())
    assert data["tested"] == [A, B, "baseline"] and len(data["paired_tests"]) == 3 * 2
    assert MINILM not in data["win_tie_loss"]
    assert "reference row 'peer-org-not-run' has no results yet" in "\n".join(data["notes"])
    md = (folder / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task | type |"))
    assert header == f"| task | type | {A} | {B} | baseline (untrained) | all-MiniLM-L6-v2 (peer) |"
    sts1 = next(line for line in md.splitlines() if line.startswith("| STS1 |")).split(" | ")
    assert sts1[-1].startswith("**") and "▲" not in sts1[-1]  # best in the row, no test against the reference
    cats = next(line for line in md.splitlines() if line.startswith("| STS | 1 |")).split(" | ")
    assert len(cats) == 6 and cats[-1].strip(" |*") == f"{100 * data['categories']['STS']['mean'][MINILM]:.2f}"


def test_one_design_beside_a_peer_reports_scores_without_test_sections(tmp_path):
    """configs/best_cpu.yaml's shape: one design and a peer. The report gives the scores and says there is nothing
    to test, instead of empty Wilcoxon / win-tie-loss tables and a seed caveat about a ranking."""
    folder = write_synthetic_experiment(tmp_path / "exp", designs={A: (0.0, 1), MINILM: (3.0, 5)},
                                        tasks={"STS1": ("STS", 80), "ClusterA": ("Clustering", 10)})
    cfg = yaml.safe_load((folder / "experiment.yaml").read_text())
    cfg["designs"] = [d for d in cfg["designs"] if d["name"] != MINILM]
    cfg["peers"] = ["all-MiniLM-L6-v2"]
    (folder / "experiment.yaml").write_text(yaml.safe_dump(cfg))
    md = (write_report(folder, progress=False)["md"]).read_text()
    assert f"One design ({A}): no comparison between designs to test." in md
    assert "## Wilcoxon" not in md and "## Win / tie / loss" not in md and "One training seed" not in md
    header = next(line for line in md.splitlines() if line.startswith("| task | type |"))
    assert header == f"| task | type | {A} | baseline (untrained) | all-MiniLM-L6-v2 (peer) |"
