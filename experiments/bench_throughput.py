"""Throughput: RTFx and tokens/s at batch 1, 8, 16 and 32 for every mode -> a run file.

    python -m experiments.bench_throughput [--quick] [--device cuda --model 3.3-8b]
    python -m experiments.bench_throughput --device cuda --model 3.3-8b --batches 1 8 32

Clips of 10 s, each making a fixed 35 new tokens (LibriSpeech test-clean speaks about 2.7 words
per second, about 3.5 Granite tokens per second of audio), EOS disabled so every mode makes
exactly that many. RTFx = seconds of audio / seconds of wall time for the whole call
(features included); tokens/s = new tokens of all rows / wall time. All modes in one process on
the same weights, timed round robin per batch size after a warm-up call (which compiles).
--quick: the quick target workload's clip and tokens (1 s, 4), batch 2.
"""

from __future__ import annotations

from experiments import harness
from experiments.models import Bench, run_bench
from experiments.modes import modes_for

AUDIO_S, TOKENS_PER_CLIP = 10.0, 35
WHAT = "RTFx and tokens/s per batch size, a fixed number of new tokens per clip (see sweep)"
HEADLINE = ["rtfx_fms_compiled_b1", "fms_compiled_over_hf_eager_b1"]


def options(parser) -> None:
    parser.add_argument(
        "--batches", nargs="+", type=int, help="batch sizes (default 1 8 16 32; --quick: 2)"
    )


def measure(b: Bench) -> dict:
    quick = b.args.quick
    batches = b.args.batches or ((2,) if quick else (1, 8, 16, 32))
    audio_s, tokens = (
        (b.workload.audio_s, b.workload.new_tokens) if quick else (AUDIO_S, TOKENS_PER_CLIP)
    )
    modes = modes_for(b.hf, b.fm, b.device)
    rows, ev = [], {}
    for batch in batches:
        w = b.workload_of(audio_s, batch)
        w.new_tokens = tokens
        reps = (1, 2, 0.5) if quick else (2, 3, 5.0)
        tasks = {name: harness.Task(setup(w, b.reps)[0], reps) for name, setup in modes.items()}
        for name, s in harness.round_robin(tasks, b.device).items():
            wall_s = s["median_ms"] / 1e3
            rtfx, tps = batch * audio_s / wall_s, batch * tokens / wall_s
            rows.append({"mode": name, "batch": batch, "rtfx": rtfx, "tokens_per_s": tps, **s})
            ev[f"rtfx_{name}_b{batch}"] = rtfx
            ev[f"tokens_per_s_{name}_b{batch}"] = tps
        ev[f"fms_compiled_over_hf_eager_b{batch}"] = (
            ev[f"rtfx_fms_compiled_b{batch}"] / ev[f"rtfx_hf_eager_b{batch}"]
        )
    return {
        "sweep": f"{audio_s:g}s, batches {list(batches)}",
        "new_tokens": tokens,
        "rows": rows,
        "evidence": ev,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench(
        "bench_throughput", __doc__, argv, measure, options=options, what=WHAT, headline=HEADLINE
    )


if __name__ == "__main__":
    raise SystemExit(main())
