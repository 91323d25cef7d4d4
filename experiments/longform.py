"""Long-form speed: batched windows vs one window at a time, and the CLI's RTFx -> results/longform.

On the built-in default (`tiny` variant, random weights, `word_tokenizer`), eager, on this
machine's CPU:

* one long recording (the espeak-ng fixtures with pauses and a silence, `tests/helpers.py`'s
  `long_recording`, `--repeats` sentence rounds per half) transcribed by
  `SpeechPipeline.transcribe` with 30 s fixed windows and the default per-window budgets, all
  windows in one generation call (`batch_size=None`) and one window per call
  (`batch_size=1`), timed round robin (wall and process CPU seconds); both give the same
  tokens (checked), so the ratio of their medians is what batching buys. Random weights rarely
  emit an EOS, so every window decodes its whole budget in both modes: the same work.
* the command line, `granite-fms transcribe DIR --variant tiny --output_format jsonl`, on a
  folder with that recording and the short fixture clips: RTFx = audio seconds / wall seconds
  of the run (model load included) and of its batches alone (from the rows' timing).

The machine's load average is recorded before and after: on a shared machine it moves the
absolute times a lot, the round-robin ratio much less.

Usage: python experiments/longform.py [--out results] [--repeats 3] [--reps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "tests"))
from timing import summarize  # noqa: E402

from granite_fms.provenance import one_line, provenance  # noqa: E402
from helpers import DATA, RATE, SENTENCES, long_recording  # noqa: E402


def batching(pipe, wave: torch.Tensor, reps: int) -> dict:
    """transcribe() with all windows in one call and with one window per call, `reps` calls
    each, round robin; wall and process CPU seconds of each call."""
    modes = {"batched": None, "one_at_a_time": 1}
    results = {
        name: pipe.transcribe(wave, return_segments=True, batch_size=size)[0]
        for name, size in modes.items()
    }  # warm-up, and the tokens to compare
    tokens = {name: [s["tokens"] for s in r["segments"]] for name, r in results.items()}
    wall: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(reps):
        for name, size in modes.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            pipe.transcribe(wave, batch_size=size)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    segments = results["batched"]["segments"]
    audio = wave.numel() / RATE
    stats = {name: summarize(wall[name]) for name in modes}
    cpu_median = {name: statistics.median(cpu[name]) for name in modes}
    return {
        "audio_s": audio,
        "windows": len(segments),
        "window_s": [s["end"] - s["start"] for s in segments],
        "new_tokens": sum(len(s["tokens"]) for s in segments),
        "same_tokens": tokens["batched"] == tokens["one_at_a_time"],
        "modes": {
            name: {
                **stats[name],
                "rtfx": audio / (stats[name]["median_ms"] / 1e3),
                "cpu_median_s": cpu_median[name],
                "wall_s": wall[name],
                "cpu_s": cpu[name],
            }
            for name in modes
        },
        "speedup": stats["one_at_a_time"]["median_ms"] / stats["batched"]["median_ms"],
        "speedup_cpu": cpu_median["one_at_a_time"] / cpu_median["batched"],
    }


def cli_run(wave: torch.Tensor, tmp: Path) -> dict:
    """`granite-fms transcribe DIR --variant tiny` on the recording and the short clips."""
    from granite_fms import cli

    folder = tmp / "clips"
    folder.mkdir()
    sf.write(folder / "talk.wav", wave.numpy(), RATE)
    for name in SENTENCES:
        shutil.copy(DATA / name, folder / name)
    out = tmp / "rows.jsonl"
    argv = ["transcribe", str(folder), "--variant", "tiny", "--device_type", "cpu"]
    argv += ["--output_format", "jsonl", "--output", str(out)]
    start = time.perf_counter()
    code = cli.main(argv)
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"granite-fms exited with {code}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    batches = {r["timing"]["batch"]: r["timing"]["wall_s"] for r in rows}
    audio = sum(r["duration"] for r in rows)
    return {
        "argv": ["granite-fms", "transcribe", "DIR", *argv[2:6], "--output_format", "jsonl"],
        "clips": len(rows),
        "audio_s": audio,
        "batches": len(batches),
        "wall_s": wall,
        "batches_wall_s": sum(batches.values()),
        "rtfx": audio / wall,
        "rtfx_batches": audio / sum(batches.values()),
        "new_tokens": sum(len(s["tokens"]) for r in rows for s in r["segments"]),
    }


def markdown(report: dict) -> str:
    b, c = report["batching"], report["cli"]
    rows = [
        f"| {name} | {m['median_ms'] / 1e3:.2f} [{m['p10_ms'] / 1e3:.2f}-{m['p90_ms'] / 1e3:.2f}]"
        f" | {m['cpu_median_s']:.2f} | {m['n']} | {m['rtfx']:.1f} |"
        for name, m in b["modes"].items()
    ]
    return "\n".join(
        [
            "# Long-form transcription speed",
            "",
            f"Provenance: {one_line(report['provenance'])}",
            "",
            f"Built-in default (`tiny` variant, random weights), eager, CPU, "
            f"{report['torch_threads']} torch threads, load average (1, 5, 15 min) "
            f"{_load(report['load_average_before'])} before and "
            f"{_load(report['load_average_after'])} after. Generated by "
            f"`experiments/longform.py` in {report['runtime_s']:.0f} s.",
            "",
            f"## Batched windows vs one window at a time ({b['audio_s']:.1f} s recording, "
            f"{b['windows']} fixed 30 s windows, {b['new_tokens']} new tokens)",
            "",
            "| windows per call | wall s, median [p10-p90] | CPU s, median | n | RTFx |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Batched is **{b['speedup']:.2f}x** faster than one window at a time in wall time "
            f"({b['speedup_cpu']:.2f}x in process CPU time, which other work on a shared "
            f"machine moves less); the tokens are "
            f"{'the same' if b['same_tokens'] else 'NOT the same'} in both.",
            "",
            "## The command line",
            "",
            f"`{' '.join(c['argv'])}` on {c['clips']} clips ({c['audio_s']:.1f} s of audio, "
            f"{c['batches']} batches, {c['new_tokens']} new tokens): **RTFx {c['rtfx']:.1f}** "
            f"over the whole run ({c['wall_s']:.1f} s, model load included), "
            f"RTFx {c['rtfx_batches']:.1f} over its batches ({c['batches_wall_s']:.1f} s).",
            "",
        ]
    )


def _load(triple) -> str:
    return "/".join(f"{x:.1f}" for x in triple)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results", help="output directory (default: results)")
    parser.add_argument("--repeats", type=int, default=3, help="sentence rounds per half")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per mode")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a busy machine two threads spin-waiting on each "
        "other can cost ten times the CPU time of one call)",
    )
    args = parser.parse_args(argv)

    from granite_fms.testing import random_pipeline

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    # Random weights run every window to its budget: one warning per window says nothing here.
    logging.getLogger("granite_fms.pipeline").setLevel(logging.ERROR)
    start = time.perf_counter()
    pipe = random_pipeline("tiny")
    wave, _ = long_recording(repeats=args.repeats)
    report = {
        "provenance": provenance(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
    }
    report["batching"] = batching(pipe, wave, args.reps)
    print(f"batching: {report['batching']['speedup']:.2f}x", flush=True)
    with tempfile.TemporaryDirectory(prefix="longform-") as tmp:
        report["cli"] = cli_run(wave, Path(tmp))
    report["runtime_s"] = time.perf_counter() - start
    report["load_average_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "longform.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "longform.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
