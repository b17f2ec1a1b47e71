import json
from pathlib import Path

import pytest
import yaml

from poolattn.experiment import Design, ExperimentConfig, ExperimentLayout, run_experiment
from poolattn.report import write_report

from helpers import mini_pack, tiny_experiment_config


def test_tiny_experiment_end_to_end_and_resume(tiny_llama, data_dir, tmp_path):
    cfg = tiny_experiment_config(tmp_path, tiny_llama, data_dir)
    paths = write_report(run_experiment(cfg, progress=False), progress=False)
    exp = tmp_path / "exp"
    for design in ("baseline", "eos-causal", "multilayer-bi"):
        summary = json.loads((exp / "runs" / design / "eval" / "summary.json").read_text())
        assert summary and (exp / "runs" / design / "eval" / "BIOSSES.items.json").exists()
        assert all(0 < abs(row["main_score"]) <= 1 for row in summary["tasks"]), summary  # no degenerate NaN
    assert (exp / "runs" / "eos-causal" / "train" / "final" / "poolattn_config.json").exists()
    report = paths["md"].read_text()
    assert "BIOSSES" in report and "multilayer-bi" in report and "cannot reach" in report
    assert paths["html"].read_text().count("data:image/png;base64") >= 2
    training = json.loads(paths["json"].read_text())["training"]
    assert training["eos-causal"]["steps"] == 3 and training["multilayer-bi"]["max_steps"] == 3
    assert training["eos-causal"]["eval_seconds"] > 0 and "steps" not in training["baseline"]
    from poolattn.environment import cpu_name  # each run records the machine it ran on (folders resumed elsewhere)
    assert training["eos-causal"]["cpu"] == cpu_name() and isinstance(training["eos-causal"]["cpu_fast_bf16"], bool)
    assert "| multilayer-bi | 3 / 3 |" in report and "baseline (untrained) | untrained" in report
    pinned = yaml.safe_load((exp / "experiment.yaml").read_text())
    assert [d["name"] for d in pinned["designs"]] == ["eos-causal", "multilayer-bi"]
    # ExperimentLayout names what the runner wrote, and everything it wrote
    layout = ExperimentLayout(exp)
    assert layout.evaluated() == ["baseline", "eos-causal", "multilayer-bi"]
    named = {layout.config, layout.environment, *(layout.report(e) for e in ("md", "html", "json"))}
    for row in layout.evaluated():
        named |= {layout.summary(row), layout.timing(row), *(layout.items(row, t) for t in ("BIOSSES", "STS13"))}
        assert layout.summary(row) == exp / "runs" / row / "eval" / "summary.json"
    for design in ("eos-causal", "multilayer-bi"):
        assert (layout.final(design) / "poolattn_config.json").exists()
        named |= {p for p in layout.train(design).rglob("*") if p.is_file()}
    assert all(p.exists() for p in named)
    unnamed = {p for p in exp.rglob("*") if p.is_file()} - named
    assert all(p.parent in {exp, *(layout.eval(r) for r in layout.evaluated())} for p in unnamed), unnamed

    # A second run finds everything done: nothing is retrained or re-evaluated.
    stamp = (exp / "runs" / "eos-causal" / "eval" / "summary.json").stat().st_mtime_ns
    run_experiment(cfg, progress=False)
    assert (exp / "runs" / "eos-causal" / "eval" / "summary.json").stat().st_mtime_ns == stamp

    # A changed experiment in the same folder is refused rather than silently mixed.
    changed = cfg.model_copy(update={"seed": 7})
    with pytest.raises(ValueError, match="different experiment"):
        run_experiment(changed, progress=False)


