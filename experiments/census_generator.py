"""Graphs of the bucketed Generator over the census's request sweeps -> a run file.

    python -m experiments.census_generator [--quick]

`granite_fms.inference.generation.Generator` (default `BucketPolicy`) runs the sweeps of
experiments/graphs.py through `Generator.generate` with its three compiled regions (`encode`:
encoder and projector, `prefill`, `decode`; the merge runs eagerly between them)
instrumented: `explain` and fullgraph on the uncompiled regions (`compile=False`), then the
graphs each sweep compiles with a counting backend as the Generator's backend (fullgraph,
dynamic=False), next to the distinct padded shapes each region sees (the graphs its policy
predicts). Padding is checked too: the prefill logits of the real rows against the
unpadded eager forward.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch

from experiments import graphs, harness
from experiments.modes import generate_tokens

NEW_TOKENS = 4  # per request (sets the static cache length bucket)
REGIONS = {
    "encode": ("audio", "gen.encode(features, frame_mask): encoder + projector, bucketed"),
    "prefill": ("prefill", "gen.prefill(embeds, positions, cache, slots, key_valid)"),
    "decode": ("decode", "gen.decode(token, position, cache, slot, key_valid, beam_rows)"),
}


def instrument(gen, hook: Callable) -> None:
    """Route the Generator's region calls through `hook(name, fn, *args)`."""
    for name in REGIONS:
        setattr(gen, name, functools.partial(hook, name, getattr(gen, name)))


def run_generate(gen, inputs: graphs.Inputs) -> None:
    from granite_fms.audio.features import AudioFeatures

    audio = AudioFeatures(inputs.features, inputs.frame_mask, inputs.counts)
    generate_tokens(gen, list(inputs.input_ids), audio, NEW_TOKENS)


def measure(fm, inputs: dict[str, list[graphs.Inputs]], hits, progress) -> tuple[list[dict], float]:
    from granite_fms.inference.generation import Generator

    rows: dict[str, dict] = {}

    def explain(name: str, fn: Callable, *args):
        if name not in rows:
            region, entry = REGIONS[name]
            rows[name] = {
                "key": f"fms_gen_{name}",
                "region": region,
                "entry": entry,
                **graphs.static_facts(fn, args),
            }
        return fn(*args)

    eager = Generator(fm, compile=False)
    instrument(eager, explain)
    run_generate(eager, inputs["sweep"][0])
    progress.done("explain")

    torch._dynamo.reset()
    counter = graphs.Counter()
    per_sweep = {name: dict.fromkeys(REGIONS, 0) for name in ("first", *inputs)}
    shapes: dict[str, set] = {name: set() for name in REGIONS}
    limit_hits, prefill_logits, current = dict.fromkeys(REGIONS, 0), [], ["first"]

    def count(name: str, fn: Callable, *args):
        before, hits_before = counter.frame_count, hits.count
        out = fn(*args)
        per_sweep[current[0]][name] += counter.frame_count - before
        limit_hits[name] += hits.count - hits_before
        shapes[name].add(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        if name == "prefill":
            prefill_logits.append(out)
        return out

    gen = Generator(fm, backend=counter)
    instrument(gen, count)
    max_rel = 0.0
    for sweep, requests in inputs.items():
        for i, request in enumerate(requests):
            current[0] = "first" if sweep == "sweep" and i == 0 else sweep
            run_generate(gen, request)
            if sweep == "sweep":  # bucket padding changes nothing: real rows vs unpadded
                ref = fm(
                    request.input_ids,
                    input_features=request.features,
                    input_features_mask=request.frame_mask,
                )[:, -1]
                out = prefill_logits[-1][: ref.shape[0]]
                max_rel = max(max_rel, float((out - ref).abs().max() / ref.abs().max()))
        progress.done(sweep)
    for name, row in rows.items():
        row.update(
            graphs_first_call=per_sweep["first"][name],
            padded_shapes=len(shapes[name]),
            max_compiles_per_frame=sum(s[name] for s in per_sweep.values()),
            recompile_limit_hits=limit_hits[name],
            **{f"recompiles_{s}": per_sweep[s][name] for s in inputs},
        )
    rows["generate"] = {
        "key": "fms_gen_generate",
        "region": "generate",
        "entry": f"gen.generate(ids, features, max_new_tokens={NEW_TOKENS}): the three regions",
        "graphs_first_call": sum(per_sweep["first"].values()),
        "padded_shapes": sum(len(s) for s in shapes.values()),
        "max_compiles_per_frame": counter.max_per_frame,
        "recompile_limit_hits": sum(limit_hits.values()),
        **{f"recompiles_{s}": sum(per_sweep[s].values()) for s in inputs},
    }
    return list(rows.values()), max_rel


def main(argv: list[str] | None = None) -> int:
    from granite_fms.inference.generation import BucketPolicy

    args = harness.parser(__doc__, device=False).parse_args(argv)
    dtype = harness.dtype_of(args)
    model = f"{graphs.CHECKPOINT}, {harness.dtype_name(dtype)}"
    run = harness.Run("census_generator", "cpu", args, model=model)
    default_limit, hits = graphs.configure()
    _, fm, inputs = graphs.census_models(args.quick, dtype)
    scale = 0.3 if args.quick else 1.0
    steps = {"explain": 10 * scale, "sweep": 120 * scale, "second": 20 * scale, "new_blocks": 20}
    progress = harness.Progress("census_generator", steps)
    rows, max_rel = measure(fm, inputs, hits, progress)
    total = rows[-1]
    ev = {
        f"{row['key']}_{k}": v
        for row in rows
        for k, v in row.items()
        if k.startswith(
            ("graphs", "recompiles", "padded", "max_compiles", "graph_breaks", "fullgraph_ok")
        )
    }
    ev.update(
        graphs_over_sweep=total["graphs_first_call"] + total["recompiles_sweep"],
        recompiles_second=total["recompiles_second"],
        recompiles_new_blocks=total["recompiles_new_blocks"],
        padded_shapes=total["padded_shapes"],
        bucket_padding_max_rel=max_rel,
        default_recompile_limit=default_limit,
    )
    run.write(
        rows=rows,
        evidence=ev,
        headline=["graphs_over_sweep", "recompiles_second", "bucket_padding_max_rel"],
        requests=graphs.describe(args.quick),
        new_tokens=NEW_TOKENS,
        policy=dataclasses.asdict(BucketPolicy()),
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
