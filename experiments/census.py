"""Graph-break census: HF transformers vs this project, per region -> results/census.{json,md}.

One random checkpoint is written by Hugging Face's own classes (`tiny_hf_config("3.3")` with the
released encoder attention context, 200 frames and max_pos_emb 512, because the recompile
pattern of the encoder depends on it; peft LoRA adapter, active as for audio requests) and
loaded both ways. Per region (encoder, projector, merge, audio path, LLM prefill with a KV cache,
one decode step, whole forward with audio) and entry point:

* graphs, graph breaks and their reasons: `torch._dynamo.explain` on the first request of the
  sweep (reasons deduplicated: first line, innermost user frame and its source line);
* fullgraph: whether `torch.compile(fn, fullgraph=True, backend="eager")` runs that request
  (with fullgraph=True, Dynamo traces data-dependent ops with unbacked sizes instead of
  breaking, so a region can break by default and still compile with fullgraph=True);
* recompiles: `torch.compile(fn)` with a `CompileCounterWithBackend("eager")` backend (default
  dynamic-shape settings) called on every request of the sweep: graphs compiled after the first
  request. `recompile_limit` is raised to RECOMPILE_LIMIT and hits of it are counted;
* compile_s: wall time of the first call of `torch.compile(fn)` (Inductor, CPU, caches off),
  which includes one run of the (tiny, milliseconds) model; whole forward with audio only.

The sweep is a stream of requests: nine audio lengths from 0.5 to 30 s (50 encoder frames per
second), text suffixes of varying length, batches of 1 to 4 clips (the rows of a batch get
extra text so that they have equal length).

Our recommended path, `granite_fms.generation.Generator` (bucketed shapes, static KV cache), is
measured on the same sweep through `Generator.generate`, with its three compiled regions
(`embed`, `prefill`, `decode`) instrumented: explain and fullgraph on the uncompiled regions
(`compile=False`), recompiles with the counter as the Generator's backend (fullgraph,
dynamic=False), next to the distinct padded shapes its `BucketPolicy` gives each region (the
graphs it predicts). Padding is checked too: prefill logits of the real rows vs the unpadded
eager forward. Adapter switching: a text-only forward compiled once, the adapter switched
on/off/on/off between calls (peft's enable/disable_adapters vs `set_adapter`).

Evidence (`evidence` in census.json), for every row key K (hf_encoder, hf_projector, hf_merge,
hf_audio_path, hf_prefill, hf_decode, hf_prefill_static, hf_decode_static, hf_forward,
hf_adapter_switch, fms_encoder, fms_projector, fms_merge, fms_audio_path, fms_prefill,
fms_decode, fms_forward, fms_adapter_switch, fms_gen_embed, fms_gen_prefill, fms_gen_decode,
fms_gen_generate): K_graphs, K_graph_breaks, K_fullgraph_ok, K_recompiles,
K_max_compiles_per_frame (the most compiles of one code object, which is what `recompile_limit`
caps) and, where measured, K_compile_s. Plus: recompile_limit, default_recompile_limit, sweep_calls;
hf_forward_break_sites (distinct break reasons); hf_recompile_limit_hits,
fms_recompile_limit_hits (summed over the side's rows), hf_exceeds_default_recompile_limit,
fms_exceeds_default_recompile_limit (some row's max compiles per frame above the default);
fms_bucketed_recompiles (graphs `Generator.generate` compiled after the first request),
fms_bucketed_graphs (all it compiled over the sweep), fms_bucketed_padded_shapes (distinct
padded shapes summed over its regions: the graphs the policy predicts); bucket_padding_max_rel
(max |unpadded - bucketed| / max |unpadded| of the prefill logits over the sweep);
adapter_switch_recompiles (= fms_adapter_switch_recompiles).

Usage: python experiments/census.py [--out results] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounterWithBackend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from granite_fms.provenance import REPO, one_line, provenance  # noqa: E402

RECOMPILE_LIMIT = 64
FRAMES_PER_SECOND = 50
MAX_CACHE_LEN = 512  # HF StaticCache length (the tiny text model's max_position_embeddings)
NEW_TOKENS = 4  # per request of the Generator sweep (sets its static cache length bucket)
COMPILE_TIMED = ("hf_forward", "fms_forward")


@dataclasses.dataclass(frozen=True)
class Request:
    """Clips (seconds of audio, one row each) and a text suffix length in tokens."""

    seconds: tuple[float, ...]
    suffix: int


SWEEP = [
    Request((0.5,), 2),
    Request((1.3,), 6),
    Request((2.9, 1.3), 11),
    Request((4.7,), 17),
    Request((7.5, 2.9, 0.5), 4),
    Request((11,), 9),
    Request((17, 4.7, 11, 0.5), 14),
    Request((23,), 20),
    Request((30,), 3),
]
QUICK_SWEEP = [Request((0.5,), 2), Request((4.7, 1.3), 17), Request((30,), 3)]
# Steady state: after the sweep, new audio and prompt lengths close to the sweep's (the same
# batch sizes, so for the Generator the same buckets): what a warmed-up server still compiles.
SECOND_SWEEP = [
    Request((0.6,), 3),
    Request((1.2,), 5),
    Request((2.8, 1.4), 10),
    Request((4.6,), 16),
    Request((7.3, 2.7, 0.6), 5),
    Request((10.6,), 8),
    Request((16.5, 4.5, 10.5, 0.7), 13),
    Request((22,), 19),
    Request((29.5,), 4),
]
QUICK_SECOND_SWEEP = [Request((0.6,), 3), Request((4.6, 1.2), 16)]


@dataclasses.dataclass
class Inputs:
    """One request in both conventions."""

    features: torch.Tensor  # (B, T, 160), zero after each clip
    frame_mask: torch.Tensor  # (B, T): FMS's mask, over encoder frames
    proj_mask: torch.Tensor  # (B, N): HF's input_features_mask, over projector outputs
    input_ids: torch.Tensor  # (B, S)
    counts: torch.Tensor  # (B,) placeholders per clip


def make_inputs(request: Request, fm, gen: torch.Generator) -> Inputs:
    frames = [round(s * FRAMES_PER_SECOND) for s in request.seconds]
    features = torch.zeros(len(frames), max(frames), 160)
    frame_mask = torch.zeros(len(frames), max(frames), dtype=torch.bool)
    for i, n in enumerate(frames):
        features[i, :n] = torch.randn(n, 160, generator=gen)
        frame_mask[i, :n] = True
    counts = fm.audio_token_counts(frame_mask)
    proj_mask = torch.arange(int(counts.max()))[None, :] < counts[:, None]
    audio_id, longest = fm.config.audio_token_index, int(counts.max())
    ids = [
        [1, 5, 6, *[audio_id] * n, *[7 + j % 50 for j in range(request.suffix + longest - n)]]
        for n in counts.tolist()
    ]
    return Inputs(features, frame_mask, proj_mask, torch.tensor(ids), counts)


@dataclasses.dataclass
class Region:
    """A function to compile and how to build its arguments for a request."""

    key: str
    impl: str
    region: str
    entry: str
    fn: Callable
    args: Callable[[Inputs], tuple]


def _where(frame) -> str:
    path = Path(frame.filename)
    parts = path.parts
    if "site-packages" in parts:
        short = "/".join(parts[parts.index("site-packages") + 1 :])
    elif path.is_relative_to(REPO):
        short = str(path.relative_to(REPO))
    else:
        short = path.name
    return f"{short}:{frame.lineno} {frame.name}: `{(frame.line or '').strip()}`"


def break_reason(reason) -> str:
    """First line of a graph-break reason, its debug context, and the innermost user frame."""
    lines = reason.reason.strip().splitlines()
    context = [ln.split(":", 1)[1].strip() for ln in lines if "Developer debug context" in ln]
    head = lines[0] + (f" ({context[0]})" if context and context[0] else "")
    return f"{head} at {_where(reason.user_stack[-1])}" if reason.user_stack else head


class LimitHits(logging.Handler):
    """Counts Dynamo's "hit config.recompile_limit" warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "hit config." in record.getMessage():
            self.count += 1


