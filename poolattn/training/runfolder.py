"""A training run folder's bookkeeping, apart from its checkpoints (poolattn.training.checkpoint): the config as
run (and the check that a resumed run has the same one), whether the run is already finished, and the metric
lines of steps about to be run again."""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from ..fileio import write_json, write_text
from .config import RESUMABLE_FIELDS, TrainConfig


def finished(out: Path, config: TrainConfig) -> bool:
    """A previous call already reached max_steps or spent the time budget and wrote the final model."""
    path = out / "train_summary.json"
    if not (path.exists() and (out / "final").exists()):
        return False
    s = json.loads(path.read_text())
    budget = config.max_time_minutes
    return s["steps"] >= config.max_steps or (budget is not None and s["elapsed_s"] >= budget * 60)


def check_config(out: Path, config: TrainConfig) -> None:
    """Refuse to resume a run folder whose config differs in a field that changes what is trained."""
    saved = out / "config.json"
    if not saved.exists():
        return
    old = json.loads(saved.read_text())
    try:  # validated again, so fields added since the run started compare at their defaults
        old = type(config).model_validate({k: v for k, v in old.items()
                                           if k in type(config).model_fields}).model_dump(mode="json")
    except ValueError:
        pass  # compared as written: every differing field is named below
    new = config.model_dump(mode="json")
    free = set(RESUMABLE_FIELDS)
    if old.get("schedule") == new.get("schedule") == "constant":
        free.add("max_steps")  # a constant lr does not depend on the run's length: the run may be extended
    diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{out} holds a run with a different config ({', '.join(diff)} differ); use another "
                         f"output_dir (only {', '.join(sorted(free))} may change on resume)")


def write_config(out: Path, config: TrainConfig) -> None:
    """config.json (read back on resume) and config.yaml (for people), each written whole."""
    out.mkdir(parents=True, exist_ok=True)
    dump = config.model_dump(mode="json")
    write_json(out / "config.json", dump)
    write_text(out / "config.yaml", yaml.safe_dump(dump, sort_keys=False))


CONTRASTIVE = "contrastive"  # the stage of metrics.jsonl lines without a `stage` marker


def metric_rows(out: Path, stage: str = CONTRASTIVE) -> list[dict]:
    """metrics.jsonl's lines of one stage: contrastive training's (unmarked), or those marked with `stage`
    (poolattn.training.adapt's `adapt`)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [r for r in rows if r.get("stage", CONTRASTIVE) == stage]


def truncate_metrics(out: Path, step: int, stage: str = CONTRASTIVE) -> None:
    """Drop one stage's metric lines past the resumed step: those steps are about to be run again."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    rows = [(ln, json.loads(ln)) for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln, r in rows if r.get("stage", CONTRASTIVE) != stage or r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)
