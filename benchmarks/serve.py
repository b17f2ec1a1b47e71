"""Serving throughput and latency: `poolattn serve` against infinity serving the sentence-transformers export of the
same model, same dtype, same machine, side by side in one run.

    python benchmarks/serve.py MODEL_FOLDER [--export ST_FOLDER] [--infinity /tmp/infvenv/bin/infinity_emb]
                               [--concurrency 1,8,50] [--requests 200] [--texts-per-request 8] [--dtype float32]

MODEL_FOLDER is a saved poolattn model; ST_FOLDER its `poolattn export` (made when missing). infinity runs from its
own venv (it pins its own dependencies): python -m venv /tmp/infvenv && /tmp/infvenv/bin/pip install
torch==2.13.0 "infinity-emb[server]". Each server gets the same requests (sentences from the data pack's STS test set
when there, else synthetic ones) from N concurrent openai clients; texts/s, p50 and p99 per request are printed.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{cmd[0]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"{cmd[0]} did not come up; see {log}")


def texts(n: int) -> list[str]:
    pack = Path(os.environ.get("POOLATTN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    for path in sorted(pack.glob("mteb/**/*STSBenchmark*/**/*.jsonl"))[:1]:
        import json

        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        sents = [r.get("sentence1") or r.get("text") for r in rows if r.get("sentence1") or r.get("text")]
        if sents:
            return [sents[i % len(sents)] for i in range(n)]
    rng = np.random.default_rng(0)
    words = "the a cat dog man woman plays runs guitar park street music over under quickly".split()
    return [" ".join(rng.choice(words, rng.integers(4, 30))) for _ in range(n)]


async def load(url: str, model: str, batches: list[list[str]], concurrency: int) -> tuple[float, np.ndarray, int]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=os.environ.get("POOLATTN_API_KEY", "none"),
                                max_retries=0, timeout=600)
    queue = list(enumerate(batches))
    latencies, errors = np.zeros(len(batches)), 0

    async def worker():
        nonlocal errors
        while queue:
            i, inputs = queue.pop()
            t = time.perf_counter()
            try:
                await client.embeddings.create(model=model, input=inputs, encoding_format="float")
            except openai.OpenAIError:
                errors += 1
            latencies[i] = time.perf_counter() - t

    await client.embeddings.create(model=model, input=batches[0], encoding_format="float")  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await client.close()
    return wall, latencies, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--export", help="sentence-transformers export for infinity (default: MODEL-st, made if missing)")
    ap.add_argument("--infinity", help="path of infinity's `infinity_emb` executable (skipped when not given)")
    ap.add_argument("--concurrency", default="1,8,50")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--texts-per-request", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="another poolattn server with extra serve options, e.g. 'gil5=--gil-switch-ms 5'")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    batches = [texts(args.requests * args.texts_per_request)[i::args.requests] for i in range(args.requests)]
    logs = Path("runs/bench-serve")
    logs.mkdir(parents=True, exist_ok=True)
    servers, rows = {}, []
    try:  # every server started is stopped, whatever fails
        for name, extra in [("poolattn serve", "")] + [v.split("=", 1) for v in args.variant]:
            port = free_port()
            servers[name] = (start([sys.executable, "-m", "poolattn.cli", "serve", args.model, "--port", str(port),
                                    "--served-model-name", "m", "--dtype", args.dtype, "--log-level", "warning",
                                    *extra.split()], port, logs / f"{name.replace(' ', '-')}.log"),
                             f"http://127.0.0.1:{port}", "m")
        if args.infinity:
            export = args.export or f"{args.model.rstrip('/')}-st"
            if not Path(export).exists():
                subprocess.run([sys.executable, "-m", "poolattn.cli", "export", args.model, export, "--dtype", args.dtype],
                               check=True)
            port = free_port()
            servers["infinity"] = (start([args.infinity, "v2", "--model-id", str(Path(export).resolve()), "--port", str(port),
                                          "--engine", "torch", "--dtype", args.dtype, "--device", "cpu",
                                          "--trust-remote-code", "--served-model-name", "m",
                                          "--url-prefix", "/v1", "--host", "127.0.0.1"],  # default: /embeddings on 0.0.0.0
                                         port, logs / "infinity.log"), f"http://127.0.0.1:{port}", "m")
        for level in levels:
            for name, (_, url, model) in servers.items():  # interleaved: both see the same machine state
                wall, lat, errors = asyncio.run(load(url, model, batches, level))
                n = sum(len(b) for b in batches)
                rows.append((name, level, n / wall, np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3, errors))
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(60)
    print(f"\n{'server':16} {'clients':>7} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, level, tps, p50, p99, errors in rows:
        print(f"{name:16} {level:7d} {tps:9.1f} {p50:8.1f} {p99:8.1f} {errors:6d}")


if __name__ == "__main__":
    main()
