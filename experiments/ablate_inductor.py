"""Ablation: Inductor's tuning of the compiled decode step -> a run file.

    python -m experiments.ablate_inductor [--quick] [--device cuda --model 3.3-8b]

One decode step (model call, static cache, LoRA active) compiled three ways, same weights,
each as the Generator's decode region (symbolic sizes): mode "default"; the same under
`coordinate_descent_tuning=True` (Inductor tunes each generated Triton kernel's block sizes;
on a CPU there are no Triton kernels and it changes nothing); and
`mode="max-autotune-no-cudagraphs"` (Inductor benchmarks GEMM templates against the library
kernels and keeps the fastest). First call (the compile, and for max-autotune the
benchmarking) and steady state, timed round robin. No CUDA graphs in any of them, so the
difference is the kernels alone.
"""

from __future__ import annotations

import torch

from experiments import harness
from experiments.models import Bench, run_bench, variant_rows
from experiments.modes import decode_step_inputs

WHAT = "one compiled decode step: Inductor default vs coordinate-descent tuning vs max-autotune"
HEADLINE = ["default_over_coordinate_descent", "default_over_max_autotune"]
VARIANTS = {  # name -> (torch.compile mode, Inductor config patched while it compiles)
    "coordinate_descent": (None, {"coordinate_descent_tuning": True}),
    "max_autotune": ("max-autotune-no-cudagraphs", {}),
}


def measure(b: Bench) -> dict:
    from granite_fms.inference.compile import CompileConfig
    from granite_fms.inference.generation import Generator

    fm, gen = b.fm, b.generator
    _, step = decode_step_inputs(gen, b.workload)
    fm.start_request(True)
    calls = {"default": gen.decode}
    first = {"default": harness.timed(lambda: gen.decode(*step), b.device)}
    reference = gen.decode(*step).float()
    ev = {}
    for name, (mode, patch) in VARIANTS.items():
        fn = Generator(fm, gen.policy, compile=CompileConfig(mode=mode)).decode
        with torch._inductor.config.patch(patch):
            first[name] = harness.timed(lambda f=fn: f(*step), b.device)
        calls[name] = fn
        diff = (fn(*step).float() - reference).abs().max() / reference.abs().max()
        ev[f"logits_rel_diff_{name}"] = float(diff)
    tasks = {name: harness.Task(lambda f=f: f(*step), b.reps["stage"]) for name, f in calls.items()}
    out = harness.round_robin(tasks, b.device)
    ev.update({f"decode_step_ms_{name}": s["median_ms"] for name, s in out.items()})
    ev.update({f"first_call_s_{name}": s for name, s in first.items()})
    for name in VARIANTS:
        ev[f"default_over_{name}"] = ev["decode_step_ms_default"] / ev[f"decode_step_ms_{name}"]
    return {"rows": variant_rows(out), "evidence": ev}


def main(argv: list[str] | None = None) -> int:
    return run_bench("ablate_inductor", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
