"""Training curves outside the run folder through accelerate's trackers (`report_to: tensorboard`, or another
tracker accelerate supports): the numbers of every metrics.jsonl line, at its step, under `train/<name>`.

A tracker that writes files (TensorBoard) writes them under <output_dir>/<tracker name>, e.g. <output_dir>/tensorboard
(`tensorboard --logdir runs/train`); a hosted one (wandb, mlflow, ...) logs to a project named `poolattn`. A resumed
run logs into the same place and continues at its step; TensorBoard drops the steps the interrupted run logged past
its last checkpoint (they are run again, as metrics.jsonl drops their lines).
"""
from __future__ import annotations

from typing import Any

NONE = "none"
PROJECT = "poolattn"  # the project name of trackers that do not write into the run folder


def tracker_names() -> list[str]:
    """The trackers accelerate knows (installed or not), in its order."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return list(LOGGER_TYPE_TO_CLASS)


def check_name(name: str) -> str:
    """`name` if it is `none` or a tracker accelerate knows; else a ValueError listing the valid names."""
    if name != NONE and name not in tracker_names():
        raise ValueError(f"report_to {name!r} is not a tracker accelerate supports; valid: "
                         f"{', '.join([NONE, *tracker_names()])}")
    return name


def check_installed(name: str) -> None:
    """Before anything loads: a tracker whose package is missing is one line, not a run with no curves."""
    from accelerate.tracking import get_available_trackers

    if name != NONE and name not in [str(t) for t in get_available_trackers()]:
        raise ValueError(f"report_to {name}: its package is not installed (pip install {name}); or report_to: none")


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys with scalar values (what trackers take as hyperparameters)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return out


def start(acc, name: str, step: int, config: dict[str, Any]) -> None:
    """Open the tracker of an Accelerator made with log_with=name and project_dir=<output_dir>. A fresh run
    (step 0) records its config as hyperparameters; a resumed one tells TensorBoard that steps from step + 1 on are
    logged anew (SummaryWriter's purge_step)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    if name == NONE:
        return
    project = name if LOGGER_TYPE_TO_CLASS[name].requires_logging_directory else PROJECT
    acc.init_trackers(project, config=flat(config) if step == 0 else None,
                      init_kwargs={"tensorboard": {"purge_step": step + 1}} if step else None)


def log(acc, record: dict[str, Any]) -> None:
    """One metrics.jsonl record's numbers at its step (the main process logs; elsewhere a no-op)."""
    acc.log({f"train/{k}": v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
            step=record["step"])


def finish(acc) -> None:
    """Close the trackers. Not accelerate's end_training(): that also destroys the process group, which the
    experiment's next design (trained in the same processes) still needs."""
    for tracker in acc.trackers:
        tracker.finish()
    acc.trackers = []
