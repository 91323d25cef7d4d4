"""Profile of the compiled regions: the top ops by self time -> a run file.

    python -m experiments.profile_regions [--quick] [--device cuda --model 3.3-8b]

`torch.profiler` over the Generator's compiled decode step (20 calls) and audio region
(encoder + projector, 3 calls) on the target workload. On CUDA the device time of each kernel
counts (the "## Call CompiledFxGraph" events, which sum the kernels they launched, are left
out); on CPU the self time of each op, where the Inductor-generated C++ kernels appear as one
CompiledFxGraph event. Per region also:

* LoRA's share of the decode step (the adapter is in the LLM only): the time of the matmuls
  with a LoRA-rank dimension (`r` or `2r`, from the recorded input shapes; no other matmul of
  the LLM has one) over the step's time; none found when Inductor fused those matmuls into its
  own kernels;
* on a GPU, the time between kernels: the profiled span of device kernels minus the time some
  kernel ran, per call (launch overhead and host work the device waits for).

And the decode step against its memory-bandwidth floor (experiments/latency.py): the mean of
back-to-back calls, without and (GPU) with CUDA graphs.
"""

from __future__ import annotations

from torch.profiler import ProfilerActivity, profile

from experiments import harness
from experiments.models import Bench, run_bench
from experiments.modes import DECODE_CALLS, decode_step_inputs

TOP = 8
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")

WHAT = "top ops by self time of the compiled decode step and audio region"
HEADLINE = ["decode_step_ms_per_call", "decode_step_top_op", "decode_vs_floor"]


def lora_time(prof, key: str, rank: int) -> tuple[float, int]:
    """Time (the profile's unit) and count of the matmuls with a LoRA-rank dimension. `key`:
    the self-time field; on a GPU a matmul's kernels are its device time."""
    field = key if key == "self_cpu_time_total" else "device_time_total"
    total, count = 0.0, 0
    for e in prof.key_averages(group_by_input_shape=True):
        dims = {d for shape in e.input_shapes or [] for d in shape or []}
        if rank and e.key in MATMULS and dims & {rank, 2 * rank}:
            total, count = total + getattr(e, field), count + e.count
    return total, count


def kernel_gaps_us(prof) -> float:
    """Device idle time between the first and the last kernel of a profile, in us."""
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type.name == "CUDA" and e.time_range.end > e.time_range.start
    )
    idle, reach = 0.0, spans[0][1] if spans else 0.0
    for start, end in spans[1:]:
        idle += max(0.0, start - reach)
        reach = max(reach, end)
    return idle


def top_ops(fn, calls: int, device, rank: int) -> dict:
    cuda = harness.gpu_only(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for _ in range(3 if cuda else 1):  # CUDA graphs record on the second call
        fn()
    harness.sync(device)
    with profile(activities=activities, record_shapes=True) as prof:
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
    lora, lora_ops = lora_time(prof, key, rank)

    def name(e) -> str:
        compiled = e.key.startswith("## Call CompiledFxGraph")
        return "Inductor-generated kernels (CompiledFxGraph)" if compiled else e.key

    return {
        "calls": calls,
        "time_kind": key,
        "total_ms_per_call": total / 1e3 / calls,
        "lora_matmuls_per_call": lora_ops / calls,
        "lora_share": lora / total if lora_ops else None,
        "kernel_gap_ms_per_call": kernel_gaps_us(prof) / 1e3 / calls if cuda else None,
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


def decode_call_ms(gen, step, device) -> float:
    """Mean of back-to-back decode calls (after warm-up: CUDA graphs recorded)."""
    for _ in range(3):
        gen.decode(*step)
    samples = [
        harness.timed(lambda: [gen.decode(*step) for _ in range(DECODE_CALLS)], device)
        for _ in range(5)
    ]
    return 1e3 * sorted(samples)[len(samples) // 2] / DECODE_CALLS


def measure(b: Bench) -> dict:
    from experiments.latency import decode_floor
    from granite_fms.pipeline import SpeechPipeline

    gen, rank = b.generator, b.fm.config.lora_rank
    p, step = decode_step_inputs(gen, b.workload)
    b.fm.start_request(True)
    regions = {
        "decode_step": top_ops(lambda: gen.decode(*step), 20, b.device, rank),
        "audio": top_ops(lambda: gen.encode(p.features, p.frame_mask), 3, b.device, 0),
    }
    floor = decode_floor(b.fm, b.device)
    calls = {"decode_call_ms": decode_call_ms(gen, step, b.device)}
    if harness.gpu_only(b.device):  # the product's GPU default: the decode step in CUDA graphs
        graphs = SpeechPipeline(b.fm).compile().generator
        _, graph_step = decode_step_inputs(graphs, b.workload)
        calls["decode_call_ms_cudagraphs"] = decode_call_ms(graphs, graph_step, b.device)
    ev, not_measured = {**calls, "decode_floor_ms": floor["floor_ms"]}, {}
    for name, ms in calls.items():
        ev[name.replace("decode_call_ms", "decode_vs_floor")] = ms / floor["floor_ms"]
    for region, r in regions.items():
        ev[f"{region}_ms_per_call"] = r["total_ms_per_call"]
        ev[f"{region}_top_op"] = r["top"][0]["op"]
        ev[f"{region}_top_op_share"] = r["top"][0]["share"]
        for field in ("lora_share", "kernel_gap_ms_per_call"):
            if r[field] is not None:
                ev[f"{region}_{field}"] = r[field]
        if region == "decode_step" and rank and r["lora_share"] is None:
            not_measured[f"{region}_lora_share"] = (
                "no matmul with a LoRA-rank dimension in the profile: Inductor fused them into "
                "its own kernels (experiments/ablate_lora_merge.py times the adapter instead)"
            )
    if not harness.gpu_only(b.device):
        not_measured["kernel_gap_ms_per_call"] = "device kernels and their gaps: a GPU only"
    rows = [{"region": region, **op} for region, r in regions.items() for op in r["top"]]
    return {
        "rows": rows,
        "regions": {k: {kk: vv for kk, vv in v.items() if kk != "top"} for k, v in regions.items()},
        "bandwidth_floor": floor,
        "evidence": ev,
        "not_measured": not_measured,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench("profile_regions", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
