"""False-positive rate and power of every significance test the report uses, by simulation (poolattn.stats.simulate),
with the swap test's rank transform off (the old code: raw cosines swapped) and on. Prints a Markdown table and
writes it as JSON. About the tests, not about any model: no model, no data.

    .venv/bin/python benchmarks/calibration.py --reps 300 --output runs/calibration.json   # ~10 min on 2 cores
"""
from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from unittest import mock

from poolattn.stats.paired import paired as stats
from poolattn.stats.simulate import KINDS, paired_rates, seed_rates, wilcoxon_rates


@contextlib.contextmanager
def rank_transform(on: bool):
    if on:
        yield
    else:
        with mock.patch.object(stats, "_rank_scale", lambda x: x):
            yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--n", type=int, default=300, help="items per dataset")
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for on in (False, True):
        with rank_transform(on):
            for kind in ("spearman", "ap"):
                rows.append({"rank_transform": on, **asdict(paired_rates(kind, args.reps, args.n))})
    for r in [*(paired_rates(k, args.reps, args.n) for k in KINDS if k not in ("spearman", "ap")),
              seed_rates(max(50, args.reps // 2)), wilcoxon_rates(args.reps)]:
        rows.append({"rank_transform": None, **asdict(r)})
    print("| test | rank transform | false-positive rate (alpha 0.05) | power | reps |\n|---|---|---:|---:|---:|")
    for r in rows:
        rt = {None: "-", False: "off", True: "on"}[r["rank_transform"]]
        print(f"| {r['test']} | {rt} | {r['false_positive']:.3f} | {r['power']:.3f} | {r['reps']} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
