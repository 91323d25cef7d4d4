"""int8 weight-only LLM vs the unquantised model: speed and agreement -> a run file.

    python -m experiments.bench_int8 [--quick] [--device cuda --model 3.3-8b]

The target workload (10 s clip, batch 1; --quick: 1 s) through the compiled Generator, with
the LLM's linear weights as loaded (fp32 on CPU, bf16 on a GPU) and int8 weight-only
(torchao, `CompileConfig(quantize="int8")`): one decode-step call, and end to end, timed round
robin; the prefill logits' error relative to their scale and the greedy tokens' agreement.
Also the LM head alone (the largest matmul of a decode step) on one row: the weights as loaded,
torchao's int8 layer, and on CPU ATen's int8 weight-only kernel (`_weight_int8pack_mm`, per-row
scales), each compiled or called as is, to tell the kernel's cost from the loop's.
"""

from __future__ import annotations

import copy

import torch

from experiments import harness
from experiments.models import Bench, run_bench
from experiments.modes import decode_step_inputs, fms_inputs, prefill_logits, token_agreement

WHAT = "compiled Generator, LLM weights as loaded vs int8 weight-only (torchao)"
HEADLINE = ["decode_call_speedup_int8", "e2e_speedup_int8", "prefill_logits_rel_err"]


def head_tasks(b: Bench, gens: dict, reps) -> dict:
    """The LM head on one row: weights as loaded, torchao int8, ATen int8 (CPU only)."""
    head, int8_head = (gens[name].model.language_model.head for name in ("base", "int8"))
    x = torch.randn(1, 1, head.in_features, device=b.device, dtype=head.weight.dtype)
    fns = {"base": torch.compile(head), "int8": torch.compile(int8_head)}
    if b.device.type == "cpu":
        w = head.weight.detach()
        scale = w.abs().amax(1) / 127
        wq = torch.round(w / scale[:, None]).to(torch.int8)
        fns["int8_aten"] = lambda x: torch._weight_int8pack_mm(x.view(1, -1), wq, scale)
    return {(name, "head"): harness.Task(lambda f=f: f(x), reps) for name, f in fns.items()}


def measure(b: Bench) -> dict:
    from granite_fms.inference.generation import Generator
    from granite_fms.inference.quantize import quantize_llm

    w, device = b.workload, b.device
    int8 = quantize_llm(copy.deepcopy(b.fm), "int8")
    gens = {"base": b.generator, "int8": Generator(int8, compile=b.generator.config)}
    feats, rows, _, _ = fms_inputs(b.fm, w)
    tokens, logits, tasks = {}, {}, {}
    for name, gen in gens.items():
        tokens[name] = [g.tokens for g in gen.generate(rows, feats, max_new_tokens=w.new_tokens)]
        p, step = decode_step_inputs(gen, w)
        logits[name] = prefill_logits(gen, p)
        tasks[(name, "decode_call")] = harness.Task(
            lambda g=gen, s=step: g.decode(*s), b.reps["stage"]
        )
        tasks[(name, "e2e")] = harness.Task(
            lambda g=gen: g.generate(rows, feats, max_new_tokens=w.new_tokens),
            (1, 2, 0.5) if b.args.quick else (3, 5, 3.0),
        )
    tasks |= head_tasks(b, gens, b.reps["stage"])
    out = harness.round_robin(tasks, device)
    ev = {f"{part}_ms_{name}": out[(name, part)]["median_ms"] for name, part in out}
    for part in ("decode_call", "e2e"):
        ev[f"{part}_speedup_int8"] = ev[f"{part}_ms_base"] / ev[f"{part}_ms_int8"]
    ref = logits["base"]
    ev["prefill_logits_rel_err"] = float((ref - logits["int8"]).abs().max() / ref.abs().max())
    ev["greedy_token_agreement"] = token_agreement(tokens["base"], tokens["int8"])
    ev["greedy_first_token_agrees"] = tokens["base"][0][0] == tokens["int8"][0][0]
    return {
        "new_tokens": w.new_tokens,
        "rows": [{"variant": name, "part": part, **s} for (name, part), s in out.items()],
        "evidence": ev,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench("bench_int8", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
