"""Beam search cost: num_beams=4 vs greedy through the compiled Generator -> a run file.

    python -m experiments.bench_beam [--quick] [--device cuda --model 3.3-8b]

The target workload (10 s clip, batch 1; --quick: 1 s) and the same budget of new tokens, no
EOS (so both run every step), timed end to end round robin. Beam search runs the LLM on
clips x beams rows (prefill included, as Hugging Face's does) and reorders the static KV
cache inside the decode graph.
"""

from __future__ import annotations

from experiments import harness
from experiments.models import Bench, run_bench
from experiments.modes import fms_inputs

BEAMS = (1, 4)
WHAT = "end to end, compiled Generator: num_beams=4 vs greedy, same new tokens"
HEADLINE = ["beam4_over_greedy"]


def measure(b: Bench) -> dict:
    w, gen = b.workload, b.generator
    feats, rows, _, _ = fms_inputs(b.fm, w)

    def call(k: int):
        return lambda: gen.generate(rows, feats, max_new_tokens=w.new_tokens, num_beams=k)

    first = {k: harness.timed(call(k), b.device) for k in BEAMS}  # compiles each k's graphs
    out = harness.round_robin({k: harness.Task(call(k), b.reps["stage"]) for k in BEAMS}, b.device)
    ev = {f"e2e_ms_k{k}": out[k]["median_ms"] for k in BEAMS}
    ev.update({f"first_call_s_k{k}": first[k] for k in BEAMS})
    ev["beam4_over_greedy"] = ev["e2e_ms_k4"] / ev["e2e_ms_k1"]
    return {
        "new_tokens": w.new_tokens,
        "rows": [{"variant": f"num_beams={k}", **out[k]} for k in BEAMS],
        "evidence": ev,
    }


def main(argv: list[str] | None = None) -> int:
    return run_bench("bench_beam", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
