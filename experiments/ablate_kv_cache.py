"""Ablation: the static KV cache vs FMS's torch.cat cache, per decode iteration -> a run file.

    python -m experiments.ablate_kv_cache [--quick] [--device cuda --model 3.3-8b]

One iteration of the generation loop (forward + token choice), from timestamps after each new
token, on the target workload: `Generator` (static cache; eager and compiled) against
`fms.utils.generation.generate` (FMS's cache grown by torch.cat; eager, and compiled with
`torch.compile(model)`, the cache length marked dynamic by FMS, so one decode graph serves every
step). The same weights and prompt in all four.
"""

from __future__ import annotations

import torch

from experiments import harness
from experiments.models import Bench, run_bench, variant_rows
from experiments.modes import fms_generate_intervals, generator_intervals

WHAT = "one decode iteration of the generation loop, static vs torch.cat KV cache"
HEADLINE = ["static_speedup_compiled", "static_speedup_eager"]


def measure(b: Bench) -> dict:
    from granite_fms.inference.generation import Generator

    w, fm, device = b.workload, b.fm, b.device
    dynamic = torch.compile(fm, fullgraph=True)
    first, second = (
        harness.timed(lambda: fms_generate_intervals(dynamic, fm, w), device) for _ in range(2)
    )
    eager = Generator(fm, b.generator.policy)
    r = b.reps["decode"]
    tasks = {
        "static_compiled": harness.Task(lambda: generator_intervals(b.generator, w), r, inner=True),
        "dynamic_compiled": harness.Task(
            lambda: fms_generate_intervals(dynamic, fm, w), r, inner=True
        ),
        "static_eager": harness.Task(lambda: generator_intervals(eager, w), r, inner=True),
        "dynamic_eager": harness.Task(lambda: fms_generate_intervals(fm, fm, w), r, inner=True),
    }
    out = harness.round_robin(tasks, device)
    ev = {f"decode_ms_{name}": s["median_ms"] for name, s in out.items()}
    for mode in ("compiled", "eager"):
        ev[f"static_speedup_{mode}"] = (
            ev[f"decode_ms_dynamic_{mode}"] / ev[f"decode_ms_static_{mode}"]
        )
    ev.update(dynamic_compiled_first_run_s=first, dynamic_compiled_second_run_s=second)
    return {
        "new_tokens": w.new_tokens,
        "rows": variant_rows(out),
        "evidence": ev,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench("ablate_kv_cache", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
