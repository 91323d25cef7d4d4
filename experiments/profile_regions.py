"""Profile of the compiled regions: the top ops by self time -> a run file.

    python -m experiments.profile_regions [--quick] [--device cuda --model 3.3-8b]

`torch.profiler` over the Generator's compiled decode step (20 calls) and audio region
(encoder + projector, 3 calls)
on the target workload. On CUDA the device time of each kernel counts (the "## Call
CompiledFxGraph" events, which sum the kernels they launched, are left out); on CPU the self
time of each op, where the Inductor-generated C++ kernels appear as one CompiledFxGraph event.
"""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

from experiments import harness
from experiments.models import Bench, run_bench
from experiments.modes import decode_step_inputs

TOP = 8

WHAT = "top ops by self time of the compiled decode step and audio region"
HEADLINE = ["decode_step_ms_per_call", "decode_step_top_op"]


def top_ops(fn, calls: int, device) -> dict:
    cuda = device.type == "cuda"
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        harness.sync(device)
    events = [
        e
        for e in prof.key_averages()
        if getattr(e, key) > 0 and not (cuda and e.key.startswith("## "))
    ]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)

    def name(e) -> str:
        compiled = e.key.startswith("## Call CompiledFxGraph")
        return "Inductor-generated kernels (CompiledFxGraph)" if compiled else e.key

    return {
        "calls": calls,
        "time_kind": key,
        "total_ms_per_call": total / 1e3 / calls,
        "top": [
            {
                "op": name(e),
                "ms_per_call": getattr(e, key) / 1e3 / calls,
                "share": getattr(e, key) / total,
                "count_per_call": e.count / calls,
            }
            for e in events[:TOP]
        ],
    }


def measure(b: Bench) -> dict:
    gen = b.generator
    p, step = decode_step_inputs(gen, b.workload)
    regions = {
        "decode_step": top_ops(lambda: gen.decode(*step), 20, b.device),
        "audio": top_ops(lambda: gen.encode(p.features, p.frame_mask), 3, b.device),
    }
    ev = {}
    for region, r in regions.items():
        ev[f"{region}_ms_per_call"] = r["total_ms_per_call"]
        ev[f"{region}_top_op"] = r["top"][0]["op"]
        ev[f"{region}_top_op_share"] = r["top"][0]["share"]
    rows = [{"region": region, **op} for region, r in regions.items() for op in r["top"]]
    return {
        "rows": rows,
        "regions": {k: {kk: vv for kk, vv in v.items() if kk != "top"} for k, v in regions.items()},
        "evidence": ev,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench("profile_regions", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
