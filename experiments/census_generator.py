"""Graphs of the Generator over the census's request sweeps -> a run file.

    python -m experiments.census_generator [--quick] [--threads 1]

`granite_fms.inference.generation.Generator` (default `BucketPolicy`) runs two streams of
requests through `Generator.generate`, its four regions (`encode`: encoder and projector,
`prefill`, `decode`, `reorder`: beam search's cache gather; the merge runs eagerly between
them) compiled with a counting eager backend, fullgraph:

* the census sweeps of experiments/graphs.py (audio 0.5-30 s, batch 1-4, greedy), then new
  lengths in the same encoder blocks and batch sizes, then new block counts;
* the wide sweep: audio 0.5-30 s, batch 1-32, every prompt bucket, greedy and beam search,
  then new batch sizes, lengths and beam widths (the steady state).

Each stream runs on a fresh Generator (and fresh Dynamo state) in three configurations:
symbolic shapes (whole regions), symbolic and regional (each conformer block and decoder layer
compiled once) and static shapes (`symbolic=False`: a graph per bucket). Counted per region:
the graphs each part compiles (`Generator.compiles`), the distinct padded shapes each region
saw, and the most compiles of one function (what Dynamo's recompile_limit caps). First,
`explain` and fullgraph on the uncompiled regions. Padding is checked too: the prefill logits
of the real rows against the unpadded eager forward. --quick: shorter sweeps, symbolic shapes
only.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable

import torch

from experiments import graphs, harness

NEW_TOKENS = 4  # per request (sets the static cache length bucket)
REGIONS = {
    "encode": ("audio", "gen.encode(features, frame_mask): encoder + projector"),
    "prefill": ("prefill", "gen.prefill(embeds, positions, cache, slots, key_valid)"),
    "decode": ("decode", "gen.decode(token, position, cache, slot, key_valid)"),
    "reorder": ("reorder", "gen.reorder(cache, rows): beam search's cache gather"),
}
R = graphs.Request
# fmt: off
# (request, beams): audio 0.5-30 s (one encoder block is 4 s), batch 1-32, prompt buckets 64 to
# 512 (placeholders: 10 per second), greedy and beam search.
WIDE_SWEEP = [(R((0.5,), 2), 1), (R((3.9,), 9), 4), (R((1.3, 0.6), 30), 4),
              (R((7.5, 2.9, 0.5), 4), 1), (R((11, 9, 7, 5, 3), 6), 1), (R((4.7,) * 8, 12), 1),
              (R((17,), 60), 4), (R((2.9,) * 13, 3), 1), (R((1.3, 30) * 10 + (5,), 5), 1),
              (R((30, 23), 14), 2), (R((23,) * 4, 7), 4), (R((0.5,) * 31 + (6,), 20), 1)]
WIDE_SECOND = [(R((2.2,) * 6, 5), 1), (R((9.6, 4.1, 2.0) * 3 + (1.0, 0.7), 11), 1),
               (R((26,) * 3, 8), 3), (R((0.8,) * 27, 40), 1), (R((14,), 3), 2)]
QUICK_WIDE = [(R((0.5,), 2), 1), (R((7.5, 2.9, 0.5), 4), 4), (R((4.7,) * 8, 12), 1),
              (R((30,) * 13, 5), 1)]
QUICK_SECOND = [(R((2.2,) * 6, 5), 3)]
# fmt: on


def sweeps(quick: bool) -> dict[str, list[tuple[graphs.Request, int]]]:
    census = {name: [(r, 1) for r in reqs] for name, reqs in graphs.sweeps(quick).items()}
    if quick:
        return census | {"wide": QUICK_WIDE, "wide_second": QUICK_SECOND}
    return census | {"wide": WIDE_SWEEP, "wide_second": WIDE_SECOND}


def instrument(gen, hook: Callable) -> None:
    """Route the Generator's region calls through `hook(name, fn, *args)`."""
    for name in REGIONS:
        setattr(gen, name, functools.partial(hook, name, getattr(gen, name)))


def run_generate(gen, inputs: graphs.Inputs, beams: int) -> None:
    from granite_fms.audio.features import AudioFeatures

    audio = AudioFeatures(inputs.features, inputs.frame_mask, inputs.counts)
    gen.generate(list(inputs.input_ids), audio, max_new_tokens=NEW_TOKENS, num_beams=beams)


def explain(fm, inputs: graphs.Inputs) -> dict[str, dict]:
    """`explain` and fullgraph on the uncompiled regions, for one beam-search request."""
    from granite_fms.inference.generation import Generator

    rows: dict[str, dict] = {}

    def hook(name: str, fn: Callable, *args):
        if name not in rows:
            region, entry = REGIONS[name]
            key = f"fms_gen_{name}"
            rows[name] = {"key": key, "region": region, "entry": entry}
            with torch.compiler.set_stance("default"):  # the eager loop forces eager
                rows[name].update(graphs.static_facts(fn, args))
        return fn(*args)

    eager = Generator(fm)
    instrument(eager, hook)
    run_generate(eager, inputs, 2)
    return rows


STREAMS = (("sweep", "second", "new_blocks"), ("wide", "wide_second"))


CONFIGS = {  # name: CompileConfig fields
    "symbolic": dict(),
    "regional": dict(regional=True),
    "static": dict(symbolic=False),
}