def test_seeds_replicate_every_design_and_the_report_averages_them(tiny_llama, data_dir, tmp_path):
    cfg = tiny_experiment_config(tmp_path, tiny_llama, data_dir).model_copy(update={
        "designs": [Design(name="eos-causal", pooling="eos")], "seeds": [1, 2], "baseline": None})
    cfg.eval.tasks = ["BIOSSES"]
    paths = write_report(run_experiment(cfg, progress=False), progress=False)
    exp = tmp_path / "exp"
    seeds = {d: json.loads((exp / "runs" / d / "train" / "config.json").read_text())["seed"]
             for d in ("eos-causal-s1", "eos-causal-s2")}
    assert seeds == {"eos-causal-s1": 1, "eos-causal-s2": 2}
    a, b = (json.loads((exp / "runs" / d / "eval" / "summary.json").read_text()) for d in seeds)
    assert a != b  # different seeds, different models
    rep = json.loads(paths["json"].read_text())["replicates"]["eos-causal"]
    assert rep["runs"] == ["eos-causal-s1", "eos-causal-s2"] and rep["sd"]["STS"] >= 0
    assert "Mean over seeds" in paths["md"].read_text()
    # a configured design named as the reference (as default.yaml does) means its first seed's run
    again = write_report(exp, progress=False, reference="eos-causal")
    assert json.loads(again["json"].read_text())["reference"] == "eos-causal-s1"

    # A folder pinned before a config field existed still resumes (the field compares at its default).
    pinned = yaml.safe_load((exp / "experiment.yaml").read_text())
    pinned["designs"][0].pop("replicate_of")
    (exp / "experiment.yaml").write_text(yaml.safe_dump(pinned))
    run_experiment(cfg, progress=False)


def test_layer_analysis_writes_heatmap_scores_and_json(tiny_llama, data_dir, tmp_path):
    import numpy as np

    from poolattn import EmbeddingModel, ModelConfig
    from poolattn.layers import analyze_layers, linear_cka

    x = np.random.default_rng(0).normal(size=(50, 8))
    assert abs(linear_cka(x, x @ np.diag(np.arange(1, 9.0)) * 0 + 3 * x) - 1) < 1e-9  # invariant to scale
    assert linear_cka(x, np.random.default_rng(1).normal(size=(50, 8))) < 0.5
    model = EmbeddingModel(ModelConfig(backbone=tiny_llama, dtype="float32"))
    pack = mini_pack(data_dir, tmp_path / "pack")
    result = analyze_layers(model, ["BIOSSES"], tmp_path / "layers", data_dir=pack, n_texts=60)
    L = model.backbone.config.num_hidden_layers
    assert np.allclose(np.diag(result["cka"]["eos"]), 1) and len(result["cka"]["mean"]) == L
    assert len(result["scores"]["BIOSSES"]["eos"]) == L and 1 <= result["best_layer"]["BIOSSES"]["mean"] <= L
    assert result["lora_trained"] is False and result["model"] == str(tiny_llama)
    for f in ("layers.json", "layer_similarity.png", "layer_scores.png"):
        assert (tmp_path / "layers" / f).stat().st_size > 0


def test_default_configs_validate():
    for name in ("configs/default.yaml", "configs/paper.yaml"):
        cfg = ExperimentConfig.load(name)
        assert len(cfg.designs) == 5
        assert {(d.pooling, d.attention) for d in cfg.designs} == {
            ("eos", "causal"), ("latent", "causal"), ("multilayer", "causal"), ("latent", "bidirectional"),
            ("multilayer", "bidirectional")}


def test_train_cpu_config_trains_the_best_cpu_recipe(tmp_path):
    """`poolattn train configs/train_cpu.yaml` and `poolattn experiment configs/best_cpu.yaml` train the same model:
    every field but where and how long-lived the outputs are (the fields a resumed run may change) agrees."""
    import yaml

    from poolattn.experiment import train_config_for
    from poolattn.training import RESUMABLE_FIELDS, TrainConfig

    cfg = ExperimentConfig.load("configs/best_cpu.yaml")
    (design,) = cfg.designs
    best = train_config_for(cfg, design, tmp_path).model_dump(mode="json")
    alone = TrainConfig.model_validate(yaml.safe_load(open("configs/train_cpu.yaml"))).model_dump(mode="json")
    differ = sorted(k for k in best if best[k] != alone[k] and k not in RESUMABLE_FIELDS)
    assert differ == [], {k: (best[k], alone[k]) for k in differ}
    assert best["scale"] == 50.0 and best["both_directions"] is True  # the lever study's adopted levers
    assert (best["lora"]["r"], best["lora"]["alpha"]) == (32, 64)


