"""Ablation: Inductor freezing of the compiled decode step, its speed and its adapter hazard.

    python -m experiments.ablate_freezing [--quick] [--device cuda --model 3.3-8b]

The Generator's compiled decode step against the same step compiled under
`torch._inductor.config.freezing=True` (parameters and buffers become constants; on CPU the
weights are prepacked). Freezing also folds the LoRA scale, a 0-dim buffer, into the graph, so
switching the adapter no longer reaches it: measured as the logit change that switching the
adapter off causes in each graph. A measured option, not what the Generator does.
"""

from __future__ import annotations

import torch

from experiments import harness
from experiments.models import Bench, run_bench, variant_rows
from experiments.modes import decode_step_inputs

WHAT = "one compiled decode step (model call, static cache), Inductor freezing off/on"
HEADLINE = ["plain_over_freezing", "adapter_switch_effect_frozen"]


def measure(b: Bench) -> dict:
    from granite_fms.inference.generation import _decode

    fm, gen = b.fm, b.generator
    frozen = torch.compile(lambda *a: _decode(fm, *a), fullgraph=True, dynamic=False)
    _, step = decode_step_inputs(gen, b.workload)
    fm.start_request(True)
    with torch._inductor.config.patch(freezing=True):
        first = harness.timed(lambda: frozen(*step), b.device)
    plain_on, frozen_on = gen.decode(*step).clone(), frozen(*step).clone()
    fm.start_request(False)  # adapter off: a text-only request
    plain_off, frozen_off = gen.decode(*step).clone(), frozen(*step).clone()
    fm.start_request(True)
    tasks = {
        "compiled": harness.Task(lambda: gen.decode(*step), b.reps["stage"]),
        "compiled_freezing": harness.Task(lambda: frozen(*step), b.reps["stage"]),
    }
    out = harness.round_robin(tasks, b.device)
    ev = {f"decode_step_ms_{name}": s["median_ms"] for name, s in out.items()}
    ev["plain_over_freezing"] = (
        ev["decode_step_ms_compiled"] / ev["decode_step_ms_compiled_freezing"]
    )
    ev["first_call_s_compiled_freezing"] = first
    ev["max_abs_logit_diff_adapter_on"] = float((frozen_on - plain_on).abs().max())
    ev["adapter_switch_effect_plain"] = float((plain_off - plain_on).abs().max())
    ev["adapter_switch_effect_frozen"] = float((frozen_off - frozen_on).abs().max())
    ev["max_abs_logit_diff_adapter_off"] = float((frozen_off - plain_off).abs().max())
    return {"rows": variant_rows(out), "evidence": ev}


def main(argv: list[str] | None = None) -> int:
    return run_bench("ablate_freezing", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
