"""Export parity on real trained models: per model, the LoRA merge check (merged against unmerged, fp32) and the
sentence-transformers export loaded WITHOUT poolattn against poolattn's own vectors, with and without a prompt.

    python benchmarks/export_parity.py [MODEL_FOLDER ...] [--texts 64] [--task STSBenchmark]

Default folders: the five designs the default experiment trained (runs/default/runs/*/train/final). Texts are the
data pack's STSBenchmark sentences. Prints one row per model: design, merge min cos, ST min cos (plain, prompted),
and the seconds each step took. tests/test_export.py asserts the same on tiny models of every design and on SmolLM2.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]



def texts_from_pack(n: int) -> list[str]:
    path = ROOT.parent / "shared" / "data" / "mteb" / "STSBenchmark" / "test.jsonl"
    if not path.exists():
        return [f"sentence number {i} about a cat on a mat" for i in range(n)]
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out += [row["sentence1"], row["sentence2"]]
        if len(out) >= n:
            break
    return out[:n]


def min_cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--task", default="STSBenchmark", help="whose instruction is the prompt")
    args = ap.parse_args()

    from poolattn import EmbeddingModel
    from poolattn.evaluation.instructions import INSTRUCTIONS
    from poolattn.experiment import ExperimentLayout
    from poolattn.export import export_model
    from poolattn.export.check import encode_without_poolattn

    default = ExperimentLayout(ROOT / "runs" / "default")  # the default experiment's folder
    models = args.models or sorted(str(default.final(p.name)) for p in default.runs.glob("*")
                                   if default.final(p.name).is_dir())
    if not models:
        sys.exit(f"no model folders given and none under {default.final('*')}")
    texts, instruction = texts_from_pack(args.texts), INSTRUCTIONS[args.task]
    rows = []
    for folder in models:
        model = EmbeddingModel.from_pretrained(folder, dtype="float32", device="cpu")
        design = f"{model.config.pooling}+{model.config.attention}"
        ref_plain, ref_prompted = model.encode(texts), model.encode(texts, instruction=instruction)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            info = export_model(folder, Path(tmp) / "st")
            t1 = time.perf_counter()
            got = encode_without_poolattn({"m": (str(Path(tmp) / "st"), texts, args.task)})["m"]
            t2 = time.perf_counter()
        rows.append((folder, design, info["merge_min_cos"], min_cos(got["plain"], ref_plain),
                     min_cos(got["prompted"], ref_prompted), t1 - t0, t2 - t1))
        print(f"{folder}: done", file=sys.stderr, flush=True)
    print(f"\n{len(texts)} STSBenchmark sentences, fp32, prompt = the {args.task} instruction\n")
    print("| model | design | merged vs unmerged: 1 - min cos | ST export vs poolattn: 1 - min cos (plain / "
          "prompted) | export s | ST load+encode s |")
    print("|---|---|---:|---:|---:|---:|")
    for folder, design, merge, plain, prompted, te, tl in rows:
        merge_s = "no LoRA" if merge is None else f"{1 - merge:.1e}"
        print(f"| {folder} | {design} | {merge_s} | {1 - plain:.1e} / {1 - prompted:.1e} | {te:.1f} | {tl:.1f} |")


if __name__ == "__main__":
    main()
