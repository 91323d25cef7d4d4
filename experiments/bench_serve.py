"""Serving under load: 1, 8 and 32 clients at once against `granite-fms serve` -> a run file.

    python -m experiments.bench_serve [--quick] [--seconds 30] [--threads 1]
    python -m experiments.bench_serve --device cuda --variant 3.3-2b --compile

Starts `granite-fms serve` (default: the built-in `tiny` variant, random weights, --dtype, eager)
with `--max_batch_size 32` in a subprocess on a free loopback port. At each concurrency, that
many client threads post the espeak-ng fixture clips (1.2, 2.4 and 4.5 s, in turn) with plain
httpx for `--seconds`; a request sent before the end is answered. Per concurrency: throughput
(audio seconds answered per wall second, from the first request sent to the last answer),
latency percentiles (request sent to answer read) and the batches the server formed (its
/metrics histogram, read before and after). Random weights never emit an EOS, so every request
decodes its whole 200-token budget: the same work per request at every concurrency.

The server's torch runs `--threads` threads (OMP_NUM_THREADS; default 1, as the other CPU runs
on this shared machine). The load average is recorded before and after each level: other jobs
on the machine slow the server down.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import numpy as np
import soundfile as sf
import torch
from prometheus_client.parser import text_string_to_metric_families

from experiments import harness

CONCURRENCY = (1, 8, 32)
MAX_BATCH = 32
CLIPS = ("short_16k.wav", "fox_16k.wav", "long_16k.wav")
DATA = harness.REPO / "tests" / "data"
HEADLINE = ["throughput_c1", "throughput_c32", "mean_batch_c32", "p50_s_c32", "load_max"]


def start_server(args, dtype: torch.dtype, log: Path) -> tuple[subprocess.Popen, str]:
    """`granite-fms serve` on a free loopback port; returns once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(harness.REPO / "src")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "granite_fms_cli", "serve", "--variant", args.variant]
    command += ["--device_type", harness.device_of(args).type]
    command += ["--default_dtype", harness.cli_dtype(dtype)]
    command += ["--port", str(port)]
    command += ["--max_batch_size", str(MAX_BATCH), *(["--compile"] if args.compile else [])]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out, env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)


def batches(url: str) -> dict:
    """The server's batch-size histogram: count, sum and cumulative count per bucket."""
    out: dict = {"buckets": {}}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if family.name == "granite_fms_batch_size":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    out["buckets"][float(s.labels["le"])] = s.value
                else:
                    out[s.name.rsplit("_", 1)[1]] = s.value
    return out


def histogram(before: dict, after: dict) -> dict[str, int]:
    """Batches formed per range of sizes, e.g. {"1": 3, "5-8": 10}, from the bucket deltas."""
    out, low, below = {}, 1, 0
    for high in sorted(after["buckets"]):
        count = int(after["buckets"][high] - before["buckets"].get(high, 0))
        if count > below:
            out[str(low) if high == low else f"{low}-{high:g}"] = count - below
        low, below = int(min(high, 1e9)) + 1, count
    return out


def warm(url: str, model: str, clips: list) -> None:
    """One request of each clip, one at a time: first-call costs stay out of the levels."""
    for name, data, _ in clips:
        r = httpx.post(url + "/v1/audio/transcriptions", data={"model": model},
                       files={"file": (name, data)}, timeout=600)  # fmt: skip
        r.raise_for_status()


def level(url: str, model: str, clips: list, clients: int, seconds: float) -> dict:
    """`clients` threads posting clips in turn for `seconds`; one row of results."""

    def client(first: int) -> list[tuple[float, float, int, float]]:
        out, k = [], first
        with httpx.Client(base_url=url, timeout=600) as http:
            while time.perf_counter() < deadline:
                name, data, audio = clips[k % len(clips)]
                k += 1
                sent = time.perf_counter()
                r = http.post("/v1/audio/transcriptions", data={"model": model},
                              files={"file": (name, data)})  # fmt: skip
                out.append((sent, time.perf_counter(), r.status_code, audio))
        return out

    before, load_before = batches(url), os.getloadavg()[0]
    start = time.perf_counter()
    deadline = start + seconds
    with ThreadPoolExecutor(clients) as pool:
        calls = [c for calls in pool.map(client, range(clients)) for c in calls]
    wall = max(c[1] for c in calls) - start
    after = batches(url)
    ok = [c for c in calls if c[2] == 200]
    p50, p90, p99 = np.percentile([c[1] - c[0] for c in ok], [50, 90, 99])
    audio = sum(c[3] for c in ok)
    formed, sizes = (after[k] - before[k] for k in ("count", "sum"))
    return {
        "concurrency": clients,
        "requests": len(ok),
        "errors": len(calls) - len(ok),
        "audio_s": audio,
        "wall_s": wall,
        "throughput_audio_s_per_s": audio / wall,
        "p50_s": p50,
        "p90_s": p90,
        "p99_s": p99,
        "batches": int(formed),
        "mean_batch_size": sizes / formed,
        "batch_sizes": histogram(before, after),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--variant", default="tiny", help="granite_speech variant (random weights)")
    parser.add_argument("--compile", action="store_true", help="serve compiled (warm-up first)")
    parser.add_argument("--seconds", type=float, default=30.0, help="load time per concurrency")
    parser.set_defaults(threads=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 5.0
    device = harness.device_of(args)
    mode = "compiled" if args.compile else "eager"
    dtype = harness.dtype_of(args)
    model = f"{args.variant} (random weights, word_tokenizer), {harness.dtype_name(dtype)}, "
    model += f"{mode}, served"
    run = harness.Run("bench_serve", harness.scope_of(device, args.variant), args, model=model)
    progress = harness.Progress(
        "bench_serve", {"start": 20, **{f"c{c}": args.seconds + 10 for c in CONCURRENCY}}
    )
    clips = [(n, (DATA / n).read_bytes(), sf.info(DATA / n).duration) for n in CLIPS]
    name = f"granite-speech-{args.variant}"
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        process, url = start_server(args, dtype, Path(tmp) / "server.log")
        try:
            warm(url, name, clips)
            progress.done("start")
            rows = []
            for clients in CONCURRENCY:
                rows.append(level(url, name, clips, clients, args.seconds))
                progress.done(f"c{clients}")
        finally:
            process.terminate()
            process.wait()
    ev = {}
    for r in rows:
        c = r["concurrency"]
        ev[f"throughput_c{c}"] = r["throughput_audio_s_per_s"]
        ev.update({f"{p}_s_c{c}": r[f"{p}_s"] for p in ("p50", "p90", "p99")})
        ev[f"mean_batch_c{c}"] = r["mean_batch_size"]
    ev["throughput_c32_over_c1"] = ev["throughput_c32"] / ev["throughput_c1"]
    ev["load_max"] = max(max(r["load_before"], r["load_after"]) for r in rows)
    not_measured = {}
    if device.type == "cpu":
        not_measured["gpu"] = "no GPU on this machine; run with --device cuda where there is one"
    run.write(
        what=f"granite-fms serve, --max_batch_size {MAX_BATCH}, default batch window; clients "
        f"post {', '.join(CLIPS)} in turn for {args.seconds:g} s per concurrency",
        rows=rows,
        evidence=ev,
        not_measured=not_measured,
        headline=HEADLINE,
        settings={
            "seconds": args.seconds,
            "max_batch_size": MAX_BATCH,
            "server_threads": args.threads,
        },
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
