"""Latency: FMS vs Hugging Face, eager vs compiled, per stage and end to end -> a run file.

    python -m experiments.latency                     # CPU: the built-in `tiny` variant, fp32
    python -m experiments.latency --device cuda --model 3.3-8b    # a GPU: bf16
    python -m experiments.latency --quick --dtype bfloat16       # one workload, few tokens

The modes and stages are described in experiments/modes.py; all modes run on the same random
weights in one process. Per workload (audio seconds x batch): the first and second e2e call of
every mode (cold compile: a fresh Inductor cache per run), peak memory, then every stage of
every mode timed round robin. Greedy decoding with EOS disabled, so every mode makes exactly
`new_tokens` tokens. Also: the memory-bandwidth floor of a batch-1 decode step, and on CPU the
real 3.3 encoder + projector shapes eagerly (HF vs FMS). All in `--dtype`. Ablations and the
profile of the compiled regions are their own scripts (ablate_*.py, profile_regions.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from experiments import harness
from experiments.models import MODELS, build_models, in_memory_models, model_note
from experiments.modes import (
    MODE_NOTES,
    STAGE_NOTES,
    encoder_input,
    fms_inputs,
    make_workload,
    modes_for,
)


@dataclass
class Settings:
    workloads: list[tuple[float, int]]  # (audio seconds, batch); the first is the target
    new_tokens: int
    reps: dict = field(default_factory=dict)  # stage / e2e / decode: (min, max, budget s)
    real_encoder_seconds: list[float] = field(default_factory=list)


SETTINGS = {
    ("cpu", False): Settings(
        [(10, 1), (3, 1), (30, 1), (10, 4)],
        32,
        {"stage": (3, 15, 1.5), "e2e": (3, 8, 4.0), "decode": (2, 3, 2.0)},
        [3],
    ),
    ("cpu", True): Settings(
        [(1, 1)], 4, {"stage": (1, 2, 0.2), "e2e": (1, 2, 0.5), "decode": (1, 1, 0.0)}, [1]
    ),
    ("cuda", False): Settings(
        [(10, 1), (3, 1), (30, 1), (10, 4)],
        128,
        {"stage": (5, 20, 0.5), "e2e": (3, 5, 4.0), "decode": (2, 2, 0.0)},
    ),
    ("cuda", True): Settings(
        [(10, 1)], 32, {"stage": (3, 5, 0.5), "e2e": (2, 3, 2.0), "decode": (1, 2, 1.0)}
    ),
}
# Seconds per step on 2 unloaded cores (the run file's steps_s), for the progress estimate.
EXPECTED_S = {
    "models": 15,
    "10s_b1": 80,
    "3s_b1": 40,
    "30s_b1": 70,
    "10s_b4": 60,
    "real_encoder": 25,
    "floor": 5,
}


def measure_workload(modes: dict, w, reps: dict, device) -> tuple[list[dict], dict]:
    """Warm every mode up (first and second e2e call timed, peak memory of the second), then
    time every stage of every mode round robin. Returns rows and each mode's tokens."""
    ctx = {"audio_s": w.audio_s, "batch": w.batch, "new_tokens": w.new_tokens}
    rows, tokens, tasks = [], {}, {}
    for mode, setup in modes.items():
        e2e, stages = setup(w, reps)
        first = harness.timed(e2e, device)
        with harness.PeakMemory(device) as mem:
            second, tokens[mode] = harness.timed_result(e2e, device)
        rows.append({**ctx, "mode": mode, "stage": "first_call", **harness.summarize([first])})
        rows.append({**ctx, "mode": mode, "stage": "second_call", **harness.summarize([second])})
        rows.append({**ctx, "mode": mode, "stage": "peak_memory", **mem.row()})
        for stage, task in stages().items():
            if stage != "e2e":  # e2e is warm already
                task.fn()
            tasks[mode, stage] = task
    for (mode, stage), summary in harness.round_robin(tasks, device, warm_up=False).items():
        rows.append({**ctx, "mode": mode, "stage": stage, **summary})
    return rows, tokens


def agreement(tokens: dict[str, list[list[int]]]) -> dict[str, float]:
    """Fraction of new tokens equal to hf_eager's, per mode."""
    ref = np.asarray(tokens["hf_eager"])
    return {mode: float((np.asarray(t) == ref).mean()) for mode, t in tokens.items()}