def test_duplicate_design_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        ExperimentConfig(designs=[Design(name="a", pooling="eos"), Design(name="a", pooling="mean")])


def test_shipped_configs_run_the_reference_codes_designs(data_dir):
    """default and paper run the paper's five designs as its reference code defines them; ablation extends default."""
    from poolattn.evaluation.selection import resolve_tasks
    from poolattn.experiment import PAPER_DESIGNS, train_config_for
    from poolattn.pooling import build_pooler

    root = Path(__file__).resolve().parents[1] / "configs"
    want = {"2-lastlayer-causal": ("latent", "causal", "last"), "3-multilayer-causal": ("multilayer", "causal", "last"),
            "4-lastlayer-bidirectional": ("latent", "bidirectional", "all"),
            "5-multilayer-bidirectional": ("multilayer", "bidirectional", "mean")}
    for name in ("default", "paper"):
        cfg = ExperimentConfig.load(root / f"{name}.yaml")
        assert [d.name for d in cfg.designs] == [d.name for d in PAPER_DESIGNS]
        for d in cfg.designs[1:]:
            assert (d.pooling, d.attention, d.pooling_kwargs["tokens"]) == want[d.name]
            pool = build_pooler(d.pooling, 16, 3, **d.pooling_kwargs)
            assert pool.get_config()["preset"] == "tang2024" and pool.get_config()["query"] == "latents"
        assert all(s.get("instruction") for s in cfg.train["data"])  # every source carries its task's instruction
    assert ExperimentConfig.load(root / "paper.yaml").designs[4].pooling_kwargs.get("num_latents") is None  # 768
    ablation = ExperimentConfig.load(root / "ablation.yaml")
    assert ablation.train == ExperimentConfig.load(root / "default.yaml").train
    assert {"5c-no-latent-residual", "5b-no-layer-embedding", "5a-per-layer-last-token"} <= {d.name for d in
                                                                                               ablation.designs}
    beyond = ExperimentConfig.load(root / "beyond.yaml")  # issue 30: the other answers under the same protocol
    assert beyond.train == ablation.train and beyond.seeds == [42, 43, 44] and beyond.report.reference == "1-eos-causal"
    rows = {d.name: d for d in beyond.designs}
    assert {"1-eos-causal", "llm2vec-mntp-bidirectional", "echo-eos-causal", "mean-layers-causal", "1-matryoshka",
            "multilayer-meaninit-bidirectional"} <= set(rows)
    assert rows["llm2vec-mntp-bidirectional"].train["adapt"]["objective"] == "mntp"
    assert beyond.model_config_for(rows["echo-eos-causal"]).echo and rows["1-matryoshka"].lever_of == "1-eos-causal"
    assert beyond.eval.dimensions == [64, 128, 256]
    # issue 29: levers of best_cpu's recipe with retrieval in the metric, each one change against `best`
    levers = ExperimentConfig.load(root / "levers_retrieval.yaml")
    best = ExperimentConfig.load(root / "best_cpu.yaml")
    # the studies keep the 120-step recipe they were measured against (best_cpu_120.yaml), whatever best_cpu.yaml
    # has become since
    before = {**best.train, "max_steps": 120, "schedule": "constant", "warmup_steps": 5, "passage_max_length": None,
              "distill": None}
    assert ExperimentConfig.load(root / "best_cpu_120.yaml").train == before
    assert levers.train == before and levers.seeds == [42, 43, 44] and levers.report.reference == "best"
    assert ExperimentConfig.load(root / "hour_schedules.yaml").train == before
    rows = {d.name: d for d in levers.designs}
    assert all(d.lever_of == "best" for n, d in rows.items() if n != "best")
    assert rows["best-passage128"].train == {"passage_max_length": 128}
    assert levers.model_config_for(rows["best-gemma3"]).backbone == "gemma3-270m"
    assert {"SciFactNano", "NFCorpusNano", "ARCChallengeNano"} <= set(resolve_tasks(levers.eval.tasks, data_dir))
    hour = ExperimentConfig.load(root / "hour_schedules.yaml")  # issue 29: the steps an hour buys, with schedules
    steps = {d.name: train_config_for(hour, d, Path("x")) for d in hour.designs}
    assert steps["best"].max_steps == 120 and all(t.max_steps == 960 and t.max_time_minutes == 60
                                                  for n, t in steps.items() if n != "best")
    assert steps["hour-cosine"].schedule == "cosine" and steps["hour-cosine-3e-4"].lr == 3e-4


