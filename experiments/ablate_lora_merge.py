"""Ablation: the LoRA adapter unmerged (switchable, as shipped) vs merged into the weights.

    python -m experiments.ablate_lora_merge [--quick] [--device cuda --model 3.3-8b]

One decode step (model call, static cache) of the compiled Generator (mode "default": no CUDA
graphs), three copies of the same weights: LoRA unmerged and active (what a speech request
runs: `scale * B(A x)` added to the queries and values), LoRA merged (`W + scale * B A` in the
fused QKV weight, no adapter: an audio-only deployment, since text-only requests need the
adapter off) and no LoRA at all (the base weights: the step's cost without the adapter).
Also how far the merged model's prefill logits and greedy tokens are from the unmerged one's
(only rounding: the merge is exact in real arithmetic).
"""

from __future__ import annotations

import torch

from experiments import harness
from experiments.ablate_fused_weights import without_lora
from experiments.models import Bench, run_bench, variant_rows
from experiments.modes import (
    decode_step_inputs,
    fms_inputs,
    generate_tokens,
    prefill_logits,
    token_agreement,
)

WHAT = "one compiled decode step, LoRA unmerged (active) vs merged into q/v vs no LoRA"
HEADLINE = ["unmerged_over_merged", "lora_share_of_decode_step"]


def merged(fm):
    """A LoRA-free copy whose fused QKV weights hold `W + scale * B A` for queries and values
    (new tensors; the other weights shared with `fm`)."""
    plain = without_lora(fm)
    scale = fm.config.lora_scale
    for lora, layer in zip(fm._lora_modules(), plain.language_model.base_model.layers, strict=True):
        q_dim, k_dim, _ = lora.splits
        a_q, a_v = lora.lora_a.weight.float().chunk(2, dim=0)
        weight = lora.qkv_fused.weight.float().clone()
        weight[:q_dim] += scale * lora.lora_b_q.weight.float() @ a_q
        weight[q_dim + k_dim :] += scale * lora.lora_b_v.weight.float() @ a_v
        qkv = layer.attn.in_proj.qkv_fused
        qkv.weight = torch.nn.Parameter(weight.to(qkv.weight.dtype), requires_grad=False)
    return plain


def measure(b: Bench) -> dict:
    from granite_fms.inference.compile import CompileConfig
    from granite_fms.inference.generation import Generator

    if not b.fm.config.lora_rank:
        raise ValueError(f"{b.args.model} has no LoRA adapter to merge")
    w = b.workload
    feats, rows, _, _ = fms_inputs(b.fm, w)
    gens = {
        "unmerged": b.generator,
        "merged": Generator(merged(b.fm), compile=CompileConfig(mode="default")),
        "no_lora": Generator(without_lora(b.fm), compile=CompileConfig(mode="default")),
    }
    tasks, tokens, logits, first = {}, {}, {}, {}
    for name, gen in gens.items():
        tokens[name] = generate_tokens(gen, rows, feats, w.new_tokens)
        p, step = decode_step_inputs(gen, w)
        logits[name] = prefill_logits(gen, p)
        first[name] = harness.timed(lambda g=gen, s=step: g.decode(*s), b.device)
        tasks[name] = harness.Task(lambda g=gen, s=step: g.decode(*s), b.reps["stage"])
    out = harness.round_robin(tasks, b.device)
    ev = {f"decode_step_ms_{name}": s["median_ms"] for name, s in out.items()}
    ev["unmerged_over_merged"] = ev["decode_step_ms_unmerged"] / ev["decode_step_ms_merged"]
    no_lora, unmerged = ev["decode_step_ms_no_lora"], ev["decode_step_ms_unmerged"]
    ev["lora_share_of_decode_step"] = 1 - no_lora / unmerged
    ev.update({f"first_call_s_{name}": s for name, s in first.items()})
    ref, err = logits["unmerged"], logits["merged"] - logits["unmerged"]
    ev["merged_prefill_logits_rel_err"] = float(err.abs().max() / ref.abs().max())
    ev["merged_greedy_token_agreement"] = token_agreement(tokens["unmerged"], tokens["merged"])
    ev["lora_rank"] = b.fm.config.lora_rank
    return {"new_tokens": w.new_tokens, "rows": variant_rows(out), "evidence": ev}


def main(argv: list[str] | None = None) -> int:
    return run_bench("ablate_lora_merge", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
