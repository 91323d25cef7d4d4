"""Ablation: FMS's fused QKV and gate/up weights vs unfused, per decode step -> a run file.

    python -m experiments.ablate_fused_weights [--quick] [--device cuda --model 3.3-8b]

One decode step (model call, static cache) of LoRA-free copies of the same weights: fused as
FMS loads them, and unfused with `fms.utils.fusion.apply_unfuse_weights`; eager and compiled
(Generator regions, mode "default": no CUDA graphs).
"""

from __future__ import annotations

import copy

from experiments import harness
from experiments.models import Bench, run_bench, variant_rows
from experiments.modes import decode_step_inputs

WHAT = "one decode step (model call, static cache), LoRA-free copies, fused vs unfused"
HEADLINE = ["unfused_over_fused_eager", "unfused_over_fused_compiled"]


def without_lora(fm):
    """A LoRA-free copy of the model sharing its other weights."""
    import torch

    from granite_fms.models.granite_speech import GraniteSpeech

    with torch.device("meta"):
        plain = GraniteSpeech(fm.config.updated(lora_rank=0))
    state = {k: v for k, v in fm.state_dict().items() if ".lora_" not in k}
    plain.load_state_dict(state, strict=False, assign=True)
    plain.post_init()
    return plain.eval().requires_grad_(False)


def measure(b: Bench) -> dict:
    from fms.utils.fusion import apply_unfuse_weights

    from granite_fms.inference.compile import CompileConfig
    from granite_fms.inference.generation import Generator

    fused = without_lora(b.fm)
    unfused = copy.deepcopy(fused)
    unfused.language_model = apply_unfuse_weights(unfused.language_model)
    tasks, first = {}, {}
    for name, model in (("fused", fused), ("unfused", unfused)):
        for compiled in (False, True):
            gen = Generator(model, compile=CompileConfig(mode="default") if compiled else None)
            _, step = decode_step_inputs(gen, b.workload)
            key = f"{name}_{'compiled' if compiled else 'eager'}"
            first[key] = harness.timed(lambda g=gen, a=step: g.decode(*a), b.device)
            tasks[key] = harness.Task(lambda g=gen, a=step: g.decode(*a), b.reps["stage"])
    out = harness.round_robin(tasks, b.device)
    ev = {f"decode_step_ms_{name}": s["median_ms"] for name, s in out.items()}
    for mode in ("eager", "compiled"):
        ev[f"unfused_over_fused_{mode}"] = (
            ev[f"decode_step_ms_unfused_{mode}"] / ev[f"decode_step_ms_fused_{mode}"]
        )
    ev.update({f"first_call_s_{k}": v for k, v in first.items()})
    return {"rows": variant_rows(out), "evidence": ev}


def main(argv: list[str] | None = None) -> int:
    return run_bench("ablate_fused_weights", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