def test_named_designs_and_extends(tmp_path):
    cfg = ExperimentConfig.model_validate({"designs": ["nvembed-bidirectional", "poolattn0-multilayer-bidirectional"]})
    nv = cfg.designs[0]
    assert nv.mask_instruction and cfg.model_config_for(nv).mask_instruction
    assert cfg.model_config_for(nv).pooling_kwargs == {"preset": "nvembed"}
    # the mean-initialised pooler is design 5 with one change (`init: mean`), under its own name
    five, meaninit = (ExperimentConfig.model_validate({"designs": [n]}).designs[0]
                      for n in ("5-multilayer-bidirectional", "multilayer-meaninit-bidirectional"))
    assert meaninit.pooling_kwargs == {**five.pooling_kwargs, "init": "mean"}
    assert (meaninit.pooling, meaninit.attention) == (five.pooling, five.attention) and "init" not in five.pooling_kwargs
    with pytest.raises(ValueError, match="unknown design 'nope'; named designs: 1-eos-causal"):
        ExperimentConfig.model_validate({"designs": ["nope"]})
    (tmp_path / "a.yaml").write_text("name: a\nseed: 1\ntrain: {lr: 0.1, batch_size: 4}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\ntrain: {lr: 0.2}\n")
    b = ExperimentConfig.load(tmp_path / "b.yaml")
    assert (b.name, b.seed, b.train) == ("b", 1, {"lr": 0.2, "batch_size": 4})
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        ExperimentConfig.load(tmp_path / "b.yaml")


def test_mean_layers_design_is_configuration_over_the_mean_pooler(tmp_path):
    """mean-layers-causal: the mean pooler with a layer range, by name, with overrides, and from a YAML file; on
    SmolLM2's 30 layers it averages layers 1 and 2, and a backbone too shallow for its range is named in the error."""
    from poolattn.pooling import build_pooler

    first = lambda designs: ExperimentConfig.model_validate({"designs": designs}).designs[0]
    cfg = ExperimentConfig.model_validate({"designs": ["mean-layers-causal"]})
    d, plain = cfg.designs[0], first(["mean-causal"])
    tail = first([{"name": "mean-layers-causal", "pooling_kwargs": {"layers": "-4..-1"}}])
    assert (d.pooling, d.attention, d.pooling_kwargs) == ("mean", "causal", {"layers": "1..2"})
    assert (plain.pooling, plain.attention, plain.pooling_kwargs) == ("mean", "causal", {})
    mc = cfg.model_config_for(d)
    assert (mc.pooling, mc.pooling_kwargs) == ("mean", {"layers": "1..2"})
    assert build_pooler(mc.pooling, 576, 30, **mc.pooling_kwargs).layers == [1, 2]
    assert build_pooler(tail.pooling, 576, 30, **tail.pooling_kwargs).layers == [27, 28, 29, 30]
    with pytest.raises(ValueError, match="the model has 1 layers"):
        build_pooler(mc.pooling, 64, 1, **mc.pooling_kwargs)
    (tmp_path / "x.yaml").write_text("designs: [mean-layers-causal]\n")
    assert ExperimentConfig.load(tmp_path / "x.yaml").designs[0] == d