def real_encoder_rows(seconds: list[float], reps: dict, device, dtype) -> list[dict]:
    """Encoder and projector at the 3.3 shapes (random weights), HF vs FMS, eager."""
    from transformers import GraniteSpeechFeatureExtractor

    from granite_fms.testing import tiny_hf_config, variant_hf_config

    real = variant_hf_config("3.3-2b")
    config = tiny_hf_config(
        "3.3",
        encoder_config=real.encoder_config.to_dict(),
        projector_config=real.projector_config.to_dict(),
        has_lora_adapter=False,
    )
    hf, fm = in_memory_models(config, device, dtype)
    rows = []
    for audio_s in seconds:
        w = make_workload(fm, audio_s, 1, 0)
        feats, _, _, _ = fms_inputs(fm, w)
        x, mask = encoder_input(fm, feats.input_features), feats.input_features_mask
        hx = GraniteSpeechFeatureExtractor()(w.waves)["input_features"].to(device, dtype)
        enc, henc = fm.encoder(x, mask), hf.model.encoder(hx).last_hidden_state
        r = reps["stage"]
        tasks = {
            ("hf_eager", "encoder"): harness.Task(lambda a=hx: hf.model.encoder(a), r),
            ("hf_eager", "projector"): harness.Task(lambda a=henc: hf.model.projector(a), r),
            ("fms_eager", "encoder"): harness.Task(lambda a=x, m=mask: fm.encoder(a, m), r),
            ("fms_eager", "projector"): harness.Task(lambda a=enc: fm.projector(a), r),
        }
        for (mode, stage), summary in harness.round_robin(tasks, device).items():
            rows.append(
                {
                    "model": "3.3 encoder+projector",
                    "audio_s": audio_s,
                    "batch": 1,
                    "mode": mode,
                    "stage": stage,
                    **summary,
                }
            )
    return rows


def decode_floor(fm, device) -> dict:
    """Lower bound of a batch-1 decode step: every LLM weight read once (tied embedding counted
    once, LoRA included) at the copy bandwidth of the device."""
    bandwidth = harness.copy_bandwidth_gbs(device, nbytes=2**31 if device.type == "cuda" else 2**28)
    weight_bytes = sum(p.numel() * p.element_size() for p in fm.language_model.parameters())
    return {
        "llm_weight_bytes": weight_bytes,
        "bandwidth_gbs": bandwidth,
        "floor_ms": weight_bytes / (bandwidth * 1e9) * 1e3,
    }


def best_compiled(device) -> str:
    return "fms_compiled_cudagraphs" if harness.gpu_only(device) else "fms_compiled"


def speedups(e2e: dict[str, dict | None], best: str) -> dict:
    """From e2e summaries per mode: `e2e_speedup_vs_<mode>`, the best compiled mode's speed-up
    over each other mode, and its relative spread `e2e_speedup_spread_vs_<mode>` (None where a
    run recorded no spread)."""
    fast, out = e2e[best], {}
    for mode, slow in e2e.items():
        if slow is None or mode == best:
            continue
        spreads = [(r.get("conditions") or {}).get("spread") for r in (slow, fast)]
        out[f"e2e_speedup_vs_{mode}"] = slow["median_ms"] / fast["median_ms"]
        out[f"e2e_speedup_spread_vs_{mode}"] = harness.ratio_spread(*spreads)
    return out


def evidence_of(rows: list[dict], floor: dict, agree: dict, device) -> dict:
    """Flat values the docs quote: per workload L and mode m, e2e_ms_m_L, first_call_s_m_L,
    e2e_speedup_vs_hf_eager_L (and its spread); at the target workload (the first) also the
    stages, the speed-ups (and spreads) without suffix, decode tokens/s, the floor ratio and the
    warm-up."""
    best = best_compiled(device)

    def e2e_of(label: str) -> dict[str, dict | None]:
        audio_s, batch = float(label.split("s_b")[0]), int(label.split("s_b")[1])
        match = dict(audio_s=audio_s, batch=batch, stage="e2e")
        found = {r["mode"]: r for r in rows if all(r.get(k) == v for k, v in match.items())}
        return {m: found.get(m) for m in MODE_NOTES}

    ev, labels = {}, []
    for r in rows:
        if r.get("model") == "3.3 encoder+projector":
            ev[f"real_{r['stage']}_ms_{r['mode']}_{r['audio_s']:g}s"] = r["median_ms"]
            continue
        label = f"{r['audio_s']:g}s_b{r['batch']}"
        labels += [label] if label not in labels else []
        if r["stage"] == "e2e":
            ev[f"e2e_ms_{r['mode']}_{label}"] = r["median_ms"]
        elif r["stage"] == "first_call":
            ev[f"first_call_s_{r['mode']}_{label}"] = r["median_ms"] / 1e3
        elif r["stage"] in ("features", "audio_path", "prefill", "decode", "decode_call"):
            ev[f"{r['stage']}_ms_{r['mode']}_{label}"] = r["median_ms"]
            if r["stage"] == "decode":
                ev[f"decode_tokens_per_s_{r['mode']}_{label}"] = 1e3 / r["median_ms"]
    for label in labels:
        ratios = speedups(e2e_of(label), best)
        for key in ("e2e_speedup_vs_hf_eager", "e2e_speedup_spread_vs_hf_eager"):
            ev[f"{key}_{label}"] = ratios[key]
        for mode, value in agree.get(label, {}).items():
            ev[f"token_agreement_{mode}_{label}"] = value
    target = labels[0]
    ev.update({k.removesuffix(f"_{target}"): v for k, v in list(ev.items()) if k.endswith(target)})
    ev.update(speedups(e2e_of(target), best))
    ev["target_workload"] = target
    ev["best_compiled_mode"] = best
    ev["warmup_s"] = ev[f"first_call_s_{best}_{target}"]
    ev["copy_bandwidth_gbs"] = floor["bandwidth_gbs"]
    ev["llm_weight_gb"] = floor["llm_weight_bytes"] / 1e9
    ev["decode_floor_ms"] = floor["floor_ms"]
    call = ev.get(f"decode_call_ms_{best}_{target}")
    if call is not None:
        ev["decode_vs_floor"] = call / floor["floor_ms"]
    return ev


