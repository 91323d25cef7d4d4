"""Audio buckets: padding waste of the compiled audio path, symbolic vs static -> a run file.

    python -m experiments.bench_audio_buckets [--quick]   # --quick: a 6 s clip only

The audio path (encoder + projector; the merge is outside the graph) over clip lengths of
0.5-30 s, batch 1: eager on the unpadded clip, and compiled under three policies: symbolic (the
default: no audio buckets, the frame count a symbolic size of one graph), coarse static buckets
(200, 400, 800, 1600 encoder frames: 4, 8, 16, 32 s) and fine ones (every 200 frames, one
encoder attention block: 4, 8, 12, ... 32 s). Also the graphs each policy compiles over the
sweep and the time its first calls take (the compiles). The encoder attends within 200-frame
blocks, so padding to a multiple of 200 frames costs only the padded blocks' compute.
Decode-step CUDA-graph capture is unaffected by any of them: the decode graph's shapes depend
on the cache, not on the audio.
"""

from __future__ import annotations

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from experiments import harness
from experiments.models import Bench, run_bench

SECONDS = (0.5, 2, 4.5, 6, 10, 14, 20, 25, 30)
POLICIES = {"symbolic": None, "coarse": (200, 400, 800, 1600), "fine": tuple(range(200, 1601, 200))}
WHAT = "audio path (encoder + projector), batch 1, compiled per bucket vs eager unpadded"
HEADLINE = [f"worst_compiled_over_eager_{name}" for name in POLICIES]


def measure(b: Bench) -> dict:
    from granite_fms.inference.compile import CompileConfig
    from granite_fms.inference.generation import BucketPolicy, Generator

    fm, device = b.fm, b.device
    seconds = SECONDS[3:4] if b.args.quick else SECONDS
    counters = {name: CompileCounterWithBackend("inductor") for name in POLICIES}
    gens = {
        name: Generator(
            fm, BucketPolicy(audio_frames=frames), compile=CompileConfig(backend=counters[name])
        )
        for name, frames in POLICIES.items()
    }
    dim = fm.config.encoder_config.input_dim
    rows, ev, tasks = [], {}, {}
    for s in seconds:
        n = int(s * 50)
        x = torch.randn(1, n, dim, device=device)
        tasks[(s, "eager")] = harness.Task(
            lambda x=x, n=n: fm.audio_embeddings(x, torch.ones(1, n, dtype=torch.bool)),
            b.reps["stage"],
        )
        for name, gen in gens.items():
            frames = gen.policy.frames(n)
            xp = torch.zeros(1, frames, dim, device=device)
            xp[:, :n] = x
            mask = torch.zeros(1, frames, dtype=torch.bool, device=device)
            mask[:, :n] = True
            tasks[(s, name)] = harness.Task(
                lambda g=gen, a=xp, m=mask: g.encode(a, m), b.reps["stage"]
            )
    compile_s = dict.fromkeys(POLICIES, 0.0)
    for (_, variant), task in tasks.items():  # first calls: the compiles
        seconds_taken = harness.timed(task.fn, device)
        if variant in compile_s:
            compile_s[variant] += seconds_taken
    out = harness.round_robin(tasks, device, warm_up=False)
    for (s, variant), summary in out.items():
        rows.append({"audio_s": s, "variant": variant, **summary})
    for s in seconds:
        for name in POLICIES:
            ratio = out[(s, name)]["median_ms"] / out[(s, "eager")]["median_ms"]
            ev[f"compiled_over_eager_{name}_{s:g}s"] = ratio
        ev[f"eager_ms_{s:g}s"] = out[(s, "eager")]["median_ms"]
    for name in POLICIES:
        ev[f"graphs_{name}"] = counters[name].frame_count
        ev[f"first_calls_s_{name}"] = compile_s[name]
        ev[f"worst_compiled_over_eager_{name}"] = max(
            ev[f"compiled_over_eager_{name}_{s:g}s"] for s in seconds
        )
    return {
        "sweep": f"audio {list(seconds)} s, batch 1",
        "rows": rows,
        "evidence": ev,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench("bench_audio_buckets", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
