"""Long-form speed: batched windows vs one window at a time, and the CLI's RTFx -> a run file.

    python -m experiments.longform [--quick] [--repeats 3] [--reps 5] [--threads 1]

On the built-in default (`tiny` variant, random weights, `word_tokenizer`), eager, on CPU, in
`--dtype` (default fp32):

* one long recording (the espeak-ng fixtures with pauses and a silence, `tests/helpers.py`'s
  `long_recording`, `--repeats` sentence rounds per half) transcribed by
  `SpeechPipeline.transcribe` with 30 s fixed windows and the default per-window budgets, all
  windows in one generation call (`batch_size=None`) and one window per call (`batch_size=1`),
  timed round robin (wall and process CPU seconds); both give the same tokens (checked), so the
  ratio of their medians is what batching buys. Random weights rarely emit an EOS, so every
  window decodes its whole budget in both modes: the same work.
* the command line, `granite-fms transcribe DIR --variant tiny --output_format jsonl`, on a
  folder with that recording and the short fixture clips: RTFx = audio seconds / wall seconds
  of the run (model load included) and of its batches alone (from the rows' timing).

One torch thread by default: on a busy machine two threads spin-waiting on each other can cost
ten times the CPU time of a call; process CPU time moves less than wall time there.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from experiments import harness

MODEL = "tiny (built-in default variant, random weights, word_tokenizer), {dtype}, eager"


def batching(pipe, wave: torch.Tensor, rate: int, reps: int) -> tuple[list[dict], dict]:
    """transcribe() with all windows in one call and with one window per call, `reps` calls
    each, round robin; wall and process CPU seconds of each call."""
    modes = {"batched": None, "one_at_a_time": 1}
    # The first call of each is the warm-up, and gives the tokens to compare.
    results = {
        name: pipe.transcribe(wave, return_segments=True, batch_size=size)[0]
        for name, size in modes.items()
    }
    tokens = {name: [s["tokens"] for s in r["segments"]] for name, r in results.items()}
    wall: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(reps):
        for name, size in modes.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            pipe.transcribe(wave, batch_size=size)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    segments, audio = results["batched"]["segments"], wave.numel() / rate
    rows = []
    for name in modes:
        summary = harness.summarize(wall[name])
        rows.append(
            {
                "variant": name,
                **summary,
                "rtfx": audio / (summary["median_ms"] / 1e3),
                "cpu_median_s": statistics.median(cpu[name]),
            }
        )
    batched, one = rows
    ev = {
        "audio_s": audio,
        "windows": len(segments),
        "new_tokens": sum(len(s["tokens"]) for s in segments),
        "same_tokens": tokens["batched"] == tokens["one_at_a_time"],
        "speedup": one["median_ms"] / batched["median_ms"],
        "speedup_cpu": one["cpu_median_s"] / batched["cpu_median_s"],
        "rtfx_batched": batched["rtfx"],
        "rtfx_one_at_a_time": one["rtfx"],
    }
    return rows, ev


def cli_run(wave: torch.Tensor, rate: int, clips: list[Path], tmp: Path, dtype) -> dict:
    """`granite-fms transcribe DIR --variant tiny` on the recording and the short clips."""
    import granite_fms_cli

    folder = tmp / "clips"
    folder.mkdir()
    sf.write(folder / "talk.wav", wave.numpy(), rate)
    for clip in clips:
        shutil.copy(clip, folder / clip.name)
    out = tmp / "rows.jsonl"
    argv = ["transcribe", str(folder), "--variant", "tiny", "--device_type", "cpu"]
    argv += ["--default_dtype", harness.cli_dtype(dtype)]
    argv += ["--output_format", "jsonl", "--output", str(out), "--no-verbose"]
    start = time.perf_counter()
    if (code := granite_fms_cli.main(argv)) != 0:
        raise RuntimeError(f"granite-fms exited with {code}")
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    batches = {r["timing"]["batch"]: r["timing"]["wall_s"] for r in rows}
    audio = sum(r["duration"] for r in rows)
    return {
        "cli_command": " ".join(["granite-fms", "transcribe", "DIR", *argv[2:10]]),
        "cli_clips": len(rows),
        "cli_audio_s": audio,
        "cli_batches": len(batches),
        "cli_wall_s": wall,
        "cli_rtfx": audio / wall,
        "cli_rtfx_batches": audio / sum(batches.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, device=False)
    parser.add_argument("--repeats", type=int, default=3, help="sentence rounds per half")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per mode")
    parser.set_defaults(threads=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.reps = 2, 1  # two windows: the least that batching changes
    dtype = harness.dtype_of(args)
    run = harness.Run("longform", "cpu", args, model=MODEL.format(dtype=harness.cli_dtype(dtype)))
    sys.path.insert(0, str(harness.REPO / "tests"))  # the fixture recordings and their helper
    from granite_fms.app.demo import random_pipeline
    from helpers import DATA, RATE, SENTENCES, long_recording

    torch.set_grad_enabled(False)
    # Random weights run every window to its budget: one warning per window says nothing here.
    logging.getLogger("granite_fms.pipeline").setLevel(logging.ERROR)
    progress = harness.Progress("longform", {"batching": 30 * args.reps, "cli": 15})
    pipe = random_pipeline("tiny", dtype=dtype)
    wave, _ = long_recording(repeats=args.repeats)
    rows, ev = batching(pipe, wave, RATE, args.reps)
    progress.done("batching")
    with tempfile.TemporaryDirectory(prefix="longform-") as tmp:
        ev.update(cli_run(wave, RATE, [DATA / name for name in SENTENCES], Path(tmp), dtype))
    progress.done("cli")
    run.write(
        what="SpeechPipeline.transcribe of one long recording, all windows per call vs one; "
        "and the granite-fms command line on a folder",
        rows=rows,
        evidence=ev,
        headline=["speedup", "cli_rtfx"],
        settings={"repeats": args.repeats, "reps": args.reps},
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
