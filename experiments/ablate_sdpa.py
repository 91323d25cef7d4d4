"""Ablation: the encoder's attention backend, MATH SDPA (default) vs fused kernels -> a run file.

    python -m experiments.ablate_sdpa [--quick] [--device cuda --model 3.3-8b]

`ConformerEncoder` with `attn_backend="math"` (the reference's numerics) against a copy with
`attn_backend="auto"` (PyTorch picks a fused kernel), same weights, on the target workload's
features: eager and compiled (fullgraph, static shapes) times, first compiled call, and how far
the two outputs are apart. Parity of each backend against the reference: experiments/parity.py.
"""

from __future__ import annotations

import torch

from experiments import harness
from experiments.models import Bench, run_bench, variant_rows
from experiments.modes import encoder_input, fms_inputs

WHAT = "encoder forward, attn_backend math (default) vs auto (fused SDPA)"
HEADLINE = ["math_over_auto_eager", "math_over_auto_compiled"]


def measure(b: Bench) -> dict:
    from granite_fms.models.conformer import ConformerEncoder

    fm, device = b.fm, b.device
    feats, _, _, _ = fms_inputs(fm, b.workload)
    x = encoder_input(fm, feats.input_features)
    mask = feats.input_features_mask
    with torch.device("meta"):
        auto = ConformerEncoder(fm.encoder.config.updated(attn_backend="auto"))
    auto.load_state_dict(fm.encoder.state_dict(), assign=True)
    auto.post_init()
    encoders = {"math": fm.encoder, "auto": auto.eval()}
    reference = fm.encoder(x, mask)
    diff = float((auto(x, mask) - reference).abs().max())
    tasks, first = {}, {}
    for backend, encoder in encoders.items():
        tasks[f"{backend}_eager"] = harness.Task(lambda e=encoder: e(x, mask), b.reps["stage"])
        compiled = torch.compile(encoder, fullgraph=True, dynamic=False)
        first[f"{backend}_compiled"] = harness.timed(lambda c=compiled: c(x, mask), device)
        tasks[f"{backend}_compiled"] = harness.Task(lambda c=compiled: c(x, mask), b.reps["stage"])
    out = harness.round_robin(tasks, device)
    ev = {f"encoder_ms_{name}": s["median_ms"] for name, s in out.items()}
    for mode in ("eager", "compiled"):
        ev[f"math_over_auto_{mode}"] = ev[f"encoder_ms_math_{mode}"] / ev[f"encoder_ms_auto_{mode}"]
    ev.update({f"first_call_s_{k}": v for k, v in first.items()})
    ev["max_abs_diff_auto_vs_math"] = diff
    ev["max_rel_diff_auto_vs_math"] = diff / float(reference.abs().max())
    return {"rows": variant_rows(out), "evidence": ev}


def main(argv: list[str] | None = None) -> int:
    return run_bench("ablate_sdpa", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
