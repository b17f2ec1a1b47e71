"""The budget chooser (poolattn.experiment.budget): estimate from measured (here: mocked) timings, the largest recipe that
fits, the one-line refusal before any training, resume with the same choice, the printed estimate; and one real
measurement on the tiny model."""
import io
import json

import pytest
from rich.console import Console

from poolattn.experiment import Design, ExperimentConfig, budget, run_experiment
from poolattn.experiment.budget import RECIPES, BudgetError, Measurement, choose, estimate, plan, print_estimate

from helpers import tiny_experiment_config

DESIGNS = [Design(name="eos", pooling="eos"), Design(name="ml", pooling="multilayer", attention="bidirectional")]


def _cfg(tmp_path, **kw) -> ExperimentConfig:
    return ExperimentConfig(output_dir=str(tmp_path / "exp"), designs=DESIGNS, train={"max_steps": 20}, **kw)


# 1 s/step (eos), 2 s/step (multilayer), 10 s overhead per design, 60 s evaluation per model
M = Measurement({"eos": 1.0, "ml": 2.0}, overhead_seconds=10.0, chars_per_second=1000.0, eval_chars=60_000.0)


def test_estimate_adds_baseline_and_every_design_times_seeds(tmp_path):
    e = estimate(_cfg(tmp_path), M, steps=20, seeds=3)
    assert e["baseline_minutes"] == pytest.approx(1.0)
    assert e["design_minutes"] == pytest.approx({"eos": 3 * (10 + 20 + 60) / 60, "ml": 3 * (10 + 40 + 60) / 60})
    assert e["total_minutes"] == pytest.approx(1 + 4.5 + 5.5)
    # a design whose evaluation was measured on its own (a trainable pooler: 90 s) is charged that
    slow = Measurement(M.step_seconds, 10.0, 1000.0, 60_000.0, {"eos": 60.0, "ml": 90.0})
    e = estimate(_cfg(tmp_path), slow, steps=20, seeds=3)
    assert e["baseline_minutes"] == pytest.approx(1.0)
    assert e["design_minutes"]["ml"] == pytest.approx(3 * (10 + 40 + 90) / 60)


def test_estimate_counts_every_peers_evaluation_once(tmp_path):
    """A peer is evaluated once, whatever the seeds: its measured evaluation is added to the total (it was left out,
    and best_cpu.yaml's all-MiniLM-L6-v2 row on the full suite was not in the estimate) and printed as a row."""
    cfg = _cfg(tmp_path, peers=["all-MiniLM-L6-v2"])
    with_peer = Measurement(M.step_seconds, 10.0, 1000.0, 60_000.0, peer_eval_seconds={"peer-all-MiniLM-L6-v2": 30.0})
    e = estimate(cfg, with_peer, steps=20, seeds=3)
    assert e["peer_minutes"] == {"peer-all-MiniLM-L6-v2": pytest.approx(0.5)}
    assert e["total_minutes"] == pytest.approx(estimate(cfg, M, steps=20, seeds=3)["total_minutes"] + 0.5)
    _, record = plan(cfg, tmp_path, measure_fn=lambda config: with_peer)
    out = io.StringIO()
    print_estimate(record, Console(file=out, width=200))
    assert "peer-all-MiniLM-L6-v2 (evaluation only)" in out.getvalue()


def test_choice_is_the_largest_recipe_that_fits(tmp_path):
    cfg = _cfg(tmp_path)
    totals = [estimate(cfg, M, r.steps, r.seeds)["total_minutes"] for r in RECIPES]
    for k in range(len(RECIPES)):
        recipe, est = choose(cfg, M, totals[k] + 0.01)
        fitting = [r for r, t in zip(RECIPES, totals) if t <= totals[k] + 0.01]
        assert recipe == fitting[-1] and est["total_minutes"] <= totals[k] + 0.01