class Counter(CompileCounterWithBackend):
    """Graphs compiled (eager backend) and, per frame, its compiles: what recompile_limit caps."""

    def __init__(self):
        super().__init__("eager")
        self.per_frame: dict[int, int] = {}

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        compile_id = torch._guards.CompileContext.current_compile_id()
        if compile_id is not None:
            self.per_frame[compile_id.frame_id] = compile_id.frame_compile_id + 1
        return super().__call__(gm, example_inputs)

    @property
    def max_per_frame(self) -> int:
        return max(self.per_frame.values(), default=0)


def hf_regions(hf) -> list[Region]:
    from transformers import DynamicCache, StaticCache

    text_config = hf.config.text_config
    model = hf.model

    def encoder(x):
        return model.encoder(x).last_hidden_state

    def audio_path(ids, x, proj_mask):
        audio = model.get_audio_features(x).pooler_output
        return model.get_merged_audio_embeddings(ids, audio, proj_mask)

    def lm(embeds=None, ids=None, cache=None):
        return hf(input_ids=ids, inputs_embeds=embeds, past_key_values=cache, use_cache=True).logits

    def prefilled(i: Inputs, cache):
        lm(embeds=audio_path(i.input_ids, i.features, i.proj_mask), cache=cache)
        return cache

    def step(i: Inputs) -> torch.Tensor:
        return torch.full((i.input_ids.shape[0], 1), 9)

    return [
        Region("hf_encoder", "hf", "encoder", "model.model.encoder(x)", encoder,
               lambda i: (i.features,)),
        Region("hf_projector", "hf", "projector", "model.model.projector(enc)", model.projector,
               lambda i: (encoder(i.features),)),
        Region("hf_merge", "hf", "merge",
               "model.model.get_merged_audio_embeddings(ids, audio, input_features_mask)",
               model.get_merged_audio_embeddings,
               lambda i: (i.input_ids, model.get_audio_features(i.features).pooler_output,
                          i.proj_mask)),
        Region("hf_audio_path", "hf", "audio_path",
               "get_merged_audio_embeddings(ids, get_audio_features(x), input_features_mask)",
               audio_path, lambda i: (i.input_ids, i.features, i.proj_mask)),
        Region("hf_prefill", "hf", "prefill",
               "model(inputs_embeds=embeds, past_key_values=DynamicCache(), use_cache=True)",
               lambda e, c: lm(embeds=e, cache=c),
               lambda i: (audio_path(i.input_ids, i.features, i.proj_mask),
                          DynamicCache(config=text_config))),
        Region("hf_decode", "hf", "decode",
               "model(input_ids=tok, past_key_values=prefilled DynamicCache, use_cache=True)",
               lambda t, c: lm(ids=t, cache=c),
               lambda i: (step(i), prefilled(i, DynamicCache(config=text_config)))),
        Region("hf_prefill_static", "hf", "prefill",
               f"model(inputs_embeds=embeds, past_key_values=StaticCache({MAX_CACHE_LEN}), "
               "use_cache=True)",
               lambda e, c: lm(embeds=e, cache=c),
               lambda i: (audio_path(i.input_ids, i.features, i.proj_mask),
                          StaticCache(config=text_config, max_cache_len=MAX_CACHE_LEN))),
        Region("hf_decode_static", "hf", "decode",
               "model(input_ids=tok, past_key_values=prefilled StaticCache, use_cache=True)",
               lambda t, c: lm(ids=t, cache=c),
               lambda i: (step(i), prefilled(
                   i, StaticCache(config=text_config, max_cache_len=MAX_CACHE_LEN)))),
        Region("hf_forward", "hf", "forward",
               "model(input_ids=ids, input_features=x, input_features_mask=mask)",
               lambda ids, x, m: hf(input_ids=ids, input_features=x, input_features_mask=m).logits,
               lambda i: (i.input_ids, i.features, i.proj_mask)),
    ]  # fmt: skip