TARGETS = {  # (evidence key, what, test): the project's targets for each device kind
    "cpu": [
        (
            "e2e_speedup_vs_hf_eager",
            "e2e >= 2x faster than hf_eager, target workload",
            lambda v: v >= 2,
        )
    ],
    "cuda": [
        (
            "e2e_speedup_vs_hf_eager",
            "e2e >= 4x faster than hf_eager, target workload",
            lambda v: v >= 4,
        ),
        (
            "decode_vs_floor",
            "decode step within 1.25x of the memory-bandwidth floor",
            lambda v: v <= 1.25,
        ),
        ("warmup_s", "warm-up (first e2e call, compiles included) < 2 min", lambda v: v < 120),
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny", choices=MODELS)
    parser.add_argument("--workloads", nargs="+", help="audio seconds x batch, e.g. 10x1 30x1")
    args = parser.parse_args(argv)
    device = harness.device_of(args)
    s = SETTINGS[device.type, args.quick]
    if args.workloads:
        s.workloads = [
            (float(a), int(b)) for a, b in (x.lower().split("x") for x in args.workloads)
        ]
    dtype = harness.dtype_of(args)
    scope = harness.scope_of(device, args.model)
    run = harness.Run("latency", scope, args, model=model_note(args.model, dtype))
    torch.set_grad_enabled(False)
    labels = [f"{a:g}s_b{b}" for a, b in s.workloads]
    steps = {"models": EXPECTED_S["models"], **{k: EXPECTED_S.get(k, 60) for k in labels}}
    if device.type == "cpu" and s.real_encoder_seconds:
        steps["real_encoder"] = EXPECTED_S["real_encoder"]
    steps["floor"] = EXPECTED_S["floor"]
    progress = harness.Progress("latency", steps)
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        harness.compile_cache(args, Path(tmp) / "inductor")  # default: cold compiles
        hf, fm = build_models(args.model, device, dtype, Path(tmp))
        modes = modes_for(hf, fm, device)
        progress.done("models")
        rows, agree = [], {}
        for (audio_s, batch), label in zip(s.workloads, labels, strict=True):
            w = make_workload(fm, audio_s, batch, s.new_tokens)
            new_rows, tokens = measure_workload(modes, w, s.reps, device)
            rows += new_rows
            agree[label] = agreement(tokens)
            progress.done(label)
        if "real_encoder" in steps:
            rows += real_encoder_rows(s.real_encoder_seconds, s.reps, device, dtype)
            progress.done("real_encoder")
        floor = decode_floor(fm, device)
        progress.done("floor")
    ev = evidence_of(rows, floor, agree, device)
    targets = [
        {
            "key": k,
            "target": what,
            "measured": ev.get(k),
            "met": None if ev.get(k) is None else bool(test(ev[k])),
        }
        for k, what, test in TARGETS[device.type]
    ]
    run.write(
        rows=rows,
        evidence=ev,
        headline=["e2e_speedup_vs_hf_eager", "e2e_speedup_vs_hf_compiled", "warmup_s"],
        targets=targets,
        token_agreement=agree,
        bandwidth_floor=floor,
        settings=asdict(s),
        modes={m: MODE_NOTES[m] for m in modes},
        stages=STAGE_NOTES,
        steps_s=progress.seconds,
    )
    for t in targets:
        print(f"target: {t['target']}: measured {t['measured']}, met {t['met']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