def measure(fm, inputs: dict[str, list], fields: dict, hits) -> tuple[dict, float]:
    """Graphs per part and region for one CompileConfig, each stream of parts on a fresh
    Generator (and model: regional compiles blocks in place) and fresh Dynamo state; the
    worst padding error."""
    from granite_fms.inference.compile import CompileConfig
    from granite_fms.inference.generation import Generator

    shapes: dict[str, set] = {name: set() for name in REGIONS}
    logits: list[torch.Tensor] = []

    def hook(name: str, fn: Callable, *args):
        shapes[name].add(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        out = fn(*args)
        if name == "prefill":
            logits.append(out)
        return out

    per_part, most, limit_hits, max_rel = {}, 0, hits.count, 0.0
    for stream in STREAMS:
        torch._dynamo.reset()
        counter = graphs.Counter()
        model = copy.deepcopy(fm)
        gen = Generator(model, compile=CompileConfig(backend=counter, **fields))
        instrument(gen, hook)
        for part in stream:
            before = dict(gen.compiles)
            for i, (request, beams) in enumerate(inputs[part]):
                run_generate(gen, request, beams)
                if part == stream[0] and i == 0:
                    per_part[f"{part}_first"] = dict(gen.compiles)
                if part == stream[0] and beams == 1:  # real rows vs the unpadded forward
                    ref = fm(
                        request.input_ids,
                        input_features=request.features,
                        input_features_mask=request.frame_mask,
                    )[:, -1]
                    out = logits[-1][: ref.shape[0]]
                    max_rel = max(max_rel, float((out - ref).abs().max() / ref.abs().max()))
            per_part[part] = {name: gen.compiles[name] - before[name] for name in REGIONS}
        most = max(most, counter.max_per_frame)
    return {
        "per_part": per_part,
        "padded_shapes": {name: len(s) for name, s in shapes.items()},
        "max_compiles_per_frame": most,
        "recompile_limit_hits": hits.count - limit_hits,
    }, max_rel


def evidence(results: dict[str, dict]) -> dict:
    """Flat evidence: the census keys of GS-3 (symbolic) and the wide sweep's, both configs."""
    sym = results["symbolic"]
    ev = {
        "graphs_over_sweep": sum(sym["per_part"]["sweep"].values()),
        "recompiles_second": sum(sym["per_part"]["second"].values()),
        "recompiles_new_blocks": sum(sym["per_part"]["new_blocks"].values()),
        "padded_shapes": sum(sym["padded_shapes"].values()),
        "fms_gen_generate_max_compiles_per_frame": sym["max_compiles_per_frame"],
    }
    for name in REGIONS:  # after the census sweep's first request (GS-6)
        after = sym["per_part"]["sweep"][name] - sym["per_part"]["sweep_first"][name]
        ev[f"fms_gen_{name}_recompiles_sweep"] = after
    for config, r in results.items():
        parts = r["per_part"]
        for part in ("sweep", "second", "new_blocks", "wide", "wide_second"):
            ev[f"{part}_graphs_{config}"] = sum(parts[part].values())
            for name in REGIONS:
                ev[f"{part}_graphs_{name}_{config}"] = parts[part][name]
        ev[f"max_compiles_per_frame_{config}"] = r["max_compiles_per_frame"]
        ev[f"recompile_limit_hits_{config}"] = r["recompile_limit_hits"]
    return ev


def main(argv: list[str] | None = None) -> int:
    from granite_fms.inference.generation import BucketPolicy

    args, dtype, run, default_limit, hits = graphs.start("census_generator", __doc__, argv)
    _, fm = graphs.census_models(dtype)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        part: [(graphs.make_inputs(r, fm, gen, dtype), beams) for r, beams in reqs]
        for part, reqs in sweeps(args.quick).items()
    }
    scale = 0.3 if args.quick else 1.0
    configs = {"symbolic": CONFIGS["symbolic"]} if args.quick else CONFIGS
    steps = {"explain": 10 * scale, **{name: 150 * scale for name in configs}}
    progress = harness.Progress("census_generator", steps)
    rows = explain(fm, inputs["sweep"][0][0])
    progress.done("explain")
    results, max_rel = {}, 0.0
    for config, fields in configs.items():
        results[config], rel = measure(fm, inputs, fields, hits)
        max_rel = max(max_rel, rel)
        progress.done(config)
    for name, row in rows.items():
        for config, r in results.items():
            row[f"padded_shapes_{config}"] = r["padded_shapes"][name]
            row.update({f"graphs_{p}_{config}": n[name] for p, n in r["per_part"].items()})
    ev = evidence(results)
    ev.update(bucket_padding_max_rel=max_rel, default_recompile_limit=default_limit)
    for r in rows.values():
        ev.update({f"{r['key']}_{k}": r[k] for k in ("graphs", "graph_breaks", "fullgraph_ok")})
    run.write(
        rows=list(rows.values()),
        evidence=ev,
        headline=["wide_graphs_symbolic", "wide_graphs_regional", "wide_graphs_static"],
        requests={
            part: [{"seconds": list(r.seconds), "suffix": r.suffix, "beams": b} for r, b in reqs]
            for part, reqs in sweeps(args.quick).items()
        },
        new_tokens=NEW_TOKENS,
        policy=dataclasses.asdict(BucketPolicy()),
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