def test_refuses_in_one_line_before_training_when_the_smallest_recipe_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "measure", lambda config: M)
    cfg = _cfg(tmp_path, budget_minutes=5)
    with pytest.raises(BudgetError) as err:
        run_experiment(cfg, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "budget_minutes=5" in msg and "30 steps x 3 seeds" in msg and "estimated" in msg
    assert not (tmp_path / "exp" / "runs").exists() and not (tmp_path / "exp" / "budget.json").exists()


def test_choice_is_applied_written_and_kept_on_resume(tmp_path):
    cfg = _cfg(tmp_path, budget_minutes=60, seeds=[7])
    run, record = plan(cfg, tmp_path, measure_fn=lambda config: M)
    c = record["choice"]
    expected = choose(cfg, M, 60)[0]
    assert (c["steps"], c["seeds"]) == (expected.steps, expected.seeds)
    assert run.train["max_steps"] == c["steps"] and run.train["lr"] == c["lr"] and run.seeds[0] == 7
    assert (run.train["schedule"], run.train["batch_size"]) == (expected.schedule, expected.batch_size)
    assert len(run.seeds) == c["seeds"] == len(set(run.seeds))
    assert 0 < c["mde"] < 1 and c["mde_source"] == ("seed SD measured by the budget study" if expected.measured
                                                    else budget.PLACEHOLDER)
    saved = json.loads((tmp_path / "budget.json").read_text())
    assert saved["choice"] == c and saved["budget_minutes"] == 60

    def fail(config):
        raise AssertionError("resume must not measure again")
    again, record2 = plan(cfg, tmp_path, measure_fn=fail)
    assert again == run and record2["choice"] == c


def test_estimate_is_printed_with_the_choice(tmp_path):
    _, record = plan(_cfg(tmp_path, budget_minutes=60), tmp_path, measure_fn=lambda config: M)
    out = io.StringIO()
    print_estimate(record, Console(file=out, width=200))
    text = out.getvalue()
    assert f"{record['estimate']['total_minutes']:.1f} min" in text and "ml" in text and "2.00" in text
    flat = " ".join(text.split())  # rich wraps long lines
    assert "budget 60 min: chose" in text and " ".join(record["choice"]["mde_source"].split()) in flat


@pytest.mark.slow  # real training steps (the end-to-end test in test_experiment.py measures too)
def test_measures_the_tiny_model_and_charges_pooler_designs_their_own_step(tiny_llama, data_dir, tmp_path):
    from helpers import tiny_sentence_transformer

    peer = tiny_sentence_transformer(tiny_llama, tmp_path / "st-peer")
    cfg = tiny_experiment_config(tmp_path, tiny_llama, data_dir).model_copy(update={"peers": [peer]})
    m = budget.measure(cfg)
    (peer_row,) = cfg.peer_rows()
    assert set(m.peer_eval_seconds) == {peer_row.name} and m.peer_eval_seconds[peer_row.name] > 0
    assert set(m.step_seconds) == {"eos-causal", "multilayer-bi"} and all(s > 0 for s in m.step_seconds.values())
    assert m.chars_per_second > 0 and m.eval_chars > 1000 and m.overhead_seconds >= 0
    # each design is charged the evaluation of its kind: the untrained model's for eos, the pooler probe's for ml
    assert m.eval_seconds_by_design["eos-causal"] == pytest.approx(m.eval_seconds)
    assert m.eval_seconds_by_design["multilayer-bi"] > 0
    assert not list(tmp_path.glob("exp/runs/*"))  # the probe trains in a throwaway folder


def test_report_leads_with_the_budgets_choice_and_its_detectable_effect(tmp_path):
    from poolattn.report import write_report

    from synthetic import write_synthetic_experiment

    folder = write_synthetic_experiment(tmp_path / "exp", designs={"1-eos-causal": (0.0, 1), "2-mean-causal": (0.5, 2)}, baseline=None,
                                        tasks={"STS1": ("STS", 300)})
    # 70 min under M picks the largest row, 200 steps x 5 seeds, whose seed SD is still a placeholder
    _, record = plan(_cfg(tmp_path, budget_minutes=70), folder, measure_fn=lambda config: M)
    assert not record["choice"]["measured"]
    lead = write_report(folder, progress=False)["md"].read_text().split("## What holds", 1)[1].split("\n## ")[0]
    c = record["choice"]
    assert f"the chooser picked {c['steps']} steps x {c['seeds']} seeds" in lead
    assert f"{100 * c['mde']:.2f} points" in lead and "placeholder" in lead


def test_recipe_table_is_ordered_and_the_measured_rows_come_from_the_study():
    assert [r.steps * r.seeds for r in RECIPES] == sorted(r.steps * r.seeds for r in RECIPES)
    measured = [r for r in RECIPES if r.measured]
    assert measured and all(r.lr == 1e-3 and r.schedule == "constant" for r in measured)
    # more steps, less seed noise (25.6 points at 30 steps, 18.2 at 60, 12.4 at 120)
    sds = [r.seed_sd for r in measured]
    assert sds == sorted(sds, reverse=True) and sds[0] > sds[-1]


def test_evaluation_is_probed_per_pooler_kind_and_attention(tiny_llama, tmp_path, monkeypatch):
    """A bidirectional pooler design is charged its own probe, not the causal one's: a causal design reuses the
    instruction's prefix pass and a bidirectional one cannot (the default experiment's estimate was 5.9 min for
    every pooler design against 3.4-6.0 causal and 8.1-8.3 bidirectional measured)."""
    designs = [Design(name="eos", pooling="eos"), Design(name="lat-c", pooling="latent"),
               Design(name="ml-c", pooling="multilayer"),
               Design(name="lat-b", pooling="latent", attention="bidirectional"),
               Design(name="ml-b", pooling="multilayer", attention="bidirectional")]
    small = {"num_latents": 4, "num_heads": 4}
    designs = [d.model_copy(update={"pooling_kwargs": small}) if d.pooling != "eos" else d for d in designs]
    cfg = ExperimentConfig(output_dir=str(tmp_path / "exp"), designs=designs,
                           base={"backbone": tiny_llama, "dtype": "float32"}, device="cpu")
    probed = []
    speed = {("mean", "causal"): 10.0, ("latent", "causal"): 20.0, ("latent", "bidirectional"): 40.0}

    def seconds(model, samples, batch_size):
        probed.append((model.config.pooling, model.config.attention))
        return speed[probed[-1]]
    monkeypatch.setattr(budget, "_probe_step", lambda config, design: (1.0, 0.0, None, 0))
    monkeypatch.setattr(budget, "_suite_samples", lambda config: [(None, ["a text"], 100.0)])
    monkeypatch.setattr(budget, "_eval_seconds", seconds)
    m = budget.measure(cfg)
    assert probed == [("mean", "causal"), ("latent", "causal"), ("latent", "bidirectional")]  # one per kind
    assert m.eval_seconds_by_design == {"eos": 10.0, "lat-c": 20.0, "ml-c": 20.0, "lat-b": 40.0, "ml-b": 40.0}


def test_echo_and_adaptation_designs_are_probed_and_charged_their_own_cost(tiny_llama, tmp_path, monkeypatch):
    """Echo (twice the tokens) and an adaptation stage get their own step probe and evaluation group; the stage's
    steps are charged at the stage's measured rate (the estimate had left them out)."""
    designs = [Design(name="eos", pooling="eos"), Design(name="echo", pooling="eos", echo=True),
               Design(name="mntp", pooling="mean", attention="bidirectional", train={"adapt": {"steps": 7}}),
               Design(name="mean-b", pooling="mean", attention="bidirectional")]
    cfg = ExperimentConfig(output_dir=str(tmp_path / "exp"), designs=designs, train={"max_steps": 20},
                           base={"backbone": tiny_llama, "dtype": "float32"}, device="cpu")
    probes = {"eos": (1.0, 5.0, None, 0), "echo": (2.0, 5.0, None, 0), "mntp": (1.5, 6.0, 3.0, 7),
              "mean-b": (1.2, 5.0, None, 0)}
    probed, evaluated = [], []

    def probe(config, design):
        probed.append(design.name)
        return probes[design.name]

    def seconds(model, samples, batch_size):
        evaluated.append((model.config.attention, model.config.echo))
        return 60.0 * (2 if model.config.echo else 1)
    monkeypatch.setattr(budget, "_probe_step", probe)
    monkeypatch.setattr(budget, "_suite_samples", lambda config: [(None, ["a text"], 100.0)])
    monkeypatch.setattr(budget, "_eval_seconds", seconds)
    m = budget.measure(cfg)
    assert probed == ["eos", "echo", "mntp", "mean-b"]  # mean-b: bidirectional, no prefix reuse: its own group
    assert m.step_seconds == {"eos": 1.0, "echo": 2.0, "mntp": 1.5, "mean-b": 1.2}
    assert m.adapt_step_seconds == {"mntp": 3.0} and m.adapt_steps == {"mntp": 7}
    assert evaluated == [("causal", False), ("causal", True), ("bidirectional", False)]
    assert m.eval_seconds_by_design["echo"] == 120.0
    e = estimate(cfg, m, steps=20, seeds=1)
    assert e["design_minutes"]["mntp"] == pytest.approx((6 + 20 * 1.5 + 7 * 3.0 + 60) / 60)
    assert e["design_minutes"]["echo"] == pytest.approx((6 + 20 * 2.0 + 120) / 60)
    out = io.StringIO()
    print_estimate({"estimate": e, "measured": json.loads(json.dumps(m.__dict__)) | {"eval_seconds": m.eval_seconds}},
                   Console(file=out, width=200))
    assert "1.50 (+7 adapt x 3.00)" in out.getvalue()


def test_adaptation_stage_is_probed_for_real(tiny_llama, tmp_path):
    """The probe runs PROBE_STEPS of the stage and of contrastive training on the tiny model and tells them apart."""
    from poolattn.experiment.budget import PROBE_STEPS, _probe_step

    from helpers import write_data

    data = write_data(tmp_path / "data")
    cfg = ExperimentConfig(output_dir=str(tmp_path / "exp"), designs=[Design(name="eos", pooling="eos")],
                           base={"backbone": tiny_llama, "dtype": "float32", "max_length": 32}, device="cpu",
                           train={"data": data, "batch_size": 4, "max_steps": 50, "progress": False,
                                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                                  "adapt": {"steps": 40, "batch_size": 2, "max_length": 16}})
    step, overhead, adapt_step, adapt_steps = _probe_step(cfg, cfg.designs[0])
    assert step > 0 and adapt_step is not None and adapt_step > 0 and overhead >= 0
    assert adapt_steps == 40 and PROBE_STEPS < 40  # the stage's configured steps, not the probe's


def test_levers_that_change_a_steps_work_get_their_own_probe(tiny_llama, tmp_path, monkeypatch):
    """A lever of the batch (GradCache chunks), the passage length, the LoRA rank or a teacher changes what a step
    costs: each is probed, while a lever of the temperature or Matryoshka widths shares its reference's probe."""
    designs = [Design(name="ref", pooling="eos"),
               Design(name="scale", pooling="eos", lever_of="ref", train={"scale": 50.0}),
               Design(name="matry", pooling="eos", lever_of="ref", train={"matryoshka_dims": [8]}),
               Design(name="b64", pooling="eos", lever_of="ref", train={"batch_size": 64, "chunk_size": 16}),
               Design(name="p128", pooling="eos", lever_of="ref", train={"passage_max_length": 128}),
               Design(name="r32", pooling="eos", lever_of="ref", train={"lora": {"r": 32, "alpha": 64}})]
    cfg = ExperimentConfig(output_dir=str(tmp_path / "exp"), designs=designs, train={"max_steps": 20},
                           base={"backbone": tiny_llama, "dtype": "float32"}, device="cpu")
    probed = []

    def probe(config, design):
        probed.append(design.name)
        return (float(len(probed)), 0.0, None, 0)
    monkeypatch.setattr(budget, "_probe_step", probe)
    monkeypatch.setattr(budget, "_suite_samples", lambda config: [(None, ["a text"], 100.0)])
    monkeypatch.setattr(budget, "_eval_seconds", lambda model, samples, batch_size: 1.0)
    m = budget.measure(cfg)
    assert probed == ["ref", "b64", "p128", "r32"]
    assert m.step_seconds == {"ref": 1.0, "scale": 1.0, "matry": 1.0, "b64": 2.0, "p128": 3.0, "r32": 4.0}


def test_a_levers_own_steps_and_time_cap_are_estimated(tiny_llama, tmp_path):
    """A lever's own max_steps is what it trains (960 steps against the reference's 120, or 30 at batch 64), and its
    max_time_minutes caps the training time; the table names the steps where they differ."""
    designs = [Design(name="ref", pooling="eos"),
               Design(name="long", pooling="eos", lever_of="ref", train={"max_steps": 960}),
               Design(name="capped", pooling="eos", lever_of="ref", train={"max_steps": 960, "max_time_minutes": 10})]
    cfg = ExperimentConfig(output_dir=str(tmp_path / "exp"), designs=designs, baseline=None,
                           train={"max_steps": 120}, base={"backbone": tiny_llama, "dtype": "float32"}, device="cpu")
    m = budget.Measurement(step_seconds={"ref": 3.0, "long": 3.0, "capped": 3.0}, overhead_seconds=0.0,
                           chars_per_second=1.0, eval_chars=60.0)  # 60 s of evaluation per design
    e = estimate(cfg, m, steps=120, seeds=1)
    assert e["design_steps"] == {"ref": 120, "long": 960, "capped": 960}
    assert e["design_minutes"]["ref"] == pytest.approx((120 * 3 + 60) / 60)
    assert e["design_minutes"]["long"] == pytest.approx((960 * 3 + 60) / 60)
    assert e["design_minutes"]["capped"] == pytest.approx(10 + 1)
    out = io.StringIO()
    print_estimate({"estimate": e, "measured": json.loads(json.dumps(m.__dict__)) | {"eval_seconds": m.eval_seconds}},
                   Console(file=out, width=200))
    assert "3.00 x 960 steps" in out.getvalue() and "3.00 x 120" not in out.getvalue()
