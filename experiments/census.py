"""Graph-break census: Hugging Face transformers vs this project, region by region -> a run file.

    python -m experiments.census [--quick]   # --quick: the forward and decode regions only

One checkpoint (experiments/graphs.py) loaded both ways. Per region (encoder, projector, merge,
audio path, LLM prefill and one decode step with each side's KV caches, the whole forward with
audio) and entry point:

* graphs, graph breaks and their reasons: `torch._dynamo.explain` on the sweep's first request;
* fullgraph: whether `torch.compile(fn, fullgraph=True, backend="eager")` runs that request
  (with fullgraph=True Dynamo traces data-dependent ops with unbacked sizes instead of breaking,
  so a region can break by default and still compile with fullgraph=True);
* recompiles: `torch.compile(fn)` (default dynamic-shape settings) with a counting eager
  backend, called on every request of the sweep, then of the second sweep (new lengths in the
  same encoder blocks and batch sizes: the steady state), then of the new-blocks sweep (block
  counts never seen); `recompile_limit` raised to 64, hits of it counted;
* compile_s (whole forward only): the first call of `torch.compile(fn)` (Inductor, caches off;
  not with --quick, whose sweeps are shorter too and which takes only the QUICK_REGIONS).

Adapter switching: a text-only forward compiled once, the adapter switched on/off/on/off between
calls (peft's enable/disable_adapters vs `set_adapter`). The bucketed Generator over the same
sweeps: census_generator.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from experiments import graphs, harness

MAX_CACHE_LEN = 512  # HF StaticCache length (the tiny text model's max_position_embeddings)
COMPILE_TIMED = ("hf_forward", "fms_forward")
QUICK_REGIONS = ("forward", "decode")
SWEEPS = ("sweep", "second", "new_blocks")


@dataclass
class Region:
    """A function to compile, the entry point it stands for, and its arguments for a request."""

    key: str
    region: str
    entry: str
    fn: Callable
    args: Callable[[graphs.Inputs], tuple]


def hf_regions(hf) -> list[Region]:
    from transformers import DynamicCache, StaticCache

    text, model = hf.config.text_config, hf.model

    def encoder(x):
        return model.encoder(x).last_hidden_state

    def audio_path(ids, x, proj_mask):
        audio = model.get_audio_features(x).pooler_output
        return model.get_merged_audio_embeddings(ids, audio, proj_mask)

    def lm(embeds=None, ids=None, cache=None):
        return hf(input_ids=ids, inputs_embeds=embeds, past_key_values=cache, use_cache=True).logits

    def merged(i: graphs.Inputs):
        return audio_path(i.input_ids, i.features, i.proj_mask)

    def prefilled(i: graphs.Inputs, cache):
        lm(embeds=merged(i), cache=cache)
        return cache

    def step(i: graphs.Inputs):
        return torch.full((i.input_ids.shape[0], 1), 9)

    def static():
        return StaticCache(config=text, max_cache_len=MAX_CACHE_LEN)

    # fmt: off
    return [
        Region("hf_encoder", "encoder", "model.model.encoder(x)", encoder, lambda i: (i.features,)),
        Region("hf_projector", "projector", "model.model.projector(enc)", model.projector,
               lambda i: (encoder(i.features),)),
        Region("hf_merge", "merge", "get_merged_audio_embeddings(ids, audio, mask)",
               model.get_merged_audio_embeddings,
               lambda i: (i.input_ids, model.get_audio_features(i.features).pooler_output,
                          i.proj_mask)),
        Region("hf_audio_path", "audio_path",
               "get_merged_audio_embeddings(ids, get_audio_features(x), mask)", audio_path,
               lambda i: (i.input_ids, i.features, i.proj_mask)),
        Region("hf_prefill", "prefill", "model(inputs_embeds=e, past_key_values=DynamicCache())",
               lambda e, c: lm(embeds=e, cache=c),
               lambda i: (merged(i), DynamicCache(config=text))),
        Region("hf_decode", "decode", "model(input_ids=tok, past_key_values=prefilled Dynamic)",
               lambda t, c: lm(ids=t, cache=c),
               lambda i: (step(i), prefilled(i, DynamicCache(config=text)))),
        Region("hf_prefill_static", "prefill",
               f"model(inputs_embeds=e, past_key_values=StaticCache({MAX_CACHE_LEN}))",
               lambda e, c: lm(embeds=e, cache=c), lambda i: (merged(i), static())),
        Region("hf_decode_static", "decode",
               "model(input_ids=tok, past_key_values=prefilled StaticCache)",
               lambda t, c: lm(ids=t, cache=c), lambda i: (step(i), prefilled(i, static()))),
        Region("hf_forward", "forward", "model(input_ids, input_features, input_features_mask)",
               lambda ids, x, m: hf(input_ids=ids, input_features=x, input_features_mask=m).logits,
               lambda i: (i.input_ids, i.features, i.proj_mask)),
    ]
    # fmt: on


def fms_regions(fm) -> list[Region]:
    def positions(ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        return torch.arange(start, start + ids.shape[1]).expand(ids.shape[0], -1)

    def embeds(i: graphs.Inputs) -> torch.Tensor:
        return fm.embed_audio_and_text(i.input_ids, i.features, i.frame_mask)

    def decode_args(i: graphs.Inputs) -> tuple:
        _, cache = fm(embeds(i), position_ids=positions(i.input_ids), use_cache=True)
        tok = torch.full((i.input_ids.shape[0], 1), 9)
        return tok, positions(tok, i.input_ids.shape[1]), cache

    # fmt: off
    return [
        Region("fms_encoder", "encoder", "fm.encoder(x, frame_mask)", fm.encoder,
               lambda i: (i.features, i.frame_mask)),
        Region("fms_projector", "projector", "fm.projector(enc)", fm.projector,
               lambda i: (fm.encoder(i.features, i.frame_mask),)),
        Region("fms_merge", "merge", "fm.merge_audio(ids, audio, frame_mask)", fm.merge_audio,
               lambda i: (i.input_ids, fm.audio_embeddings(i.features, i.frame_mask),
                          i.frame_mask)),
        Region("fms_audio_path", "audio_path", "fm.embed_audio_and_text(ids, x, mask)",
               fm.embed_audio_and_text, lambda i: (i.input_ids, i.features, i.frame_mask)),
        Region("fms_prefill", "prefill", "fm(embeds, position_ids, use_cache=True) (cat cache)",
               lambda e, p: fm(e, position_ids=p, use_cache=True),
               lambda i: (embeds(i), positions(i.input_ids))),
        Region("fms_decode", "decode", "fm(tok, position_ids, past_key_value_states=cache)",
               lambda t, p, c: fm(t, position_ids=p, past_key_value_states=c, use_cache=True),
               decode_args),
        Region("fms_forward", "forward", "fm(ids, input_features=x, input_features_mask=mask)",
               lambda ids, x, m: fm(ids, input_features=x, input_features_mask=m),
               lambda i: (i.input_ids, i.features, i.frame_mask)),
    ]
    # fmt: on


def measure(region: Region, inputs: dict[str, list[graphs.Inputs]], hits, timed: bool) -> dict:
    """Static facts on the first request, then the graphs each sweep compiles; `timed`: the
    Inductor compile of the COMPILE_TIMED regions too."""
    row = {
        "key": region.key,
        "impl": region.key.split("_")[0],
        "region": region.region,
        "entry": region.entry,
        **graphs.static_facts(region.fn, region.args(inputs["sweep"][0])),
    }
    torch._dynamo.reset()
    counter = graphs.Counter()
    compiled = torch.compile(region.fn, backend=counter)
    hits.count = 0
    compiled(*region.args(inputs["sweep"][0]))
    row["graphs_first_call"] = counts = counter.frame_count
    for name in SWEEPS:
        for i in inputs[name][1:] if name == "sweep" else inputs[name]:
            compiled(*region.args(i))
        row[f"recompiles_{name}"], counts = counter.frame_count - counts, counter.frame_count
    row.update(max_compiles_per_frame=counter.max_per_frame, recompile_limit_hits=hits.count)
    if timed and region.key in COMPILE_TIMED:
        torch._dynamo.reset()
        row["compile_s"] = harness.timed(
            lambda: torch.compile(region.fn)(*region.args(inputs["sweep"][0])), torch.device("cpu")
        )
    return row


def adapter_rows(hf, fm, hits) -> list[dict]:
    """A text-only forward compiled once, the adapter switched on/off/on/off between calls."""
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    cases = [
        (
            "hf",
            "model(input_ids=ids).logits; peft enable_adapters() / disable_adapters()",
            lambda x: hf(input_ids=x).logits,
            lambda on: hf.enable_adapters() if on else hf.disable_adapters(),
        ),
        (
            "fms",
            'fm(ids); fm.set_adapter("on" / "off"), a 0-dim scale buffer',
            fm,
            lambda on: fm.set_adapter("on" if on else "off"),
        ),
    ]
    rows = []
    for impl, entry, fn, switch in cases:
        switch(True)
        row = {
            "key": f"{impl}_adapter_switch",
            "impl": impl,
            "region": "adapter_switch",
            "entry": entry,
            **graphs.static_facts(fn, (ids,)),
        }
        torch._dynamo.reset()
        counter = graphs.Counter()
        compiled = torch.compile(fn, backend=counter)
        hits.count = 0
        outs = [compiled(ids)]
        warm = counter.frame_count
        for on in (False, True, False):
            switch(on)
            outs.append(compiled(ids))
        switch(True)
        row.update(
            graphs_first_call=warm,
            recompiles_switches=counter.frame_count - warm,
            switches=3,
            max_compiles_per_frame=counter.max_per_frame,
            recompile_limit_hits=hits.count,
            switch_changes_output=not torch.allclose(outs[0], outs[1]),
        )
        rows.append(row)
    return rows


def evidence_of(rows: list[dict], default_limit: int, sweep_calls: int) -> dict:
    """K_graphs, K_graph_breaks, K_fullgraph_ok, K_recompiles_<sweep>, K_max_compiles_per_frame
    (and K_compile_s) for every row key K, plus totals over each side."""
    ev: dict = {
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "default_recompile_limit": default_limit,
        "sweep_calls": sweep_calls,
    }
    for row in rows:
        k = row["key"]
        for field in (
            "graphs",
            "graph_breaks",
            "fullgraph_ok",
            "max_compiles_per_frame",
            "compile_s",
            "switch_changes_output",
        ):
            if field in row:
                ev[f"{k}_{field}"] = row[field]
        if "recompiles_sweep" in row:
            ev[f"{k}_graphs_over_sweep"] = row["graphs_first_call"] + row["recompiles_sweep"]
        for name in (*SWEEPS, "switches"):
            if f"recompiles_{name}" in row:
                ev[f"{k}_recompiles_{name}"] = row[f"recompiles_{name}"]
        ev[f"{k}_break_sites"] = len(row["break_reasons"])
    for impl in ("hf", "fms"):
        side = [row for row in rows if row["impl"] == impl]
        ev[f"{impl}_recompile_limit_hits"] = sum(row["recompile_limit_hits"] for row in side)
        ev[f"{impl}_exceeds_default_recompile_limit"] = any(
            row["max_compiles_per_frame"] > default_limit for row in side
        )
    return ev


def main(argv: list[str] | None = None) -> int:
    args, dtype, run, default_limit, hits = graphs.start("census", __doc__, argv)
    hf, fm = graphs.census_models(dtype)
    inputs = graphs.census_inputs(fm, args.quick, dtype)
    regions = hf_regions(hf) + fms_regions(fm)
    if args.quick:
        regions = [r for r in regions if r.region in QUICK_REGIONS]
    scale = 0.3 if args.quick else 1.0
    expected = {"hf_forward": 60, "fms_forward": 40, "hf_audio_path": 25, "hf_merge": 15}
    steps = {r.key: scale * expected.get(r.key, 10) for r in regions}
    progress = harness.Progress("census", {**steps, "adapter_switch": 10})
    rows = []
    for region in regions:
        rows.append(measure(region, inputs, hits, timed=not args.quick))
        progress.done(region.key)
    rows += adapter_rows(hf, fm, hits)
    progress.done("adapter_switch")
    ev = evidence_of(rows, default_limit, len(inputs["sweep"]))
    not_measured = {
        "gpu": "the census runs on CPU with a counting eager backend: graphs, "
        "breaks and recompiles come from Dynamo, which traces the same code on any "
        "device; compile times on a GPU are not measured here"
    }
    if args.quick:
        not_measured.update(
            {
                f"{k}_compile_s": "--quick: the Inductor compile is timed in full runs"
                for k in COMPILE_TIMED
            }
        )
    run.write(
        rows=rows,
        evidence=ev,
        headline=[
            "hf_forward_graph_breaks",
            "fms_forward_graph_breaks",
            "hf_forward_recompiles_sweep",
            "fms_forward_recompiles_sweep",
        ],
        requests=graphs.describe(args.quick),
        not_measured=not_measured,
        hf_static_cache_len=MAX_CACHE_LEN,
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
