"""What the evaluation and training savings of issue 28 buy, in one run on one machine.

`lite` evaluation time of the untrained baseline (eos pooling, causal: the bare backbone), design 1 and design 5,
and the training step time of designs 1 and 5, each with every saving on and with each saving off:

    on                everything on (the defaults)
    no-prefix-reuse   shared instruction prefixes encoded again for every text (model.prefix_reuse = False)
    all-splits        every split of each task scored, not only the main split
    no-dedup          every text encoded as mteb passes it, repeats included (and not sorted by length across
                      the call, only within each chunk of 256, as before)
    no-fused-lora     a trained model's LoRA linears run through peft, unfused (from_pretrained(fuse_lora=False))
    all-off           all of them off: what evaluation cost before the savings

plus the largest main-score difference (x100) between each run and the `on` run of the same model. Training has one
saving (prefix reuse): its rows (on, off) give the median seconds per step over --steps steps through the real
trainer (the first step, warm-up, left out) and the largest loss difference per step against `on`. Evaluation runs without the embedding cache. A saving the installed poolattn does
not have yet prints n/a.

    python benchmarks/eval_cost.py                                  # default experiment's designs, untrained
    python benchmarks/eval_cost.py --trained runs/default           # its trained designs 1 and 5
    python benchmarks/eval_cost.py --tasks STSBenchmark --designs 1-eos-causal --steps 3 --out cost.json

Without --trained, designs 1 and 5 are the untrained backbone with that design's pooling and attention (design 5's
pooler at its random initialisation): the timings hold, their scores mean nothing.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, bool]] = {
    "on": {"prefix_reuse": True, "all_splits": False, "dedup": True, "fuse_lora": True},
    "no-prefix-reuse": {"prefix_reuse": False, "all_splits": False, "dedup": True, "fuse_lora": True},
    "all-splits": {"prefix_reuse": True, "all_splits": True, "dedup": True, "fuse_lora": True},
    "no-dedup": {"prefix_reuse": True, "all_splits": False, "dedup": False, "fuse_lora": True},
    "no-fused-lora": {"prefix_reuse": True, "all_splits": False, "dedup": True, "fuse_lora": False},
    "all-off": {"prefix_reuse": False, "all_splits": True, "dedup": False, "fuse_lora": False},
}
TRAIN_VARIANTS: dict[str, dict[str, bool]] = {
    "on": {"prefix_reuse": True},
    "no-prefix-reuse": {"prefix_reuse": False},
}
EVAL_ROWS = ("baseline", "1-eos-causal", "5-multilayer-bidirectional")
TRAIN_ROWS = ("1-eos-causal", "5-multilayer-bidirectional")


def cpu() -> dict[str, Any]:
    """CPU model, whether it has AVX512-BF16 (and AMX-BF16), and torch's threads."""
    import torch

    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == (platform.processor() or platform.machine()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def designs(config: Any) -> dict[str, Any]:
    """Rows by name: the untrained baseline (eos, causal) and the config's designs."""
    from poolattn.experiment.designs import Design

    return {"baseline": Design(name="baseline", pooling="eos", attention="causal"),
            **{d.name: d for d in config.base_designs()}}


def trained_folder(root: Path, name: str) -> Path | None:
    """A trained design's model under --trained: an experiment folder (runs/<name>/train/final), a folder of run
    folders (<name>/train/final) or of model folders (<name>)."""
    from poolattn.experiment import ExperimentLayout
    from poolattn.modelconfig import CONFIG_NAME

    for folder in (ExperimentLayout(root).final(name), ExperimentLayout.final_in(root / name), root / name):
        if (folder / CONFIG_NAME).exists():
            return folder
    return None


def load(config: Any, design: Any, trained: Path | None, device: str, fuse_lora: bool = True,
         dtype: str | None = None) -> tuple[Any, str]:
    """The row's model: trained from --trained (in `dtype` when given, else as saved), else untrained."""
    from poolattn import EmbeddingModel

    folder = trained_folder(trained, design.name) if trained and design.name != "baseline" else None
    if folder is not None:
        kw = {"fuse_lora": fuse_lora} if "fuse_lora" in inspect.signature(EmbeddingModel.from_pretrained).parameters \
            else {}
        if dtype:
            kw["dtype"] = dtype
        return EmbeddingModel.from_pretrained(folder, inference=True, device=device, **kw), str(folder)
    return EmbeddingModel(config.model_config_for(design), device=device), "untrained"


def smallest_task(tasks: str, data_dir: str) -> str:
    """The task of `tasks` that encodes the least (every task is loaded once on the way: imports, disk caches)."""
    from poolattn.evaluation import load_task, resolve_tasks, task_spec
    from poolattn.evaluation.pack import encode_cost

    return min(resolve_tasks(tasks, data_dir), key=lambda n: encode_cost(load_task(task_spec(n, data_dir))))


def evaluate_row(config: Any, design: Any, trained: Path | None, args: argparse.Namespace,
                 warm_up: bool = False) -> list[dict]:
    """Every evaluation variant of one model; warm_up: first an untimed run of the smallest task (the first
    evaluation of a process pays for imports and data loading)."""
    from poolattn.evaluation import evaluate

    models = {}
    for fuse in dict.fromkeys(VARIANTS[v]["fuse_lora"] for v in args.variants):
        # an untrained model has no LoRA to fuse: one load serves both (a second would draw another random pooler)
        models[fuse] = next(iter(models.values())) if models and models[not fuse][1] == "untrained" else (
            load(config, design, trained, args.device, fuse, args.dtype))
    model, source = next(iter(models.values()))
    for m, _ in models.values():
        m.encode(["warm-up"] * 4, show_progress_bar=False)
    if warm_up:
        evaluate(model, smallest_task(args.tasks, args.data), data_dir=args.data, cache=False, progress=False)
    runs = []
    for variant in args.variants:
        want = VARIANTS[variant]
        model = models[want["fuse_lora"]][0]
        row = {"model": design.name, "source": source, "variant": variant, **want}
        if not want["prefix_reuse"] and not hasattr(model, "prefix_reuse"):
            runs.append({**row, "skipped": "n/a: this poolattn has no model.prefix_reuse"})
            print(json.dumps(runs[-1]), flush=True)
            continue
        if hasattr(model, "prefix_reuse"):
            setattr(model, "prefix_reuse", want["prefix_reuse"])
        start = time.perf_counter()
        scores = evaluate(model, args.tasks, data_dir=args.data, cache=False, progress=False,
                          instructions=config.eval.instructions, batch_size=config.eval.batch_size,
                          languages=config.eval.languages, all_splits=want["all_splits"], dedup=want["dedup"])
        row["seconds"] = round(time.perf_counter() - start, 2)
        row["tasks"] = {n: {"main_score": s.main_score, "seconds": s.seconds, "encoded": s.encoded,
                            "splits": s.splits} for n, s in scores.items()}
        runs.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tasks"}), flush=True)
    return runs


def train_row(config: Any, design: Any, args: argparse.Namespace) -> list[dict]:
    """A few steps through the real trainer per variant: the same data, order and seed, so losses compare."""
    from poolattn.experiment import train_config_for
    from poolattn.training import TrainConfig, train

    runs = []
    for variant in args.train_variants:
        want = TRAIN_VARIANTS[variant]
        row = {"design": design.name, "variant": variant, **want}
        missing = [k for k, v in want.items() if k not in TrainConfig.model_fields]
        if missing and not all(want[k] for k in missing):
            runs.append({**row, "skipped": f"n/a: this poolattn's TrainConfig has no {', '.join(missing)}"})
            print(json.dumps(runs[-1]), flush=True)
            continue
        extra = {k: v for k, v in want.items() if k not in missing}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = train_config_for(config, design, Path(tmp))
            cfg = TrainConfig.model_validate({**cfg.model_dump(), **extra, "max_steps": args.steps,
                                              "save_every": args.steps + 1, "snapshot_steps": [], "progress": False,
                                              "device": args.device, "data_dir": args.data,
                                              "max_time_minutes": None})
            stamps, losses = [], []
            train(cfg, callbacks=[lambda step, rec: (stamps.append(time.perf_counter()),
                                                     losses.append(rec["loss"]))])
        steps = np.diff(stamps)  # step k's time: from the end of step k-1 to its end; step 1 (warm-up) left out
        row.update(step_s=[round(float(s), 3) for s in steps], loss=losses,
                   median_step_s=round(float(np.median(steps)), 3) if len(steps) else None)
        runs.append(row)
        print(json.dumps(row), flush=True)
    return runs


def score_diff(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per model and variant: the largest |main score - the `on` run's| over the tasks, x100."""
    out: dict[str, dict[str, float]] = {}
    on = {r["model"]: r["tasks"] for r in runs if r["variant"] == "on" and "tasks" in r}
    for r in runs:
        if r["variant"] == "on" or "tasks" not in r or r["model"] not in on:
            continue
        ref = on[r["model"]]
        out.setdefault(r["model"], {})[r["variant"]] = round(max(
            (100 * abs(s["main_score"] - ref[n]["main_score"]) for n, s in r["tasks"].items() if n in ref),
            default=0.0), 4)
    return out


def report(machine: dict, evals: list[dict], trains: list[dict], diffs: dict, args: argparse.Namespace) -> None:
    print(f"\nCPU {machine['cpu']}, AVX512-BF16 {'yes' if machine['avx512_bf16'] else 'no'}, "
          f"AMX-BF16 {'yes' if machine['amx_bf16'] else 'no'}, {machine['cores']} cores, torch "
          f"{machine['torch']} with {machine['torch_threads']} threads; device {args.device}")
    if evals:
        variants = args.variants
        print(f"\nevaluation of {args.tasks}, wall seconds (in brackets: / all-off)")
        print(f"{'model':<30}{'weights':<11}" + "".join(f"{v:>17}" for v in variants))
        for model in dict.fromkeys(r["model"] for r in evals):
            rows = {r["variant"]: r for r in evals if r["model"] == model}
            base = rows.get("all-off", {}).get("seconds")
            cells = []
            for v in variants:
                r = rows.get(v, {})
                if "seconds" not in r:
                    cells.append(f"{'n/a':>17}")
                else:
                    ratio = f" ({r['seconds'] / base:.0%})" if base else ""
                    cells.append(f"{r['seconds']:.1f}{ratio}".rjust(17))
            source = next(iter(rows.values()))["source"]
            print(f"{model:<30}{'untrained' if source == 'untrained' else 'trained':<11}" + "".join(cells))
        if any(r["source"] == "untrained" for r in evals):
            print("untrained: the backbone with that design's pooling and attention (a trainable pooler at its random "
                  "initialisation): its times hold, its scores mean nothing (--trained for trained designs)")
        print("\nlargest main-score difference x100 against `on`")
        print(f"{'model':<30}" + "".join(f"{v:>17}" for v in variants if v != "on"))
        for model, per in diffs.items():
            print(f"{model:<30}" + "".join(f"{per[v]:>17.4f}" if v in per else f"{'n/a':>17}"
                                           for v in variants if v != "on"))
    if trains:
        variants = args.train_variants
        print(f"\ntraining, median s/step over steps 2-{args.steps} (same batches; in brackets: {variants[-1]} / it)")
        print(f"{'design':<30}" + "".join(f"{v:>19}" for v in variants) + f"{'max |dloss| vs on':>19}")
        for design in dict.fromkeys(r["design"] for r in trains):
            rows = {r["variant"]: r for r in trains if r["design"] == design}
            base = rows.get(variants[-1], {}).get("median_step_s")
            cells = []
            for v in variants:
                t = rows.get(v, {}).get("median_step_s")
                cells.append(f"{'n/a':>19}" if t is None else
                             f"{t:.3f}{f' ({base / t:.2f}x)' if base else ''}".rjust(19))
            on = rows.get("on", {}).get("loss")
            dloss = max((abs(a - b) for r in rows.values() if r.get("loss") and r is not rows.get("on")
                         for a, b in zip(on, r["loss"])), default=None) if on else None
            print(f"{design:<30}" + "".join(cells) + (f"{dloss:>19.2e}" if dloss is not None else f"{'n/a':>19}"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/default.yaml"),
                   help="experiment config: base model, designs, training recipe, eval settings")
    p.add_argument("--trained", help="folder with the trained designs (an experiment folder: runs/<design>/train/"
                   "final); default: untrained backbone with each design's pooling and attention")
    p.add_argument("--tasks", help="comma-separated tasks or suites (default: the config's eval.tasks, lite)")
    p.add_argument("--designs", default=",".join(dict.fromkeys(EVAL_ROWS + TRAIN_ROWS)),
                   help="rows: baseline and design names of the config (evaluated; designs also trained)")
    p.add_argument("--steps", type=int, default=8, help="training steps per run (0: no training rows)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"evaluation variants: {', '.join(VARIANTS)}")
    p.add_argument("--train-variants", default=",".join(TRAIN_VARIANTS),
                   help=f"training variants: {', '.join(TRAIN_VARIANTS)}")
    p.add_argument("--no-eval", action="store_true", help="training rows only")
    p.add_argument("--data", help="data pack (default: the config's eval.data_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. base.backbone=PATH or train.batch_size=8 (repeatable)")
    p.add_argument("--device", help="auto, cpu, cuda:N (default: the config's device)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="every model's dtype, trained ones included (default: the config's for untrained rows, as "
                        "saved for trained ones); float32 shows what the savings change beyond bf16 rounding")
    p.add_argument("--out", default="eval_cost.json", help="results as JSON")
    args = p.parse_args(argv)

    from poolattn.experiment import ExperimentConfig

    config = ExperimentConfig.load(args.config, args.set + ([f"base.dtype={args.dtype}"] if args.dtype else []))
    args.data = args.data or config.eval.data_dir
    args.tasks = args.tasks or ",".join([config.eval.tasks] if isinstance(config.eval.tasks, str)
                                        else config.eval.tasks)
    args.device = args.device or config.device
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.train_variants = [v.strip() for v in args.train_variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS] + [v for v in args.train_variants if v not in TRAIN_VARIANTS]
    rows = designs(config)
    names = [n.strip() for n in args.designs.split(",") if n.strip()]
    unknown = [n for n in names if n not in rows]
    if bad or unknown or args.steps == 1:
        p.error(f"unknown variant(s) {bad}; valid: {', '.join(VARIANTS)} (training: {', '.join(TRAIN_VARIANTS)})"
                if bad else
                f"unknown design(s) {unknown}; valid: {', '.join(rows)}" if unknown else
                "--steps must be 0 or at least 2 (the first step is warm-up)")
    trained = Path(args.trained) if args.trained else None

    machine = cpu()
    print(f"CPU {machine['cpu']} (AVX512-BF16: {'yes' if machine['avx512_bf16'] else 'no'}), torch threads "
          f"{machine['torch_threads']}, backbone {config.base.backbone}, dtype {config.base.dtype}", flush=True)
    evals = [] if args.no_eval else [r for k, n in enumerate(names)
                                     for r in evaluate_row(config, rows[n], trained, args, warm_up=k == 0)]
    trains = ([r for n in names if n != "baseline" for r in train_row(config, rows[n], args)]
              if args.steps else [])
    diffs = score_diff(evals)
    report(machine, evals, trains, diffs, args)
    Path(args.out).write_text(json.dumps({"machine": machine, "args": vars(args) | {"trained": args.trained},
                                          "backbone": config.base.backbone, "eval": evals, "train": trains,
                                          "max_score_diff_x100": diffs}, indent=2))
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