def fms_regions(fm) -> list[Region]:
    def positions(ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        return torch.arange(start, start + ids.shape[1]).expand(ids.shape[0], -1)

    def embeds(i: Inputs) -> torch.Tensor:
        return fm.embed_audio_and_text(i.input_ids, i.features, i.frame_mask)

    def decode_args(i: Inputs) -> tuple:
        _, cache = fm(embeds(i), position_ids=positions(i.input_ids), use_cache=True)
        tok = torch.full((i.input_ids.shape[0], 1), 9)
        return tok, positions(tok, i.input_ids.shape[1]), cache

    return [
        Region("fms_encoder", "fms", "encoder", "fm.encoder(x, frame_mask)", fm.encoder,
               lambda i: (i.features, i.frame_mask)),
        Region("fms_projector", "fms", "projector", "fm.projector(enc)", fm.projector,
               lambda i: (fm.encoder(i.features, i.frame_mask),)),
        Region("fms_merge", "fms", "merge", "fm.merge_audio(ids, audio, frame_mask)",
               fm.merge_audio,
               lambda i: (i.input_ids, fm.audio_embeddings(i.features, i.frame_mask),
                          i.frame_mask)),
        Region("fms_audio_path", "fms", "audio_path", "fm.embed_audio_and_text(ids, x, mask)",
               fm.embed_audio_and_text, lambda i: (i.input_ids, i.features, i.frame_mask)),
        Region("fms_prefill", "fms", "prefill",
               "fm(embeds, position_ids=pos, use_cache=True) (FMS cache, grows by cat)",
               lambda e, p: fm(e, position_ids=p, use_cache=True),
               lambda i: (embeds(i), positions(i.input_ids))),
        Region("fms_decode", "fms", "decode",
               "fm(tok, position_ids=pos, past_key_value_states=cache, use_cache=True)",
               lambda t, p, c: fm(t, position_ids=p, past_key_value_states=c, use_cache=True),
               decode_args),
        Region("fms_forward", "fms", "forward",
               "fm(ids, input_features=x, input_features_mask=mask)",
               lambda ids, x, m: fm(ids, input_features=x, input_features_mask=m),
               lambda i: (i.input_ids, i.features, i.frame_mask)),
    ]  # fmt: skip


def static_facts(fn: Callable, args: tuple) -> dict:
    """Graphs, breaks and reasons from `explain`; whether fullgraph=True compiles."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    torch._dynamo.reset()
    error = None
    try:
        torch.compile(fn, fullgraph=True, backend="eager")(*args)
    except Exception as exc:  # noqa: BLE001  (any failure to compile is the finding)
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return {
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "break_reasons": list(dict.fromkeys(break_reason(r) for r in explained.break_reasons)),
        "fullgraph_ok": error is None,
        "fullgraph_error": error,
    }


def measure(region: Region, sweep: list[Inputs], second: list[Inputs], hits: LimitHits) -> dict:
    t0 = time.perf_counter()
    row = {"key": region.key, "impl": region.impl, "region": region.region, "entry": region.entry}
    row.update(static_facts(region.fn, region.args(sweep[0])))
    torch._dynamo.reset()
    counter = Counter()
    compiled = torch.compile(region.fn, backend=counter)
    hits.count = 0
    compiled(*region.args(sweep[0]))
    warm = counter.frame_count
    for inputs in sweep[1:]:
        compiled(*region.args(inputs))
    after_sweep = counter.frame_count
    for inputs in second:
        compiled(*region.args(inputs))
    row.update(
        graphs_first_call=warm,
        recompiles_over_sweep=after_sweep - warm,
        recompiles_second_sweep=counter.frame_count - after_sweep,
        max_compiles_per_frame=counter.max_per_frame,
        recompile_limit_hits=hits.count,
        recompile_limit=torch._dynamo.config.recompile_limit,
        sweep_calls=len(sweep),
        compile_s=None,
    )
    if region.key in COMPILE_TIMED:
        torch._dynamo.reset()
        t1 = time.perf_counter()
        torch.compile(region.fn)(*region.args(sweep[0]))
        row["compile_s"] = round(time.perf_counter() - t1, 2)
    row["census_s"] = round(time.perf_counter() - t0, 1)
    return row


def adapter_rows(hf, fm, hits: LimitHits) -> list[dict]:
    """A text-only forward compiled once, the adapter switched on/off/on/off between calls."""
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])

    def hf_switch(on: bool) -> None:
        hf.enable_adapters() if on else hf.disable_adapters()

    def fms_switch(on: bool) -> None:
        fm.set_adapter("on" if on else "off")

    cases = [
        ("hf", "model(input_ids=ids).logits; peft enable_adapters() / disable_adapters()",
         lambda x: hf(input_ids=x).logits, hf_switch),
        ("fms", 'fm(ids); fm.set_adapter("on" / "off"), a 0-dim scale buffer', fm, fms_switch),
    ]  # fmt: skip
    rows = []
    for impl, entry, fn, switch in cases:
        t0 = time.perf_counter()
        switch(True)
        row = {"key": f"{impl}_adapter_switch", "impl": impl, "region": "adapter_switch"}
        row.update(entry=entry, **static_facts(fn, (ids,)))
        torch._dynamo.reset()
        counter = Counter()
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
            recompiles_over_sweep=counter.frame_count - warm,
            max_compiles_per_frame=counter.max_per_frame,
            recompile_limit_hits=hits.count,
            recompile_limit=torch._dynamo.config.recompile_limit,
            sweep_calls=len(outs),
            compile_s=None,
            switch_changes_output=not torch.allclose(outs[0], outs[1]),
            census_s=round(time.perf_counter() - t0, 1),
        )
        rows.append(row)
    return rows


GEN_REGIONS = {
    "embed": ("audio_path", "gen.embed(ids, features, frame_mask) = fm.embed_audio_and_text, "
                            "bucketed shapes"),
    "prefill": ("prefill", "gen.prefill(embeds, position_ids, cache, cache_position, key_valid), "
                           "static KV cache"),
    "decode": ("decode", "gen.decode(token, position, cache, slot, key_valid), static KV cache"),
}  # fmt: skip


def instrument(gen, hook: Callable) -> None:
    """Route the Generator's region calls through `hook(name, fn, *args)`."""
    for name in GEN_REGIONS:
        setattr(gen, name, functools.partial(hook, name, getattr(gen, name)))


def run_generate(gen, inputs: Inputs) -> None:
    from granite_fms.features import AudioFeatures

    audio = AudioFeatures(inputs.features, inputs.frame_mask, inputs.counts)
    gen.generate(list(inputs.input_ids), audio, max_new_tokens=NEW_TOKENS)


def generator_rows(
    fm, sweep: list[Inputs], second: list[Inputs], hits: LimitHits
) -> tuple[list[dict], float]:
    """The recommended path (`Generator`, default `BucketPolicy`) over the sweep: a row per
    region, one for `generate`, and the padding check (max relative error of the logits)."""
    from granite_fms.generation import Generator

    t0 = time.perf_counter()
    rows: dict[str, dict] = {}

    def explain(name: str, fn: Callable, *args):
        if name not in rows:
            region, entry = GEN_REGIONS[name]
            rows[name] = {"key": f"fms_gen_{name}", "impl": "fms", "region": region}
            rows[name].update(entry=entry, **static_facts(fn, args))
        return fn(*args)

    eager = Generator(fm, compile=False)
    instrument(eager, explain)
    run_generate(eager, sweep[0])

    torch._dynamo.reset()
    counter = Counter()
    compiled: dict[str, list[int]] = {name: [] for name in GEN_REGIONS}  # per request
    shapes: dict[str, set] = {name: set() for name in GEN_REGIONS}
    limit_hits = dict.fromkeys(GEN_REGIONS, 0)
    prefill_logits: list[torch.Tensor] = []

    def count(name: str, fn: Callable, *args):
        before, hits_before = counter.frame_count, hits.count
        out = fn(*args)
        compiled[name][-1] += counter.frame_count - before
        limit_hits[name] += hits.count - hits_before
        shapes[name].add(tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        if name == "prefill":
            prefill_logits.append(out)
        return out

    gen = Generator(fm, backend=counter)
    instrument(gen, count)
    max_rel = 0.0
    for inputs in sweep:
        for counts in compiled.values():
            counts.append(0)
        run_generate(gen, inputs)
        ref = fm(inputs.input_ids, input_features=inputs.features,
                 input_features_mask=inputs.frame_mask)[:, -1]  # fmt: skip
        out = prefill_logits[-1][: ref.shape[0]]
        max_rel = max(max_rel, float((out - ref).abs().max() / ref.abs().max()))
    after_sweep = counter.frame_count
    for inputs in second:
        run_generate(gen, inputs)
    second_compiles = counter.frame_count - after_sweep
    seconds = round((time.perf_counter() - t0) / len(GEN_REGIONS), 1)
    for name, row in rows.items():
        row.update(
            graphs_first_call=compiled[name][0],
            recompiles_over_sweep=sum(compiled[name][1:]),
            recompiles_second_sweep=None,
            max_compiles_per_frame=sum(compiled[name]),  # fullgraph: one frame per region
            recompile_limit_hits=limit_hits[name],
            recompile_limit=torch._dynamo.config.recompile_limit,
            sweep_calls=len(sweep),
            padded_shapes=len(shapes[name]),
            compile_s=None,
            census_s=seconds,
        )
    warm = sum(counts[0] for counts in compiled.values())
    generate = {
        "key": "fms_gen_generate",
        "impl": "fms",
        "region": "generate",
        "entry": f"gen.generate(ids, features, max_new_tokens={NEW_TOKENS}): the three regions, "
        "each torch.compile(fullgraph=True), which raises on any graph break",
        "graphs": warm,
        "graph_breaks": 0,
        "break_reasons": [],
        "fullgraph_ok": True,
        "fullgraph_error": None,
        "graphs_first_call": warm,
        "recompiles_over_sweep": after_sweep - warm,
        "recompiles_second_sweep": second_compiles,
        "max_compiles_per_frame": counter.max_per_frame,
        "recompile_limit_hits": sum(limit_hits.values()),
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "sweep_calls": len(sweep),
        "padded_shapes": sum(len(s) for s in shapes.values()),
        "compile_s": None,
        "census_s": None,
    }
    return [*rows.values(), generate], max_rel


def evidence_of(
    rows: list[dict], sweep_calls: int, padding_max_rel: float, default_limit: int
) -> dict:
    """Flat keys for the docs (see the module docstring)."""
    out: dict = {
        "recompile_limit": RECOMPILE_LIMIT,
        "default_recompile_limit": default_limit,
        "sweep_calls": sweep_calls,
    }
    for row in rows:
        k = row["key"]
        out[f"{k}_graphs"] = row["graphs"]
        out[f"{k}_graph_breaks"] = row["graph_breaks"]
        out[f"{k}_fullgraph_ok"] = row["fullgraph_ok"]
        out[f"{k}_recompiles"] = row["recompiles_over_sweep"]
        if row.get("recompiles_second_sweep") is not None:
            out[f"{k}_recompiles_second_sweep"] = row["recompiles_second_sweep"]
        out[f"{k}_max_compiles_per_frame"] = row["max_compiles_per_frame"]
        if row["compile_s"] is not None:
            out[f"{k}_compile_s"] = row["compile_s"]
    by_key = {row["key"]: row for row in rows}
    out["hf_forward_break_sites"] = len(by_key["hf_forward"]["break_reasons"])
    for impl in ("hf", "fms"):
        side = [row for row in rows if row["impl"] == impl]
        out[f"{impl}_recompile_limit_hits"] = sum(row["recompile_limit_hits"] for row in side)
        out[f"{impl}_exceeds_default_recompile_limit"] = any(
            row["max_compiles_per_frame"] > default_limit for row in side
        )
    generate = by_key["fms_gen_generate"]
    out["fms_bucketed_recompiles"] = generate["recompiles_over_sweep"]
    out["fms_bucketed_graphs"] = generate["graphs_first_call"] + generate["recompiles_over_sweep"]
    out["fms_bucketed_padded_shapes"] = generate["padded_shapes"]
    out["bucket_padding_max_rel"] = padding_max_rel
    out["adapter_switch_recompiles"] = by_key["fms_adapter_switch"]["recompiles_over_sweep"]
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return str(value)


def markdown(report: dict) -> str:
    sweep = report["sweep"]
    requests = "; ".join(
        f"{'+'.join(f'{s:g}' for s in r['seconds'])} s, suffix {r['suffix']}"
        for r in sweep["requests"]
    )
    cores = report["provenance"]["device"]["cpu_affinity"] or 1
    shared = report["load_average"][0] > cores
    warning = " (**the machine was shared: compile times are inflated**)" if shared else ""
    lines = [
        "# Graph-break census: Hugging Face transformers vs granite-fms",
        "",
        f"Provenance: {one_line(report['provenance'])}",
        "",
        f"Generated by `experiments/census.py{' --quick' if report['quick'] else ''}` in "
        f"{report['runtime_s']:.0f} s (full JSON: `census.json`), load average "
        f"{report['load_average'][0]:.2f} at start and {report['load_average_end'][0]:.2f} at end "
        f"on {cores} cores{warning}. "
        f"{report['checkpoint']}",
        "",
        "- graphs / breaks / reasons: `torch._dynamo.explain` on the first request of the sweep.",
        '- fullgraph: `torch.compile(fn, fullgraph=True, backend="eager")` on that request. With '
        "`fullgraph=True`, Dynamo traces data-dependent ops (boolean-mask indexing, `.item()`) "
        "with unbacked sizes instead of breaking, so a region that breaks under the default "
        "`torch.compile` can still pass here.",
        "- recompiles over sweep: graphs compiled after the first request by `torch.compile(fn)` "
        '(default dynamic-shape settings) with a `CompileCounterWithBackend("eager")`, '
        f"`recompile_limit` raised to {RECOMPILE_LIMIT} from its default "
        f"{report['evidence']['default_recompile_limit']} (the Generator raises it further for "
        "its own regions, to its policy's bound); limit hits: Dynamo's warnings that it hit the "
        "limit; max compiles / frame: the most compiles of one code object, which is what the "
        "limit caps.",
        f"- sweep ({len(sweep['requests'])} requests, one clip per row, rows padded with text "
        f"to equal length): {requests}. The adapter rows instead alternate the LoRA adapter "
        "on/off/on/off over four calls of one text-only prompt.",
        "- `fms_gen_*`: `granite_fms.generation.Generator` (default `BucketPolicy`) over the same "
        f"sweep through `generate` ({sweep['generator_new_tokens']} new tokens), its regions "
        "compiled by the Generator (fullgraph, dynamic=False) with the counter as backend; "
        "padded shapes: distinct bucketed input shapes each region saw (one graph each). "
        "Bucket padding vs the unpadded eager forward, prefill logits of the real rows: max "
        f"relative error {report['evidence']['bucket_padding_max_rel']:.3g}.",
        "- second sweep: after the sweep, graphs compiled for 9 more requests with new audio and "
        "prompt lengths close to the sweep's and the same batch sizes (for the Generator: "
        "buckets it has seen), i.e. what a warmed-up server still compiles.",
        "- compile s: wall time of the first call of `torch.compile(fn)` (Inductor, CPU, caches "
        "off), one run of the tiny model included.",
        "",
        "| impl | region | key | entry | graphs | breaks | fullgraph | recompiles over sweep "
        "| second sweep | max compiles / frame | padded shapes | limit hits | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['impl']} | {row['region']} | `{row['key']}` | `{row['entry']}` "
            f"| {row['graphs']} | {row['graph_breaks']} | {_cell(row['fullgraph_ok'])} "
            f"| {row['recompiles_over_sweep']} ({row['sweep_calls']} calls) "
            f"| {_cell(row.get('recompiles_second_sweep'))} "
            f"| {row['max_compiles_per_frame']} "
            f"| {_cell(row.get('padded_shapes'))} | {row['recompile_limit_hits']} "
            f"| {_cell(row['compile_s'])} |"
        )
    lines += ["", "## Graph-break reasons and fullgraph errors", ""]
    for row in report["rows"]:
        if not row["break_reasons"] and row["fullgraph_ok"]:
            continue
        lines += [f"### `{row['key']}`: {row['graph_breaks']} breaks", ""]
        lines += [f"- {reason}" for reason in row["break_reasons"]]
        if row["fullgraph_error"]:
            lines.append(f"- fullgraph=True: {row['fullgraph_error']}")
        lines.append("")
    lines += ["## Evidence keys", "", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in report["evidence"].items()]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results", help="output directory (default: results)")
    parser.add_argument("--quick", action="store_true", help="a shorter sweep")
    args = parser.parse_args(argv)

    import granite_fms
    from granite_fms.generation import BucketPolicy
    from granite_fms.testing import save_hf_checkpoint, tiny_hf_config

    default_limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    torch._inductor.config.force_disable_caches = True
    hits = LimitHits()
    logging.getLogger("torch._dynamo.convert_frame").addHandler(hits)
    torch.set_grad_enabled(False)
    start, load = time.perf_counter(), os.getloadavg()
    config = tiny_hf_config("3.3", encoder_config=dict(context_size=200, max_pos_emb=512))
    with tempfile.TemporaryDirectory(prefix="census-") as tmp:
        hf = save_hf_checkpoint(tmp, config, lora_rank=4, lora_alpha=8.0, seed=0)
        fm = granite_fms.load_model(tmp)
    hf.enable_adapters()
    fm.set_adapter("on")
    requests = QUICK_SWEEP if args.quick else SWEEP
    second_requests = QUICK_SECOND_SWEEP if args.quick else SECOND_SWEEP
    gen = torch.Generator().manual_seed(0)
    sweep = [make_inputs(r, fm, gen) for r in requests]
    second = [make_inputs(r, fm, gen) for r in second_requests]

    rows = []
    for region in hf_regions(hf) + fms_regions(fm):
        rows.append(measure(region, sweep, second, hits))
        print(f"{region.key}: {rows[-1]['census_s']:.1f} s", flush=True)
    rows += adapter_rows(hf, fm, hits)
    gen_rows, padding_max_rel = generator_rows(fm, sweep, second, hits)
    rows += gen_rows
    runtime = time.perf_counter() - start
    print(f"adapter and generator rows done; runtime {runtime:.0f} s", flush=True)

    report = {
        "provenance": provenance(),
        "quick": args.quick,
        "runtime_s": round(runtime, 1),
        "load_average": load,
        "load_average_end": os.getloadavg(),
        "checkpoint": (
            "Random checkpoint written by HF's classes: `tiny_hf_config('3.3')` with the "
            "released encoder context (200 frames, max_pos_emb 512), peft LoRA r=4 on q/v, "
            "adapter on, fp32, CPU."
        ),
        "sweep": {
            "frames_per_second": FRAMES_PER_SECOND,
            "requests": [{"seconds": list(r.seconds), "suffix": r.suffix} for r in requests],
            "second_sweep": [
                {"seconds": list(r.seconds), "suffix": r.suffix} for r in second_requests
            ],
            "shapes": [
                {
                    "features": list(i.features.shape),
                    "input_ids": list(i.input_ids.shape),
                    "audio_tokens": i.counts.tolist(),
                }
                for i in sweep
            ],
            "generator_new_tokens": NEW_TOKENS,
            "generator_policy": dataclasses.asdict(BucketPolicy()),
            "hf_static_cache_len": MAX_CACHE_LEN,
        },
        "rows": rows,
        "evidence": evidence_of(rows, len(sweep), padding_max_rel, default_limit),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "census.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "census.md").write_text(markdown(report))
    print(f"wrote {out / 'census.json'} and {out / 'census.md'}; runtime {runtime:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