def test_design_levers_merge_into_the_shared_training_and_are_checked(tmp_path):
    from poolattn.experiment import merge_train, train_config_for

    shared = {"lora": {"r": 16, "alpha": 32, "dropout": 0.1}, "max_length": 32, "batch_size": 16}
    assert merge_train(shared, {"lora": {"r": 4}, "max_length": 64}) == {
        "lora": {"r": 4, "alpha": 32, "dropout": 0.1}, "max_length": 64, "batch_size": 16}
    assert shared["lora"]["r"] == 16  # the shared settings are not changed in place
    with pytest.raises(ValueError, match="unknown training field"):
        Design(name="x", pooling="eos", train={"max_lenght": 64})
    with pytest.raises(ValueError, match="may not set"):
        Design(name="x", pooling="eos", train={"seed": 1})
    base = [Design(name="a", pooling="eos")]
    with pytest.raises(ValueError, match="lever_of 'b'"):
        ExperimentConfig(designs=base + [Design(name="c", pooling="eos", lever_of="b")])
    cfg = ExperimentConfig(designs=base + [Design(name="c", pooling="eos", lever_of="a", train={"max_length": 64})],
                           train={"max_length": 32, "batch_size": 8})
    tc = train_config_for(cfg, cfg.designs[1], tmp_path)
    assert tc.max_length == 64 and tc.batch_size == 8
    assert train_config_for(cfg, cfg.designs[0], tmp_path).max_length == 32


def test_a_design_may_use_another_backbone_and_the_report_says_it_is_outside_the_protocol(tmp_path):
    """Design.backbone (issue 29's Gemma-3 lever): that design's model and training use it, the others the base's;
    the report's design table shows the backbone and flags the design as outside the paper's protocol."""
    from poolattn.experiment import train_config_for

    from synthetic import write_synthetic_experiment

    cfg = ExperimentConfig(base={"backbone": "smollm2-135m"}, designs=[
        Design(name="1-eos-causal", pooling="eos"),
        Design(name="1-gemma", pooling="eos", lever_of="1-eos-causal", backbone="gemma3-270m")])
    assert cfg.model_config_for(cfg.designs[1]).backbone == "gemma3-270m"
    assert train_config_for(cfg, cfg.designs[1], tmp_path).model.backbone == "gemma3-270m"
    assert train_config_for(cfg, cfg.designs[0], tmp_path).model.backbone == "smollm2-135m"
    folder = write_synthetic_experiment(tmp_path / "exp", designs={"1-eos-causal": (0.0, 1), "1-gemma-x": (0.5, 2)},
                                        baseline=None, tasks={"STS1": ("STS", 100)})
    raw = yaml.safe_load((folder / "experiment.yaml").read_text())
    raw["base"] = {"backbone": "smollm2-135m"}
    raw["designs"] = [{"name": "1-eos-causal", "pooling": "eos"},
                      {"name": "1-gemma-x", "pooling": "eos", "backbone": "gemma3-270m"}]
    (folder / "experiment.yaml").write_text(yaml.safe_dump(raw))
    md = write_report(folder, progress=False)["md"].read_text()
    designs = md.split("## Designs", 1)[1].split("\n## ", 1)[0]
    assert "| 1-gemma-x | eos | causal | {} | 0 | gemma3-270m |" in designs
    assert "| 1-eos-causal | eos | causal | {} | 0 | smollm2-135m |" in designs
    assert "1-gemma-x use another backbone" in designs


def test_report_reference_is_checked_when_the_config_loads():
    # Not after hours of training, when the report is written: the error names what it could be.
    designs = [Design(name="a", pooling="eos"), Design(name="b", pooling="mean")]
    with pytest.raises(ValueError, match=r"report.reference '1-eos-causal'.*valid: \['a', 'b', 'baseline'\]"):
        ExperimentConfig(designs=designs, report={"reference": "1-eos-causal"})
    assert ExperimentConfig(designs=designs, report={"reference": "baseline"}).report.reference == "baseline"
    assert ExperimentConfig(designs=designs, peers=["all-MiniLM-L6-v2"],
                            report={"reference": "peer-all-MiniLM-L6-v2"}).report.reference.startswith("peer-")
