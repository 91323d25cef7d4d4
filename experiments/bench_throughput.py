"""Throughput: RTFx and tokens/s at batch 1, 8, 16 and 32 for every mode -> a run file.

    python -m experiments.bench_throughput [--quick] [--device cuda --model 3.3-8b]

Clips of 10 s, each making a fixed 35 new tokens (LibriSpeech test-clean speaks about 2.7 words
per second, about 3.5 Granite tokens per second of audio), EOS disabled so every mode makes
exactly that many. RTFx = seconds of audio / seconds of wall time for the whole call
(features included); tokens/s = new tokens of all rows / wall time. All modes in one process on
the same weights, timed round robin per batch size after a warm-up call (which compiles).
"""

from __future__ import annotations

from experiments import harness
from experiments.models import Bench, run_bench
from experiments.modes import modes_for

AUDIO_S, TOKENS_PER_CLIP = 10.0, 35
WHAT = f"RTFx and tokens/s, {AUDIO_S:g} s clips, {TOKENS_PER_CLIP} new tokens per clip"
HEADLINE = ["rtfx_fms_compiled_b1", "fms_compiled_over_hf_eager_b1"]


def measure(b: Bench) -> dict:
    batches = (1, 8) if b.workload.audio_s < AUDIO_S else (1, 8, 16, 32)
    modes = modes_for(b.hf, b.fm, b.device)
    rows, ev = [], {}
    for batch in batches:
        w = b.workload_of(AUDIO_S, batch)
        w.new_tokens = TOKENS_PER_CLIP
        tasks = {
            name: harness.Task(setup(w, b.reps)[0], (2, 3, 5.0)) for name, setup in modes.items()
        }
        for name, s in harness.round_robin(tasks, b.device).items():
            wall_s = s["median_ms"] / 1e3
            rtfx, tps = batch * AUDIO_S / wall_s, batch * TOKENS_PER_CLIP / wall_s
            rows.append({"mode": name, "batch": batch, "rtfx": rtfx, "tokens_per_s": tps, **s})
            ev[f"rtfx_{name}_b{batch}"] = rtfx
            ev[f"tokens_per_s_{name}_b{batch}"] = tps
        ev[f"fms_compiled_over_hf_eager_b{batch}"] = (
            ev[f"rtfx_fms_compiled_b{batch}"] / ev[f"rtfx_hf_eager_b{batch}"]
        )
    return {
        "sweep": f"{AUDIO_S:g}s, batches {list(batches)}",
        "new_tokens": TOKENS_PER_CLIP,
        "rows": rows,
        "evidence": ev,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench("bench_throughput", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
