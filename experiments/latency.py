"""Latency of Granite Speech: FMS (eager, compiled) vs Hugging Face (eager, compiled), per stage.

Modes, all on the same weights in one process:

* `hf_eager`: `transformers` `generate` with its default dynamic cache;
* `hf_compiled`: `transformers`' recommended compiled generation (5.x): `generate(...,
  cache_implementation="static", compile_config=CompileConfig(...))`, which compiles the
  forward of the decode steps (prefill, audio encoder, projector and merge stay eager);
  CompileConfig defaults on a GPU (mode "reduce-overhead"), mode "default" forced onto a CPU;
* `fms_eager`: `SpeechPipeline.generate_ids` (`fms.utils.generation.generate`, FMS's
  `torch.cat` KV cache);
* `fms_compiled`: `granite_fms.generation.Generator` (bucketed shapes, static KV cache, audio
  path, prefill and decode step each one fullgraph Inductor graph);
* `fms_compiled_cudagraphs` (GPU only): the same with the decode step in CUDA graphs.

Stages: features (raw waveform -> log-mel), encoder, projector, merge, audio path (the three
in one call, as each mode runs them), prefill (LLM over the merged prompt, cache written),
decode (one iteration of the mode's own generation loop, from synchronised per-token
timestamps), e2e (waveforms -> a fixed number of greedy tokens, EOS disabled), first and
second e2e call (warm-up, compile included), peak memory of one e2e call.

CPU: the built-in `tiny` variant (HF checkpoint of the same shapes written by HF's own classes,
loaded both ways) and the real 3.3 encoder + projector shapes (random weights). GPU (when
CUDA is available): 3.3-2b and 3.3-8b shapes, bf16, random weights, with the memory-bandwidth
floor of a decode step. Ablations are measured in the same run. Rows from a run on the other
kind of device in an existing latency.json are kept (see --no-merge).

Usage: python experiments/latency.py [--out results] [--quick] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity import REAL_ENCODER, REAL_PROJECTOR  # noqa: E402
from timing import (  # noqa: E402
    PeakMemory,
    Stamps,
    Task,
    copy_bandwidth_gbs,
    run_round_robin,
    summarize,
    timed,
    timed_result,
)

from granite_fms.provenance import one_line, provenance  # noqa: E402

SAMPLE_RATE = 16000
AUDIO_ID = 49159
# Shapes of the built-in `tiny` variant (granite_speech._tiny_config) as a transformers config.
TINY_VARIANT_ENCODER = dict(
    num_layers=4,
    hidden_dim=256,
    num_heads=4,
    dim_head=64,
    output_dim=64,
    context_size=200,
    max_pos_emb=512,
    conv_kernel_size=15,
    conv_expansion_factor=2,
    feedforward_mult=4,
)
TINY_VARIANT_PROJECTOR = dict(
    hidden_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=1024,
    encoder_hidden_size=256,
)
TINY_VARIANT_TEXT = dict(
    vocab_size=49160,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    embedding_multiplier=12.0,
    residual_multiplier=0.22,
    attention_multiplier=1 / 64,
    logits_scaling=8.0,
)
REAL_TEXT = {
    "3.3-2b": dict(hidden_size=2048, intermediate_size=8192, attention_multiplier=1 / 64),
    "3.3-8b": dict(hidden_size=4096, intermediate_size=12800, attention_multiplier=1 / 128),
}
REAL_LOGITS_SCALING = {"3.3-2b": 8.0, "3.3-8b": 16.0}

PROMPT_PREFIX = 12  # text tokens before the audio placeholder (a chat-template-sized prefix)
PROMPT_SUFFIX = 8  # instruction tokens after it
STAGES = [
    "features",
    "encoder",
    "projector",
    "merge",
    "audio_path",
    "prefill",
    "decode",
    "decode_call",
    "e2e",
]
CPU_MODES = ["hf_eager", "hf_compiled", "fms_eager", "fms_compiled"]
GPU_MODES = [*CPU_MODES, "fms_compiled_cudagraphs"]


@dataclass
class Settings:
    """What one run measures (the full run, --quick, CPU or GPU)."""

    workloads: list[tuple[int, int]]  # (audio seconds, batch); the first is the warm-up target
    new_tokens: int
    stage_reps: tuple[int, int, float]  # min, max, budget seconds per stage
    e2e_reps: tuple[int, int, float]
    decode_runs: tuple[int, int, float]
    real_encoder_seconds: list[int]  # eager encoder + projector at the real 3.3 shapes


FULL_CPU = Settings(
    workloads=[(10, 1), (3, 1), (30, 1), (10, 4)],
    new_tokens=32,
    stage_reps=(3, 15, 1.5),
    e2e_reps=(3, 8, 4.0),
    decode_runs=(2, 3, 2.0),
    real_encoder_seconds=[3],
)
QUICK_CPU = Settings(
    workloads=[(3, 1)],
    new_tokens=8,
    stage_reps=(2, 3, 0.5),
    e2e_reps=(2, 3, 1.0),
    decode_runs=(1, 1, 0.0),
    real_encoder_seconds=[3],
)
FULL_GPU = Settings(
    workloads=[(10, 1), (3, 1), (30, 1), (10, 4)],
    new_tokens=128,
    stage_reps=(5, 20, 0.5),
    e2e_reps=(3, 5, 4.0),
    decode_runs=(2, 2, 0.0),
    real_encoder_seconds=[],
)
QUICK_GPU = Settings(
    workloads=[(10, 1)],
    new_tokens=32,
    stage_reps=(3, 5, 0.5),
    e2e_reps=(2, 3, 2.0),
    decode_runs=(1, 2, 1.0),
    real_encoder_seconds=[],
)


# ----- models: one set of random weights, loaded by transformers and by FMS -----------------


def tiny_variant_hf_config():
    """transformers config with the shapes of the built-in `tiny` variant."""
    from granite_fms.testing import tiny_hf_config

    return tiny_hf_config(
        "3.3",
        encoder_config=TINY_VARIANT_ENCODER,
        projector_config=TINY_VARIANT_PROJECTOR,
        text_config=TINY_VARIANT_TEXT,
        audio_token_index=AUDIO_ID,
    )


def real_hf_config(name: str):
    """transformers config with the shapes of granite-speech-3.3-2b / -8b."""
    from granite_fms.testing import tiny_hf_config

    text = dict(
        REAL_TEXT[name],
        vocab_size=49160,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        logits_scaling=REAL_LOGITS_SCALING[name],
    )
    return tiny_hf_config(
        "3.3",
        encoder_config=REAL_ENCODER,
        projector_config=REAL_PROJECTOR,
        text_config=text,
        audio_token_index=AUDIO_ID,
    )


def same_shapes(ours, variant) -> bool:
    """FMS config equal to a registered variant's, up to names that do not change shapes."""
    ignore = {"pad_id", "activation_fn", "max_expected_seq_len"}

    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in ignore}

    return strip(ours.as_dict()) == strip(variant.as_dict())


def tiny_models(path: Path, seed: int = 0):
    """The tiny variant's shapes: checkpoint written by HF (with a peft LoRA r=16, alpha=8, as
    the variant), loaded by transformers and by `granite_fms.load_model`."""
    import granite_fms
    from granite_fms.granite_speech import _tiny_config
    from granite_fms.testing import save_hf_checkpoint

    hf = save_hf_checkpoint(path, tiny_variant_hf_config(), lora_rank=16, lora_alpha=8.0, seed=seed)
    fm = granite_fms.load_model(path)
    if not same_shapes(fm.config, _tiny_config):
        raise RuntimeError("the HF checkpoint does not have the tiny variant's shapes")
    return hf.requires_grad_(False), fm.requires_grad_(False)


def in_memory_models(
    hf_config, device: torch.device, dtype: torch.dtype, lora: tuple[int, float] | None
):
    """HF model with HF's random init (+ a random peft LoRA on q/v) and FMS's model built from
    its state dict through the registered HF adapter; nothing is written to disk."""
    from fms.utils import serialization
    from transformers import GraniteSpeechForConditionalGeneration

    from granite_fms.checkpoint import fms_config_from_hf
    from granite_fms.granite_speech import GraniteSpeech

    torch.manual_seed(0)
    with torch.device(device):
        hf = GraniteSpeechForConditionalGeneration._from_config(hf_config, dtype=dtype)
    config = fms_config_from_hf(hf.config)
    if lora is not None:
        from peft import LoraConfig

        hf.add_adapter(
            LoraConfig(
                r=lora[0],
                lora_alpha=lora[1],
                target_modules=["q_proj", "v_proj"],
                init_lora_weights=False,
            )
        )
        config = config.updated(lora_rank=lora[0], lora_alpha=lora[1])
    hf = hf.to(device=device, dtype=dtype).eval().requires_grad_(False)
    state = serialization.get_adapted(
        "granite_speech", "hf", dict(hf.state_dict()), {"model_config": config}
    )
    with torch.device("meta"):
        fm = GraniteSpeech(config)
    fm.load_state_dict(state, strict=False, assign=True)
    fm.post_init()
    return hf, fm.eval().requires_grad_(False)


# ----- workloads and the modes' stage functions ---------------------------------------------


@dataclass
class Workload:
    audio_s: int
    batch: int
    waves: list[torch.Tensor]  # raw 16 kHz clips, all of the same length
    prompt: list[int]  # unexpanded: one audio placeholder
    new_tokens: int

    @property
    def label(self) -> str:
        return f"{self.audio_s}s_b{self.batch}"


def make_workload(audio_s: int, batch: int, new_tokens: int) -> Workload:
    gen = torch.Generator().manual_seed(1000 * audio_s + batch)
    waves = [0.1 * torch.randn(audio_s * SAMPLE_RATE, generator=gen) for _ in range(batch)]
    text = torch.randint(1, AUDIO_ID, (PROMPT_PREFIX + PROMPT_SUFFIX,), generator=gen).tolist()
    prompt = text[:PROMPT_PREFIX] + [AUDIO_ID] + text[PROMPT_PREFIX:]
    return Workload(audio_s, batch, waves, prompt, new_tokens)


def expand(prompt: list[int], count: int) -> torch.Tensor:
    """The prompt with its one placeholder expanded to `count` audio tokens (the processor's)."""
    from granite_fms.processor import GraniteSpeechProcessor

    return GraniteSpeechProcessor.expand_audio_token_ids(prompt, AUDIO_ID, int(count))


def _task(fn: Callable, reps: tuple[int, int, float], setup=None, inner: bool = False) -> Task:
    return Task(fn, setup, inner, *reps)


# A mode, for one workload: its e2e function (called first: its first call is the cold start)
# and a builder of its stage tasks (called after the warm-up).
ModeSetup = tuple[Callable[[], list[list[int]]], Callable[[], dict[str, Task]]]


def hf_mode(hf, w: Workload, compiled: bool, s: Settings) -> ModeSetup:
    """transformers' path; `compiled`: static cache + the auto-compiled decode forward."""
    from transformers import (
        CompileConfig,
        GraniteSpeechFeatureExtractor,
        LogitsProcessor,
        LogitsProcessorList,
        StaticCache,
    )

    device, dtype = hf.device, hf.dtype
    extractor = GraniteSpeechFeatureExtractor()
    feats = extractor(w.waves)
    ids = torch.stack([expand(w.prompt, n) for n in feats["audio_embed_sizes"]]).to(device)
    hf.generation_config.eos_token_id = None  # a fixed number of new tokens
    gen_kwargs: dict = dict(
        max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens, do_sample=False, pad_token_id=0
    )
    if compiled:
        config = CompileConfig() if device.type == "cuda" else CompileConfig(mode="default")
        config._compile_all_devices = device.type != "cuda"  # HF compiles on accelerators only
        gen_kwargs.update(cache_implementation="static", compile_config=config)

    def e2e(processors=None) -> list[list[int]]:
        f = extractor(w.waves)
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            input_features=f["input_features"].to(device, dtype),
            input_features_mask=f["input_features_mask"].to(device),
            logits_processor=processors,
            **gen_kwargs,
        )
        return out[:, ids.shape[1] :].tolist()

    class Stamp(LogitsProcessor):
        def __init__(self, stamps: Stamps):
            self.stamps = stamps

        def __call__(self, input_ids, scores):
            self.stamps()
            return scores

    def decode_intervals() -> list[float]:
        stamps = Stamps(device)
        e2e(LogitsProcessorList([Stamp(stamps)]))
        return stamps.intervals()

    def stages() -> dict[str, Task]:
        x = feats["input_features"].to(device, dtype)
        mask = feats["input_features_mask"].to(device)
        hf.enable_adapters()  # as HF's generate does for requests with audio
        enc = hf.model.encoder(x).last_hidden_state
        proj = hf.model.projector(enc)
        merged = hf.model.get_merged_audio_embeddings(ids, proj, mask)

        def audio_path():
            audio = hf.model.projector(hf.model.encoder(x).last_hidden_state)
            return hf.model.get_merged_audio_embeddings(ids, audio, mask)

        setup = None
        if compiled:  # this mode's generate prefills a static cache, eagerly
            cache = StaticCache(config=hf.config, max_cache_len=ids.shape[1] + w.new_tokens)
            positions = torch.arange(ids.shape[1], device=device)
            setup = cache.reset

            def prefill():
                return hf(
                    inputs_embeds=merged,
                    past_key_values=cache,
                    cache_position=positions,
                    use_cache=True,
                    logits_to_keep=1,
                )
        else:

            def prefill():
                return hf(inputs_embeds=merged, use_cache=True, logits_to_keep=1)

        r = s.stage_reps
        tasks = {
            "features": _task(lambda: extractor(w.waves)["input_features"].to(device), r),
            "encoder": _task(lambda: hf.model.encoder(x), r),
            "projector": _task(lambda: hf.model.projector(enc), r),
            "merge": _task(lambda: hf.model.get_merged_audio_embeddings(ids, proj, mask), r),
            "audio_path": _task(audio_path, r),
            "prefill": _task(prefill, r, setup),
            "decode": _task(decode_intervals, s.decode_runs, inner=True),
            "e2e": _task(e2e, s.e2e_reps),
        }
        if compiled:  # the same eager code as hf_eager's: timed there only
            del tasks["encoder"], tasks["projector"], tasks["merge"]
        return tasks

    return e2e, stages


def fms_inputs(fm, w: Workload):
    """Features, expanded prompt rows, and the padded ids + padding kwargs of the eager path."""
    from fms.utils.generation import pad_input_ids

    from granite_fms.features import GraniteSpeechFeatureExtractor

    device = fm.language_model.base_model.embedding.weight.device
    feats = GraniteSpeechFeatureExtractor()(w.waves).to(device)
    rows = [expand(w.prompt, n) for n in feats.audio_token_counts]
    ids, padding = pad_input_ids([r.to(device) for r in rows])
    return feats, rows, ids, padding


def fms_generate_intervals(model, fm, w: Workload) -> list[float]:
    """Per-iteration times of `fms.utils.generation.generate` (the eager pipeline's loop) on
    `model` (`fm` or a compiled wrapper of it), from timestamps after each new token."""
    from fms.utils.generation import generate

    feats, _, ids, padding = fms_inputs(fm, w)
    stamps = Stamps(ids.device)

    def hook(position, logits, next_val, kwargs):
        stamps()
        return next_val, kwargs

    generate(
        model,
        ids,
        max_seq_len=ids.shape[1] + w.new_tokens,
        max_new_tokens=w.new_tokens,
        do_sample=False,
        use_cache=True,
        prepare_model_inputs_hook=fm.prepare_inputs_for_generation,
        post_iteration_hook=hook,
        extra_kwargs={**feats.as_dict(), **padding},
    )
    return stamps.intervals()


def fms_eager_mode(fm, w: Workload, s: Settings) -> ModeSetup:
    """`SpeechPipeline.generate_ids`, eager (FMS's generate and KV cache)."""
    from granite_fms.features import GraniteSpeechFeatureExtractor
    from granite_fms.pipeline import SpeechPipeline

    pipe = SpeechPipeline(fm)  # no tokenizer: token ids in and out, no EOS
    extractor = GraniteSpeechFeatureExtractor()
    dtype = pipe.dtype

    def e2e() -> list[list[int]]:
        return pipe.generate_ids(w.waves, prompt_ids=w.prompt, max_new_tokens=w.new_tokens)

    def stages() -> dict[str, Task]:
        feats, _, ids, padding = fms_inputs(fm, w)
        x, mask = feats.input_features, feats.input_features_mask
        fm.start_request(True)
        enc = fm.encoder(x.to(dtype), mask)
        proj = fm.projector(enc)
        merged = fm.merge_audio(ids, proj, mask)

        def prefill():
            return fm(
                merged,
                position_ids=padding["position_ids"],
                mask=padding["mask"],
                past_key_value_states=None,
                use_cache=True,
            )

        r = s.stage_reps
        return {
            "features": _task(lambda: extractor(w.waves).to(pipe.device), r),
            "encoder": _task(lambda: fm.encoder(x.to(dtype), mask), r),
            "projector": _task(lambda: fm.projector(enc), r),
            "merge": _task(lambda: fm.merge_audio(ids, proj, mask), r),
            "audio_path": _task(lambda: fm.embed_inputs(ids, x, mask), r),
            "prefill": _task(prefill, r),
            "decode": _task(lambda: fms_generate_intervals(fm, fm, w), s.decode_runs, inner=True),
            "e2e": _task(e2e, s.e2e_reps),
        }

    return e2e, stages


DECODE_CALLS = 16  # back-to-back decode calls per `decode_call` sample


def generator_intervals(gen, w: Workload) -> list[float]:
    """Per-iteration times of `Generator.generate`, from timestamps after each region call."""
    from granite_fms.features import GraniteSpeechFeatureExtractor

    feats = GraniteSpeechFeatureExtractor()(w.waves)
    rows = [expand(w.prompt, n) for n in feats.audio_token_counts]
    stamps = Stamps(gen.device)
    regions = gen.prefill, gen.decode

    def stamped(fn):
        def call(*args):
            out = fn(*args)
            stamps()
            return out

        return call

    gen.prefill, gen.decode = stamped(regions[0]), stamped(regions[1])
    try:
        gen.generate(rows, feats, max_new_tokens=w.new_tokens)
    finally:
        gen.prefill, gen.decode = regions
    return stamps.intervals()


def decode_step_inputs(gen, w: Workload):
    """A prepared request and the arguments of its first decode step."""
    feats, rows, _, _ = fms_inputs(gen.model, w)
    p = gen.prepare(rows, feats, w.new_tokens)
    token = torch.ones(p.input_ids.shape[0], 1, dtype=torch.long, device=gen.device)
    slot = torch.full((1,), p.prompt_len, device=gen.device)
    return p, (token, p.position_ids[:, -1:] + 1, p.cache, slot, p.key_valid)


def fms_compiled_mode(pipe, w: Workload, s: Settings) -> ModeSetup:
    """`SpeechPipeline.compile()`: `Generator` graphs for the audio path, prefill and decode."""
    from granite_fms.features import GraniteSpeechFeatureExtractor

    gen = pipe.generator
    extractor = GraniteSpeechFeatureExtractor()

    def e2e() -> list[list[int]]:
        return pipe.generate_ids(w.waves, prompt_ids=w.prompt, max_new_tokens=w.new_tokens)

    def stages() -> dict[str, Task]:
        p, step = decode_step_inputs(gen, w)
        positions = torch.arange(p.prompt_len, device=gen.device)
        gen.model.start_request(True)
        embeds = gen.embed(p.input_ids, p.features, p.frame_mask)

        def decode_calls() -> list[float]:
            """Per-call time of back-to-back decode steps (no host sync between them)."""
            seconds = timed(lambda: [gen.decode(*step) for _ in range(DECODE_CALLS)], gen.device)
            return [seconds / DECODE_CALLS]

        r = s.stage_reps
        return {
            "features": _task(lambda: extractor(w.waves).to(gen.device), r),
            "audio_path": _task(lambda: gen.embed(p.input_ids, p.features, p.frame_mask), r),
            "prefill": _task(
                lambda: gen.prefill(embeds, p.position_ids, p.cache, positions, p.key_valid), r
            ),
            "decode": _task(lambda: generator_intervals(gen, w), s.decode_runs, inner=True),
            "decode_call": _task(decode_calls, r, inner=True),
            "e2e": _task(e2e, s.e2e_reps),
        }

    return e2e, stages


# ----- measuring ------------------------------------------------------------------------------


def row(ctx: dict, mode: str, stage: str, **values) -> dict:
    return {**ctx, "mode": mode, "stage": stage, **values}


def measure_workload(
    ctx: dict, modes: dict[str, Callable[[Workload], ModeSetup]], w: Workload, device
) -> tuple[list[dict], dict[str, list[list[int]]]]:
    """Warm up every mode (first and second e2e call timed, peak memory of the second), then
    time all stages of all modes round robin. Returns rows and each mode's tokens."""
    ctx = {**ctx, "audio_s": w.audio_s, "batch": w.batch, "new_tokens": w.new_tokens}
    rows, tokens, tasks = [], {}, {}
    for mode, setup in modes.items():
        e2e, stages = setup(w)
        first = timed(e2e, device)
        with PeakMemory(device) as mem:
            second, tokens[mode] = timed_result(e2e, device)
        for stage, seconds in (("first_call", first), ("second_call", second)):
            rows.append(row(ctx, mode, stage, **summarize([seconds])))
        print(f"    {mode} {w.label}: first call {first:.1f} s, second {second:.2f} s", flush=True)
        rows.append(
            row(
                ctx,
                mode,
                "peak_memory",
                peak_mb=mem.peak_mb,
                growth_mb=mem.growth_mb,
                kind=mem.kind,
            )
        )
        for stage, task in stages().items():
            if stage != "e2e":
                task.fn()  # warm-up
            tasks[mode, stage] = task
    run_round_robin(tasks, device)
    for (mode, stage), task in tasks.items():
        rows.append(row(ctx, mode, stage, runs=task.reps, **summarize(task.samples)))
    return rows, tokens


def agreement(tokens: dict[str, list[list[int]]], reference: str) -> dict[str, float]:
    ref = np.asarray(tokens[reference])
    return {mode: float((np.asarray(t) == ref).mean()) for mode, t in tokens.items()}


# ----- ablations (each variant timed in the same round robin as its counterpart) -------------


def ablation_kv_cache(fm, gen, w: Workload, s: Settings, device) -> dict:
    """Decode iteration with the static cache (`Generator`) vs FMS's `torch.cat` cache
    (`fms.utils.generation.generate`; compiled: `torch.compile(model)`, the cache length
    marked dynamic by FMS's generate, so one decode graph serves every step)."""
    from granite_fms.generation import Generator

    eager_static = Generator(fm, gen.policy, compile=False)
    dynamic = torch.compile(fm, fullgraph=True)
    warmup = {}
    for name, fn in (("dynamic_compiled", lambda: fms_generate_intervals(dynamic, fm, w)),):
        warmup[name] = [timed(fn, device), timed(fn, device)]
    tasks = {
        "static_compiled": _task(lambda: generator_intervals(gen, w), s.decode_runs, inner=True),
        "dynamic_compiled": _task(
            lambda: fms_generate_intervals(dynamic, fm, w), s.decode_runs, inner=True
        ),
        "static_eager": _task(
            lambda: generator_intervals(eager_static, w), s.decode_runs, inner=True
        ),
        "dynamic_eager": _task(
            lambda: fms_generate_intervals(fm, fm, w), s.decode_runs, inner=True
        ),
    }
    for task in tasks.values():
        task.fn()
    run_round_robin(tasks, device)
    out = {name: summarize(t.samples) for name, t in tasks.items()}
    return {
        "what": "one decode iteration of the generation loop (forward + token choice)",
        "workload": w.label,
        "new_tokens": w.new_tokens,
        "variants": out,
        "dynamic_compiled_first_second_run_s": warmup["dynamic_compiled"],
        "compiled_static_speedup": out["dynamic_compiled"]["median_ms"]
        / out["static_compiled"]["median_ms"],
        "eager_static_speedup": out["dynamic_eager"]["median_ms"]
        / out["static_eager"]["median_ms"],
    }


def ablation_sdpa(fm, w: Workload, s: Settings, device, compile_too: bool) -> dict:
    """Encoder with `attn_backend="math"` (the default: MATH SDPA, reference numerics) vs
    "auto" (PyTorch picks a fused kernel), same weights, eager (and compiled)."""
    from granite_fms.conformer import ConformerEncoder

    feats, _, _, _ = fms_inputs(fm, w)
    dtype = fm.encoder.input_linear.weight.dtype
    x, mask = feats.input_features.to(dtype), feats.input_features_mask
    encoders = {"math": fm.encoder}
    with torch.device("meta"):
        auto = ConformerEncoder(fm.encoder.config.updated(attn_backend="auto"))
    auto.load_state_dict(fm.encoder.state_dict(), assign=True)
    auto.post_init()
    encoders["auto"] = auto.eval()
    diff = float((encoders["auto"](x, mask) - fm.encoder(x, mask)).abs().max())
    tasks, compile_s = {}, {}
    for backend, encoder in encoders.items():
        tasks[backend, "eager"] = _task(lambda e=encoder: e(x, mask), s.stage_reps)
        if compile_too:
            compiled = torch.compile(encoder, fullgraph=True, dynamic=False)
            compile_s[backend] = timed(lambda c=compiled: c(x, mask), device)
            tasks[backend, "compiled"] = _task(lambda c=compiled: c(x, mask), s.stage_reps)
    for task in tasks.values():
        task.fn()
    run_round_robin(tasks, device)
    out = {f"{b}_{m}": summarize(t.samples) for (b, m), t in tasks.items()}
    ratios = {
        m: out[f"math_{m}"]["median_ms"] / out[f"auto_{m}"]["median_ms"]
        for m in ("eager", "compiled")
        if f"auto_{m}" in out
    }
    return {
        "what": "encoder forward, attn_backend math (default) vs auto (fused SDPA)",
        "workload": w.label,
        "variants": out,
        "math_over_auto": ratios,
        "first_call_s": compile_s,
        "max_abs_diff_auto_vs_math": diff,
    }


def without_lora(fm):
    """A LoRA-free copy of the model sharing its other weights."""
    from granite_fms.granite_speech import GraniteSpeech

    with torch.device("meta"):
        plain = GraniteSpeech(fm.config.updated(lora_rank=0))
    state = {k: v for k, v in fm.state_dict().items() if ".lora_" not in k}
    plain.load_state_dict(state, strict=False, assign=True)
    plain.post_init()
    return plain.eval().requires_grad_(False)


def ablation_fused(fm, w: Workload, s: Settings, device) -> dict:
    """Decode step with FMS's fused QKV / gate-up weights vs unfused (`apply_unfuse_weights`),
    eager and compiled (static cache, no CUDA graphs); LoRA-free copies of the same weights."""
    from fms.utils.fusion import apply_unfuse_weights

    from granite_fms.generation import Generator

    fused = without_lora(fm)
    unfused = copy.deepcopy(fused)
    unfused.language_model = apply_unfuse_weights(unfused.language_model)
    tasks, first = {}, {}
    for name, model in (("fused", fused), ("unfused", unfused)):
        for compiled in (False, True):
            gen = Generator(model, compile=compiled, mode="default" if compiled else None)
            _, step = decode_step_inputs(gen, w)
            key = f"{name}_{'compiled' if compiled else 'eager'}"
            first[key] = timed(lambda g=gen, a=step: g.decode(*a), device)
            tasks[key] = _task(lambda g=gen, a=step: g.decode(*a), s.stage_reps)
    for task in tasks.values():
        task.fn()
    run_round_robin(tasks, device)
    out = {name: summarize(t.samples) for name, t in tasks.items()}
    return {
        "what": "one decode step (model call, static cache), LoRA-free copies",
        "workload": w.label,
        "variants": out,
        "first_call_s": first,
        "unfused_over_fused": {
            m: out[f"unfused_{m}"]["median_ms"] / out[f"fused_{m}"]["median_ms"]
            for m in ("eager", "compiled")
        },
    }


def ablation_freezing(fm, gen, w: Workload, s: Settings, device) -> dict:
    """The Generator's compiled decode step vs the same step compiled with Inductor's
    `freezing` (parameters and buffers become constants; on CPU weights are prepacked). The
    LoRA scale buffer is folded in too, so the adapter switch no longer reaches the graph:
    a measured option, not what the Generator does."""
    from granite_fms.generation import _decode

    frozen = torch.compile(lambda *a: _decode(fm, *a), fullgraph=True, dynamic=False)
    _, step = decode_step_inputs(gen, w)
    fm.start_request(True)
    with torch._inductor.config.patch(freezing=True):
        first = timed(lambda: frozen(*step), device)
    diff = float((frozen(*step) - gen.decode(*step)).abs().max())
    fm.start_request(False)
    stale = float((frozen(*step) - gen.decode(*step)).abs().max())
    fm.start_request(True)
    tasks = {
        "compiled": _task(lambda: gen.decode(*step), s.stage_reps),
        "compiled_freezing": _task(lambda: frozen(*step), s.stage_reps),
    }
    for task in tasks.values():
        task.fn()
    run_round_robin(tasks, device)
    out = {name: summarize(t.samples) for name, t in tasks.items()}
    return {
        "what": "one compiled decode step (model call, static cache), Inductor freezing off/on",
        "workload": w.label,
        "variants": out,
        "first_call_s": {"compiled_freezing": first},
        "max_abs_logit_diff": diff,
        "max_abs_logit_diff_after_adapter_off": stale,
        "plain_over_freezing": out["compiled"]["median_ms"] / out["compiled_freezing"]["median_ms"],
    }


def merge_boolean_mask(fm, input_ids, audio_embeds, frame_mask):
    """Reference merge by boolean-mask indexing, as the reference and the seed project do:
    the number of selected rows depends on the data, so a compiler must sync or break."""
    is_audio = input_ids == fm.config.audio_token_index
    embeds = fm.language_model.base_model.embedding(torch.where(is_audio, 0, input_ids))
    counts = fm.audio_token_counts(frame_mask)
    slots = torch.arange(audio_embeds.shape[1], device=audio_embeds.device)
    valid = slots[None, :] < counts[:, None]
    embeds[is_audio] = audio_embeds[valid].to(embeds.dtype)
    return embeds


def ablation_merge(fm, w: Workload, s: Settings, device) -> dict:
    """Our gather merge (`merge_audio`) vs a boolean-mask merge, eager and compiled."""
    from torch._dynamo.utils import counters

    feats, _, ids, _ = fms_inputs(fm, w)
    mask = feats.input_features_mask
    proj = fm.audio_embeddings(feats.input_features, mask)
    variants = {
        "gather": fm.merge_audio,
        "boolean_mask": lambda *a: merge_boolean_mask(fm, *a),
    }
    same = bool(
        torch.equal(variants["gather"](ids, proj, mask), variants["boolean_mask"](ids, proj, mask))
    )
    tasks, graphs = {}, {}
    for name, fn in variants.items():
        tasks[name, "eager"] = _task(lambda f=fn: f(ids, proj, mask), s.stage_reps)
        compiled = torch.compile(fn, fullgraph=name == "gather", dynamic=False)
        breaks = sum(counters["graph_break"].values())
        unique = counters["stats"]["unique_graphs"]
        first = timed(lambda c=compiled: c(ids, proj, mask), device)
        graphs[name] = {
            "graphs": counters["stats"]["unique_graphs"] - unique,
            "graph_breaks": sum(counters["graph_break"].values()) - breaks,
            "first_call_s": first,
        }
        tasks[name, "compiled"] = _task(lambda c=compiled: c(ids, proj, mask), s.stage_reps)
    for task in tasks.values():
        task.fn()
    run_round_robin(tasks, device)
    out = {f"{n}_{m}": summarize(t.samples) for (n, m), t in tasks.items()}
    return {
        "what": "audio/text merge of one request batch (embedding lookup included)",
        "workload": w.label,
        "variants": out,
        "compile": graphs,
        "outputs_equal": same,
        "boolean_over_gather": {
            m: out[f"boolean_mask_{m}"]["median_ms"] / out[f"gather_{m}"]["median_ms"]
            for m in ("eager", "compiled")
        },
    }


def profile_compiled(gen, w: Workload, device, top: int = 8) -> dict:
    """torch.profiler over the compiled decode step and audio path: the top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    p, step = decode_step_inputs(gen, w)
    regions = {
        "decode_step": (lambda: gen.decode(*step), 20),
        "audio_path": (lambda: gen.embed(p.input_ids, p.features, p.frame_mask), 3),
    }
    activities = [ProfilerActivity.CPU]
    key = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        key = "self_device_time_total"
    out = {}
    for name, (fn, calls) in regions.items():
        fn()
        with profile(activities=activities) as prof:
            for _ in range(calls):
                fn()
            timed(lambda: None, device)
        # On CUDA a "## Call CompiledFxGraph" event's device time is the sum of the kernels it
        # launched, which are listed too; on CPU its self time is the Inductor C++ kernels'.
        events = [
            e
            for e in prof.key_averages()
            if getattr(e, key) > 0 and not (device.type == "cuda" and e.key.startswith("## "))
        ]
        total = sum(getattr(e, key) for e in events)
        events.sort(key=lambda e: getattr(e, key), reverse=True)
        out[name] = {
            "calls": calls,
            "time_kind": key,
            "total_ms_per_call": total / 1e3 / calls,
            "top": [
                {
                    "op": "Inductor-generated kernels (CompiledFxGraph)"
                    if e.key.startswith("## Call CompiledFxGraph")
                    else e.key,
                    "ms_per_call": getattr(e, key) / 1e3 / calls,
                    "share": getattr(e, key) / total,
                    "count_per_call": e.count / calls,
                }
                for e in events[:top]
            ],
        }
    return out


# ----- sections ---------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from granite_fms.provenance import _cpu_model

    return f"{_cpu_model()} ({torch.get_num_threads()} threads)"


def run_models(
    ctx: dict, modes: dict, s: Settings, device
) -> tuple[list[dict], dict[str, dict[str, float]]]:
    rows, agree = [], {}
    for audio_s, batch in s.workloads:
        w = make_workload(audio_s, batch, s.new_tokens)
        print(f"  {ctx['model']} {w.label} ...", flush=True)
        new_rows, tokens = measure_workload(ctx, modes, w, device)
        rows += new_rows
        agree[w.label] = agreement(tokens, "hf_eager")
    return rows, agree


def cpu_section(s: Settings, tmp: Path, quick: bool, ablate: bool) -> dict:
    """Tiny variant: all CPU modes and ablations; real 3.3 encoder + projector shapes."""
    from granite_fms.pipeline import SpeechPipeline

    device = torch.device("cpu")
    hf, fm = tiny_models(tmp / "tiny")
    pipe = SpeechPipeline(fm).compile()
    ctx = {"device": "cpu", "device_name": device_name(device), "model": "tiny", "dtype": "fp32"}
    modes = {
        "hf_eager": lambda w: hf_mode(hf, w, False, s),
        "hf_compiled": lambda w: hf_mode(hf, w, True, s),
        "fms_eager": lambda w: fms_eager_mode(fm, w, s),
        "fms_compiled": lambda w: fms_compiled_mode(pipe, w, s),
    }
    rows, agree = run_models(ctx, modes, s, device)
    target = make_workload(*s.workloads[0], s.new_tokens)
    batched = make_workload(*s.workloads[-1], s.new_tokens)
    ablations = {}
    if ablate:
        print("  ablations ...", flush=True)
        ablations = {
            "kv_cache": ablation_kv_cache(fm, pipe.generator, target, s, device),
            "encoder_sdpa": ablation_sdpa(fm, target, s, device, compile_too=not quick),
            "fused_weights": ablation_fused(fm, target, s, device),
            "inductor_freezing": ablation_freezing(fm, pipe.generator, target, s, device),
            "merge": {
                w.label: ablation_merge(fm, w, s, device)
                for w in {target.label: target, batched.label: batched}.values()
            },
        }
    profile = profile_compiled(pipe.generator, target, device)
    floor = decode_floor(fm, copy_bandwidth_gbs(device, nbytes=2**28))
    print("  real 3.3 encoder + projector shapes ...", flush=True)
    rows += real_encoder_rows(s, device)
    return {
        "rows": rows,
        "token_agreement": {"tiny": agree},
        "ablations": ablations,
        "profile": {"tiny": profile},
        "bandwidth_floor": {"tiny": floor},
    }


def real_encoder_rows(s: Settings, device) -> list[dict]:
    """Encoder and projector of 3.3-2b/-8b (random weights), HF vs FMS, eager. (Compiled, the
    real shapes are measured on GPU, inside the audio path.)"""
    from transformers import GraniteSpeechFeatureExtractor

    from granite_fms.testing import tiny_hf_config

    config = tiny_hf_config(
        "3.3",
        encoder_config=REAL_ENCODER,
        projector_config=REAL_PROJECTOR,
        has_lora_adapter=False,
    )
    hf, fm = in_memory_models(config, device, torch.float32, lora=None)
    ctx = {
        "device": device.type,
        "device_name": device_name(device),
        "model": "3.3 encoder+projector",
        "dtype": "fp32",
        "batch": 1,
        "new_tokens": 0,
    }
    rows = []
    for audio_s in s.real_encoder_seconds:
        w = make_workload(audio_s, 1, 0)
        feats, _, _, _ = fms_inputs(fm, w)
        x, mask = feats.input_features, feats.input_features_mask
        hx = GraniteSpeechFeatureExtractor()(w.waves)["input_features"]
        enc, henc = fm.encoder(x, mask), hf.model.encoder(hx).last_hidden_state
        r = s.stage_reps
        tasks = {
            ("hf_eager", "encoder"): _task(lambda a=hx: hf.model.encoder(a), r),
            ("hf_eager", "projector"): _task(lambda a=henc: hf.model.projector(a), r),
            ("fms_eager", "encoder"): _task(lambda a=x, m=mask: fm.encoder(a, m), r),
            ("fms_eager", "projector"): _task(lambda a=enc: fm.projector(a), r),
        }
        for task in tasks.values():
            task.fn()
        run_round_robin(tasks, device)
        rows += [
            row({**ctx, "audio_s": audio_s}, mode, stage, runs=t.reps, **summarize(t.samples))
            for (mode, stage), t in tasks.items()
        ]
    return rows


GPU_MODELS = ["3.3-2b", "3.3-8b"]


def decode_floor(fm, bandwidth_gbs: float) -> dict:
    """Lower bound of a batch-1 decode step: every LLM weight read once (tied embedding counted
    once, LoRA included) at the measured copy bandwidth."""
    weight_bytes = sum(p.numel() * p.element_size() for p in fm.language_model.parameters())
    return {
        "device": fm.language_model.base_model.embedding.weight.device.type,
        "llm_weight_bytes": weight_bytes,
        "bandwidth_gbs": bandwidth_gbs,
        "floor_ms": weight_bytes / (bandwidth_gbs * 1e9) * 1e3,
    }


def gpu_section(s: Settings, device, models: list[str], ablate: bool) -> dict:
    """Real 3.3 shapes in bf16: all modes incl. CUDA graphs, the bandwidth floor, ablations on
    the first model."""
    bandwidth = copy_bandwidth_gbs(device)
    out: dict = {"rows": [], "token_agreement": {}, "profile": {}, "bandwidth_floor": {}}
    for name in models:
        gpu_model(name, s, device, bandwidth, out, ablate=ablate and name == models[0])
        gc.collect()
        torch.cuda.empty_cache()
    return out


def gpu_model(name: str, s: Settings, device, bandwidth: float, out: dict, ablate: bool) -> None:
    from granite_fms.granite_speech import _3_3_2b_config, _3_3_8b_config
    from granite_fms.pipeline import SpeechPipeline

    variant = {"3.3-2b": _3_3_2b_config, "3.3-8b": _3_3_8b_config}[name]
    hf, fm = in_memory_models(real_hf_config(name), device, torch.bfloat16, lora=(64, 32.0))
    if not same_shapes(fm.config, variant):
        raise RuntimeError(f"the built model does not have the {name} shapes")
    graphs = SpeechPipeline(fm).compile()  # reduce-overhead on CUDA: decode in CUDA graphs
    plain = SpeechPipeline(fm).compile(mode="default")
    # The two modes differ only in the decode step: share the audio-path and prefill graphs.
    plain.generator.embed = graphs.generator.embed
    plain.generator.prefill = graphs.generator.prefill
    ctx = {"device": "cuda", "device_name": device_name(device), "model": name, "dtype": "bf16"}
    modes = {
        "hf_eager": lambda w: hf_mode(hf, w, False, s),
        "hf_compiled": lambda w: hf_mode(hf, w, True, s),
        "fms_eager": lambda w: fms_eager_mode(fm, w, s),
        "fms_compiled_cudagraphs": lambda w: fms_compiled_mode(graphs, w, s),
        "fms_compiled": lambda w: fms_compiled_mode(plain, w, s),
    }
    rows, out["token_agreement"][name] = run_models(ctx, modes, s, device)
    out["rows"] += rows
    out["bandwidth_floor"][name] = decode_floor(fm, bandwidth)
    target = make_workload(*s.workloads[0], s.new_tokens)
    out["profile"][name] = profile_compiled(graphs.generator, target, device)
    if ablate:
        print(f"  ablations on {name} ...", flush=True)
        out["ablations"] = {
            "model": name,
            "kv_cache": ablation_kv_cache(fm, plain.generator, target, s, device),
            "encoder_sdpa": ablation_sdpa(fm, target, s, device, compile_too=True),
            "fused_weights": ablation_fused(fm, target, s, device),
            "inductor_freezing": ablation_freezing(fm, plain.generator, target, s, device),
            "merge": {target.label: ablation_merge(fm, target, s, device)},
        }


# ----- report: targets, evidence, markdown, plots -------------------------------------------

NOT_MEASURED = "not measured yet"
MODE_NOTES = {
    "hf_eager": "transformers generate, dynamic cache",
    "hf_compiled": (
        "transformers generate(cache_implementation='static', compile_config=CompileConfig()): "
        "the decode-step forward compiled (mode reduce-overhead on GPU, default on CPU with "
        "_compile_all_devices); prefill, encoder, projector and merge eager"
    ),
    "fms_eager": "SpeechPipeline.generate_ids: fms.utils.generation.generate, torch.cat KV cache",
    "fms_compiled": (
        "SpeechPipeline.compile() (Generator: bucketed shapes, static KV cache, fullgraph "
        "Inductor graphs for audio path, prefill, decode step); mode 'default' on GPU"
    ),
    "fms_compiled_cudagraphs": "the same with the decode step in CUDA graphs (reduce-overhead)",
}
STAGE_NOTES = {
    "features": "raw waveforms -> log-mel features on the model's device (each mode's extractor)",
    "encoder": "conformer encoder (eager modes; hf_compiled runs hf_eager's code)",
    "projector": "Q-Former projector (eager modes; hf_compiled runs hf_eager's code)",
    "merge": "placeholder embeddings replaced by audio embeddings (eager modes; hf_compiled "
    "runs hf_eager's code)",
    "audio_path": "encoder + projector + merge in one call, as the mode runs them (compiled: "
    "on the bucket-padded input)",
    "prefill": "LLM over the merged prompt embeddings, KV cache written, model call only",
    "decode": "one iteration of the mode's generation loop (forward + token choice), from "
    "synchronised timestamps after each new token; n = iterations",
    "decode_call": f"one compiled decode step, mean of {DECODE_CALLS} back-to-back calls at one "
    "cache slot without host syncs in between",
    "e2e": "raw waveforms -> new token ids (features, prompt expansion, generate)",
    "first_call": "first e2e call of the mode for this workload (compiles included)",
    "second_call": "second e2e call",
}


def find(rows: list[dict], **match) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def median(rows: list[dict], **match) -> float | None:
    r = find(rows, **match)
    return None if r is None or "median_ms" not in r else r["median_ms"]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def targets(report: dict) -> list[dict]:
    rows = report["rows"]
    cpu = dict(device="cpu", model="tiny", audio_s=10, batch=1)
    gpu = dict(device="cuda", model="3.3-8b", audio_s=10, batch=1)
    cpu_ratio = ratio(
        median(rows, **cpu, mode="hf_eager", stage="e2e"),
        median(rows, **cpu, mode="fms_compiled", stage="e2e"),
    )
    gpu_ratio = ratio(
        median(rows, **gpu, mode="hf_eager", stage="e2e"),
        median(rows, **gpu, mode="fms_compiled_cudagraphs", stage="e2e"),
    )
    floor = report.get("bandwidth_floor", {}).get("3.3-8b", {}).get("floor_ms")
    decode = median(rows, **gpu, mode="fms_compiled_cudagraphs", stage="decode_call")
    warmup = median(rows, **gpu, mode="fms_compiled_cudagraphs", stage="first_call")
    gpu_tokens = (find(rows, **gpu, stage="e2e") or {}).get("new_tokens")
    cpu_tokens = (find(rows, **cpu, stage="e2e") or {}).get("new_tokens")

    def entry(target: str, measured: float | None, met: Callable[[float], bool], **extra):
        if measured is None:
            return {"target": target, "measured": NOT_MEASURED, "met": NOT_MEASURED, **extra}
        return {"target": target, "measured": measured, "met": bool(met(measured)), **extra}

    return [
        entry(
            "CPU, tiny (built-in default), 10 s, batch 1: fms_compiled e2e >= 2x faster than "
            "hf_eager (measured: hf_eager / fms_compiled)",
            cpu_ratio,
            lambda r: r >= 2,
            new_tokens=cpu_tokens,
        ),
        entry(
            "GPU, 3.3-8b bf16, 10 s, batch 1, 128 new tokens: e2e >= 4x faster than hf_eager "
            "(measured: hf_eager / fms_compiled_cudagraphs)",
            gpu_ratio,
            lambda r: r >= 4,
            new_tokens=gpu_tokens,
        ),
        entry(
            "GPU, 3.3-8b bf16: decode step within 1.25x of the memory-bandwidth floor "
            "(measured: decode_call / (LLM weight bytes / copy bandwidth))",
            ratio(decode, floor),
            lambda r: r <= 1.25,
        ),
        entry(
            "GPU, 3.3-8b bf16: warm-up < 2 min (measured: first e2e call of "
            "fms_compiled_cudagraphs on the 10 s clip, compiles and graph capture included, s)",
            None if warmup is None else warmup / 1e3,
            lambda r: r < 120,
        ),
    ]


def evidence(report: dict) -> dict:
    """Flat keys for the docs; GPU keys read "not measured yet" until a GPU run exists."""
    rows, ev = report["rows"], {}
    cpu = dict(device="cpu", model="tiny")
    for r in rows:
        if r["device"] == "cpu" and r["model"] == "tiny" and r["stage"] in ("e2e", "first_call"):
            label = f"{r['audio_s']}s_b{r['batch']}"
            unit = "e2e_ms" if r["stage"] == "e2e" else "first_call_s"
            value = r["median_ms"] if r["stage"] == "e2e" else r["median_ms"] / 1e3
            ev[f"cpu_{unit}_{r['mode']}_{label}"] = value
    shapes = {
        (r["audio_s"], r["batch"]) for r in rows if r["device"] == "cpu" and r["model"] == "tiny"
    }
    for audio_s, batch in sorted(shapes):
        w = dict(**cpu, audio_s=audio_s, batch=batch)
        ev[f"cpu_e2e_speedup_compiled_vs_hf_eager_{audio_s}s_b{batch}"] = ratio(
            median(rows, **w, mode="hf_eager", stage="e2e"),
            median(rows, **w, mode="fms_compiled", stage="e2e"),
        )
    t = dict(**cpu, audio_s=10, batch=1)
    e2e = {m: median(rows, **t, mode=m, stage="e2e") for m in CPU_MODES}
    ev["cpu_e2e_speedup_compiled_vs_hf_eager"] = ratio(e2e["hf_eager"], e2e["fms_compiled"])
    ev["cpu_e2e_speedup_compiled_vs_hf_compiled"] = ratio(e2e["hf_compiled"], e2e["fms_compiled"])
    ev["cpu_e2e_speedup_compiled_vs_fms_eager"] = ratio(e2e["fms_eager"], e2e["fms_compiled"])
    for stage in ("decode", "prefill", "audio_path", "features"):
        for m in CPU_MODES:
            ev[f"cpu_{stage}_ms_{m}_10s_b1"] = median(rows, **t, mode=m, stage=stage)
    for r in rows:
        if r["device"] == "cpu" and r["model"] == "3.3 encoder+projector" and "median_ms" in r:
            ev[f"cpu_real_{r['stage']}_ms_{r['mode']}_{r['audio_s']}s"] = r["median_ms"]
    ab = report.get("ablations", {}).get("cpu", {})
    if "kv_cache" in ab:
        v = ab["kv_cache"]["variants"]
        for name in v:
            ev[f"cpu_decode_ms_{name}_cache"] = v[name]["median_ms"]
        ev["cpu_decode_static_vs_dynamic_speedup_compiled"] = ab["kv_cache"][
            "compiled_static_speedup"
        ]
        ev["cpu_decode_static_vs_dynamic_speedup_eager"] = ab["kv_cache"]["eager_static_speedup"]
    if "encoder_sdpa" in ab:
        for name, st in ab["encoder_sdpa"]["variants"].items():
            ev[f"cpu_encoder_ms_sdpa_{name}"] = st["median_ms"]
        for m, value in ab["encoder_sdpa"]["math_over_auto"].items():
            ev[f"encoder_sdpa_math_vs_fused_ratio_{m}"] = value
    if "fused_weights" in ab:
        for name, st in ab["fused_weights"]["variants"].items():
            ev[f"cpu_decode_step_ms_{name}"] = st["median_ms"]
        for m, value in ab["fused_weights"]["unfused_over_fused"].items():
            ev[f"cpu_decode_unfused_vs_fused_ratio_{m}"] = value
    if "inductor_freezing" in ab:
        for name, st in ab["inductor_freezing"]["variants"].items():
            ev[f"cpu_decode_step_ms_{name}"] = st["median_ms"]
        ev["cpu_decode_freezing_speedup"] = ab["inductor_freezing"]["plain_over_freezing"]
    for label, m in ab.get("merge", {}).items():
        for name, st in m["variants"].items():
            ev[f"merge_{name}_ms_{label}"] = st["median_ms"]
        for mode, value in m["boolean_over_gather"].items():
            ev[f"merge_bool_vs_gather_ratio_{mode}_{label}"] = value
        ev[f"merge_bool_graph_breaks_{label}"] = m["compile"]["boolean_mask"]["graph_breaks"]
        ev[f"merge_gather_graph_breaks_{label}"] = m["compile"]["gather"]["graph_breaks"]
    floors = report.get("bandwidth_floor", {})
    tiny = floors.get("tiny", {})
    ev["cpu_copy_bandwidth_gbs"] = tiny.get("bandwidth_gbs")
    ev["cpu_decode_floor_ms"] = tiny.get("floor_ms")
    call = median(rows, **t, mode="fms_compiled", stage="decode_call")
    ev["cpu_decode_call_ms_fms_compiled_10s_b1"] = call
    ev["cpu_decode_vs_floor"] = ratio(call, tiny.get("floor_ms"))
    gpu_floors = [f for f in floors.values() if f.get("device", "cuda") == "cuda"]
    ev["gpu_copy_bandwidth_gbs"] = gpu_floors[0]["bandwidth_gbs"] if gpu_floors else None
    for model in GPU_MODELS:
        g = dict(device="cuda", model=model, audio_s=10, batch=1)
        e = {m: median(rows, **g, mode=m, stage="e2e") for m in GPU_MODES}
        key = f"gpu_{model.replace('3.3-', '')}"
        ev[f"{key}_e2e_speedup_vs_hf_eager"] = ratio(e["hf_eager"], e["fms_compiled_cudagraphs"])
        ev[f"{key}_e2e_speedup_vs_hf_compiled"] = ratio(
            e["hf_compiled"], e["fms_compiled_cudagraphs"]
        )
        for m in GPU_MODES:
            ev[f"{key}_e2e_ms_{m}_10s_b1"] = e[m]
            decode = median(rows, **g, mode=m, stage="decode")
            ev[f"{key}_decode_ms_{m}_10s_b1"] = decode
            ev[f"{key}_decode_tokens_per_s_{m}_10s_b1"] = None if decode is None else 1e3 / decode
        call = median(rows, **g, mode="fms_compiled_cudagraphs", stage="decode_call")
        floor = floors.get(model, {}).get("floor_ms")
        ev[f"{key}_decode_floor_ms"] = floor
        ev[f"{key}_decode_call_ms_cudagraphs"] = call
        ev[f"{key}_decode_vs_floor"] = ratio(call, floor)
        first = median(rows, **g, mode="fms_compiled_cudagraphs", stage="first_call")
        ev[f"{key}_warmup_s"] = None if first is None else first / 1e3
    return {k: NOT_MEASURED if v is None else v for k, v in ev.items()}


def cell(r: dict | None) -> str:
    if r is None or "median_ms" not in r:
        return "-"
    m, lo, hi = (r[k] for k in ("median_ms", "p10_ms", "p90_ms"))
    if r["n"] == 1:
        return f"{m:.4g}"
    return f"{m:.4g} [{lo:.3g}-{hi:.3g}] n={r['n']}"


def groups(rows: list[dict]) -> list[tuple[str, str]]:
    """(device, model) pairs that have end-to-end rows, in order of appearance."""
    seen = []
    for r in rows:
        key = (r["device"], r["model"])
        if r["stage"] == "e2e" and key not in seen:
            seen.append(key)
    return seen


def modes_of(rows: list[dict], device: str, model: str) -> list[str]:
    present = {r["mode"] for r in rows if r["device"] == device and r["model"] == model}
    return [m for m in GPU_MODES if m in present]


def workloads_of(rows: list[dict], device: str, model: str) -> list[tuple[int, int]]:
    out = []
    for r in rows:
        key = (r["audio_s"], r["batch"])
        if r["device"] == device and r["model"] == model and key not in out:
            out.append(key)
    return out


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def variants_table(title: str, variants: dict, note: str) -> list[str]:
    lines = [f"### {title}", "", note, "", "| variant | median ms [p10-p90] n |", "|---|---|"]
    lines += [f"| {name} | {cell(st)} |" for name, st in variants.items()]
    return lines + [""]


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = ["# Latency: FMS vs Hugging Face, per stage", "", "Provenance, one line per run:", ""]
    for run in report["runs"]:
        cores = run["provenance"]["device"]["cpu_affinity"] or 1
        lines += [
            f"- {run['kind']} run ({', '.join(run['models'])}), {run['runtime_s']:.0f} s"
            f"{', --quick' if run['quick'] else ''}, load average {run['load_average'][0]:.2f} "
            f"at start and {run['load_average_end'][0]:.2f} at end on {cores} cores"
            + (
                " (**the machine was shared: timings are inflated**)"
                if run["load_average"][0] > cores
                else ""
            )
            + f", script {run.get('script_sha256', 'not recorded')}: {one_line(run['provenance'])}"
        ]
    lines += [
        "",
        "Generated by `experiments/latency.py` (full JSON: `latency.json`). Cells: median ms "
        "[p10-p90] n. Every sample is taken between device synchronisations; the tasks of one "
        "workload are timed round robin, so a busy period of a shared machine falls on every "
        "mode, though not equally: on an oversubscribed CPU, many small OpenMP-parallel ops "
        "(eager decoding) suffer most. Greedy decoding with EOS disabled: every mode "
        "makes exactly `new_tokens` tokens. Compile times are cold (a fresh Inductor cache "
        "per run). Random weights, identical in every mode of a model (one checkpoint, loaded "
        "by transformers and by FMS).",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {fmt(t['measured'])} | {fmt(t['met'])} |")
    lines += ["", "## Modes", ""]
    lines += [f"- `{m}`: {note}" for m, note in MODE_NOTES.items()]
    lines += ["", "## End to end", ""]
    for device, model in groups(rows):
        modes = modes_of(rows, device, model)
        sel = dict(device=device, model=model)
        lines += [
            f"### {model} on {device}",
            "",
            "| audio s | batch | new tokens | "
            + " | ".join(modes)
            + " | hf_eager / best fms_compiled |",
            "|---|---|---|" + "---|" * (len(modes) + 1),
        ]
        for audio_s, batch in workloads_of(rows, device, model):
            w = dict(**sel, audio_s=audio_s, batch=batch, stage="e2e")
            e2e = {m: find(rows, **w, mode=m) for m in modes}
            best = min(
                (e2e[m]["median_ms"] for m in modes if m.startswith("fms_compiled") and e2e[m]),
                default=None,
            )
            speedup = ratio(median(rows, **w, mode="hf_eager"), best)
            tokens = next(r["new_tokens"] for r in e2e.values() if r)
            lines.append(
                f"| {audio_s} | {batch} | {tokens} | "
                + " | ".join(cell(e2e[m]) for m in modes)
                + f" | {fmt(speedup) if speedup else '-'} |"
            )
        lines.append("")
    lines += ["![end to end vs audio length](plots/latency_e2e.png)", "", "## Stages", ""]
    lines += [f"- `{s}`: {note}" for s, note in STAGE_NOTES.items()]
    lines.append("")
    for device, model in groups(rows):
        modes = modes_of(rows, device, model)
        for audio_s, batch in workloads_of(rows, device, model):
            sel = dict(device=device, model=model, audio_s=audio_s, batch=batch)
            lines += [
                f"### {model} on {device}, {audio_s} s, batch {batch}",
                "",
                "| stage | " + " | ".join(modes) + " |",
                "|---|" + "---|" * len(modes),
            ]
            for stage in [*STAGES, "first_call", "second_call"]:
                cells = [find(rows, **sel, mode=m, stage=stage) for m in modes]
                if any(c is not None for c in cells):
                    lines.append(f"| {stage} | " + " | ".join(cell(c) for c in cells) + " |")
            mem = [find(rows, **sel, mode=m, stage="peak_memory") for m in modes]
            lines.append(
                "| peak memory MB (growth) | "
                + " | ".join(
                    "-"
                    if c is None or c["peak_mb"] is None
                    else f"{c['peak_mb']:.0f} (+{c['growth_mb']:.0f})"
                    for c in mem
                )
                + " |"
            )
            lines.append("")
    lines += [
        "Peak memory: CUDA `max_memory_allocated` during one e2e call; on CPU the process's "
        "peak resident set (VmHWM, reset before the call), which includes every model the "
        "process holds; growth = peak minus the level before the call.",
        "",
        "![stage breakdown per mode](plots/latency_stages.png)",
        "",
        "Stage plot: the decode bar is the median loop iteration x (new tokens - 1), from "
        "timestamps synchronised after every token; on a GPU that per-token sync removes the "
        "overlap of host and device work, so a bar can pass the measured e2e (black).",
        "",
    ]
    real = [r for r in rows if r["model"] == "3.3 encoder+projector"]
    if real:
        lines += [
            "## Real 3.3 encoder + projector shapes (random weights)",
            "",
            "Eager, HF vs FMS, same weights (compiled, these shapes are timed on a GPU inside "
            "`audio_path`).",
            "",
            "| device | audio s | mode | stage | median ms [p10-p90] n |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['device']} | {r['audio_s']} | {r['mode']} | {r['stage']} | {cell(r)} |"
            for r in real
        ]
        lines.append("")
    lines += ["## Ablations", ""]
    for kind, ab in report["ablations"].items():
        if not ab:
            continue
        lines += [f"On {kind} ({ab.get('model', 'tiny')}).", ""]
        kv = ab["kv_cache"]
        lines += variants_table(
            f"Static KV cache vs FMS's torch.cat cache ({kv['workload']})",
            kv["variants"],
            f"{kv['what']}. Compiled: static is {kv['compiled_static_speedup']:.3g}x faster "
            f"than dynamic; eager: {kv['eager_static_speedup']:.3g}x. First and second run of "
            f"the dynamic compiled loop (compiles): "
            + ", ".join(f"{v:.1f} s" for v in kv["dynamic_compiled_first_second_run_s"])
            + ".",
        )
        sd = ab["encoder_sdpa"]
        lines += variants_table(
            f"Encoder attention: MATH SDPA vs fused ({sd['workload']})",
            sd["variants"],
            f"{sd['what']}. math / auto: "
            + ", ".join(f"{m} {v:.3g}x" for m, v in sd["math_over_auto"].items())
            + f"; max |auto - math| of the encoder output: {sd['max_abs_diff_auto_vs_math']:.3g}.",
        )
        fw = ab["fused_weights"]
        lines += variants_table(
            f"Fused vs unfused projections ({fw['workload']})",
            fw["variants"],
            f"{fw['what']}. unfused / fused: "
            + ", ".join(f"{m} {v:.3g}x" for m, v in fw["unfused_over_fused"].items())
            + ".",
        )
        if "inductor_freezing" in ab:
            fz = ab["inductor_freezing"]
            lines += variants_table(
                f"Inductor freezing of the compiled decode step ({fz['workload']})",
                fz["variants"],
                f"{fz['what']}. plain / freezing: {fz['plain_over_freezing']:.3g}x; max |logit "
                f"difference| {fz['max_abs_logit_diff']:.3g} with the adapter on, "
                f"{fz['max_abs_logit_diff_after_adapter_off']:.3g} after switching it off (the "
                "frozen graph keeps the adapter's scale). A measured option, not what the "
                "Generator does.",
            )
        for label, mg in ab["merge"].items():
            lines += variants_table(
                f"Merge: gather (ours) vs boolean mask ({label})",
                mg["variants"],
                f"{mg['what']}. boolean / gather: "
                + ", ".join(f"{m} {v:.3g}x" for m, v in mg["boolean_over_gather"].items())
                + "; compiled: "
                + "; ".join(
                    f"{n} {c['graphs']} graph(s), {c['graph_breaks']} break(s), first call "
                    f"{c['first_call_s']:.1f} s"
                    for n, c in mg["compile"].items()
                )
                + f"; outputs equal: {mg['outputs_equal']}.",
            )
    if any(report["ablations"].values()):
        lines += ["![ablations](plots/latency_ablations.png)", ""]
    else:
        lines += [NOT_MEASURED, ""]
    lines += ["## Profile of the compiled regions", ""]
    for kind, per_model in report["profile"].items():
        for model, regions in per_model.items():
            for region, p in regions.items():
                lines += [
                    f"### {model} on {kind}: {region} ({p['time_kind']}, "
                    f"{p['total_ms_per_call']:.3g} ms per call in total)",
                    "",
                    "| op | ms per call | share | calls per call |",
                    "|---|---|---|---|",
                ]
                lines += [
                    f"| `{t['op']}` | {t['ms_per_call']:.3g} | {t['share']:.1%} | "
                    f"{t['count_per_call']:.3g} |"
                    for t in p["top"]
                ]
                lines.append("")
    lines += [
        "## Memory-bandwidth floor of a batch-1 decode step",
        "",
        "Floor = LLM weight bytes (tied embedding once, LoRA included) / bandwidth of a large "
        "device-to-device copy (read + write). Decode: the best compiled mode's `decode_call` "
        "at 10 s, batch 1.",
        "",
        "| model | device | LLM weight GB | copy bandwidth GB/s | floor ms | decode ms | "
        "decode / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, f in report["bandwidth_floor"].items():
        device = f.get("device", "cuda")
        best = "fms_compiled_cudagraphs" if device == "cuda" else "fms_compiled"
        decode = median(
            rows, device=device, model=m, audio_s=10, batch=1, mode=best, stage="decode_call"
        )
        lines.append(
            f"| {m} | {device} | {f['llm_weight_bytes'] / 1e9:.3g} | {f['bandwidth_gbs']:.0f} | "
            f"{f['floor_ms']:.3g} | {fmt(decode)} | {fmt(ratio(decode, f['floor_ms']))} |"
        )
    lines.append("")
    if not any(r["device"] == "cuda" for r in rows):
        lines += ["## GPU", "", f"3.3-2b / 3.3-8b in bf16 on a GPU: {NOT_MEASURED}.", ""]
    lines += [
        "## Greedy tokens vs hf_eager",
        "",
        "Fraction of new tokens equal to hf_eager's, per workload (random weights; bf16 "
        "rounding differs between implementations).",
        "",
    ]
    for kind, per_model in report["token_agreement"].items():
        for model, per_w in per_model.items():
            for label, agree in per_w.items():
                lines.append(
                    f"- {kind} {model} {label}: "
                    + ", ".join(f"{m} {v:.0%}" for m, v in agree.items())
                )
    lines += ["", "## Evidence keys", "", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | {fmt(v)} |" for k, v in report["evidence"].items()]
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path) -> list[Path]:
    """Stage breakdown per mode, e2e vs audio length, ablations (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, out = report["rows"], out / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []

    panels = [(d, m, w) for d, m in groups(rows) for w in workloads_of(rows, d, m)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1 + 2 * len(panels)), squeeze=False)
    parts = ["features", "audio_path", "prefill", "decode"]
    for ax, (device, model, (audio_s, batch)) in zip(axes[:, 0], panels, strict=True):
        sel = dict(device=device, model=model, audio_s=audio_s, batch=batch)
        modes = modes_of(rows, device, model)
        for y, mode in enumerate(modes):
            left = 0.0
            for i, part in enumerate(parts):
                r = find(rows, **sel, mode=mode, stage=part)
                if r is None:
                    continue
                width = r["median_ms"] * (r["new_tokens"] - 1 if part == "decode" else 1)
                ax.barh(y, width, left=left, color=f"C{i}", label=part if y == 0 else None)
                left += width
            e2e = median(rows, **sel, mode=mode, stage="e2e")
            if e2e is not None:
                ax.plot([e2e, e2e], [y - 0.4, y + 0.4], color="black", lw=2)
        ax.set_yticks(range(len(modes)), modes)
        ax.set_title(f"{model} on {device}, {audio_s} s, batch {batch} (black: measured e2e)")
        ax.set_xlabel("ms (decode: median iteration x (new tokens - 1))")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    written.append(out / "latency_stages.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    pairs = groups(rows)
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, (device, model) in zip(axes[0], pairs, strict=True):
        for i, mode in enumerate(modes_of(rows, device, model)):
            pts = sorted(
                (r["audio_s"], r["median_ms"], r["p10_ms"], r["p90_ms"])
                for r in rows
                if r["device"] == device
                and r["model"] == model
                and r["mode"] == mode
                and r["stage"] == "e2e"
                and r["batch"] == 1
            )
            if pts:
                x, m, lo, hi = (np.asarray(v) for v in zip(*pts, strict=True))
                ax.errorbar(
                    x, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=mode, color=f"C{i}"
                )
        ax.set_xlim(0, 32)
        ax.set_xlabel("audio s")
        ax.set_ylabel("e2e ms (median, p10-p90)")
        ax.set_yscale("log")
        ax.set_title(f"{model} on {device}, batch 1")
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "latency_e2e.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    kinds = [(k, ab) for k, ab in report["ablations"].items() if ab]
    if not kinds:
        return written
    titles = {
        "kv_cache": "KV cache: decode iteration",
        "encoder_sdpa": "encoder SDPA: math vs auto",
        "fused_weights": "fused vs unfused: decode step",
        "inductor_freezing": "Inductor freezing: decode step",
    }
    grid = []
    for kind, ab in kinds:
        panels_ab = [(f"{kind}: {t}", ab[k]["variants"]) for k, t in titles.items() if k in ab]
        merge = next(iter(ab["merge"].values()))
        grid.append([*panels_ab, (f"{kind}: merge ({merge['workload']})", merge["variants"])])
    ncols = max(len(line) for line in grid)
    fig, axes = plt.subplots(
        len(grid), ncols, figsize=(3.8 * ncols, 3.6 * len(grid)), squeeze=False
    )
    for line, ax_line in zip(grid, axes, strict=True):
        for ax, (title, variants) in zip(ax_line, line, strict=False):
            names = list(variants)
            ax.bar(range(len(names)), [variants[n]["median_ms"] for n in names], color="C0")
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel("median ms")
            ax.set_title(title, fontsize=9)
        for ax in ax_line[len(line) :]:
            ax.set_visible(False)
    fig.tight_layout()
    written.append(out / "latency_ablations.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


# ----- main -------------------------------------------------------------------------------


def merged(new: dict, kind: str, old_path: Path | None) -> dict:
    """This run's results plus, from an existing report, those of every (device, model) this
    run did not measure (another device kind, or GPU models run in separate calls)."""
    models = sorted({r["model"] for r in new["rows"]})
    report = {
        "runs": [{"kind": kind, "models": models, **new["run"]}],
        "rows": list(new["rows"]),
        "ablations": {kind: new["ablations"]} if new.get("ablations") else {},
        "profile": {kind: new["profile"]},
        "token_agreement": {kind: new["token_agreement"]},
        "bandwidth_floor": dict(new.get("bandwidth_floor", {})),
    }
    if old_path is None or not old_path.exists():
        return report
    old = json.loads(old_path.read_text())
    done = {(kind, m) for m in models}
    kept = [r for r in old["rows"] if (r["device"], r["model"]) not in done]
    report["rows"] += kept
    kept_pairs = {(r["device"], r["model"]) for r in kept}
    report["runs"] += [
        run for run in old["runs"] if any((run["kind"], m) in kept_pairs for m in run["models"])
    ]
    for k, v in old.get("ablations", {}).items():
        report["ablations"].setdefault(k, v)
    for section in ("profile", "token_agreement"):
        for k, per_model in old.get(section, {}).items():
            for m, v in per_model.items():
                if (k, m) in kept_pairs:
                    report[section].setdefault(k, {})[m] = v
    for m, v in old.get("bandwidth_floor", {}).items():
        if (v.get("device", "cuda"), m) in kept_pairs:
            report["bandwidth_floor"][m] = v
    return report


def workload(text: str) -> tuple[int, int]:
    """ "10x1" -> (10 s of audio, batch 1)."""
    audio_s, batch = text.lower().split("x")
    return int(audio_s), int(batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results", help="output directory (default: results)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one workload, few tokens")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--gpu-models", nargs="+", choices=GPU_MODELS, default=GPU_MODELS)
    parser.add_argument(
        "--workloads",
        nargs="+",
        type=workload,
        help="audio seconds x batch, e.g. 10x1 30x1 (default: the run's settings)",
    )
    parser.add_argument("--no-ablations", action="store_true", help="skip the ablations")
    parser.add_argument(
        "--no-merge",
        action="store_true",
        help="do not keep the results of other devices/models from an existing latency.json",
    )
    args = parser.parse_args(argv)
    kind = args.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        settings = QUICK_CPU if args.quick else FULL_CPU
    else:
        settings = QUICK_GPU if args.quick else FULL_GPU
    if args.workloads:
        settings = replace(settings, workloads=args.workloads)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    out = Path(args.out)
    start, load = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="latency-", ignore_cleanup_errors=True) as tmp:
        # Cold compile times: a fresh Inductor cache for this run.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        import granite_fms  # noqa: F401  (registers the architecture and its adapter with FMS)

        ablate = not args.no_ablations
        if kind == "cpu":
            result = cpu_section(settings, Path(tmp), args.quick, ablate)
        else:
            result = gpu_section(settings, torch.device("cuda"), args.gpu_models, ablate)
    runtime = time.perf_counter() - start
    result["run"] = {
        "provenance": provenance(),
        "runtime_s": round(runtime, 1),
        "quick": args.quick,
        "script_sha256": hashlib.sha256(
            b"".join(Path(__file__).with_name(f).read_bytes() for f in ("latency.py", "timing.py"))
        ).hexdigest()[:16],
        "settings": asdict(settings),
        "load_average": load,
        "load_average_end": os.getloadavg(),
    }
    report = merged(result, kind, None if args.no_merge else out / "latency.json")
    report = {
        "provenance": result["run"]["provenance"],
        "runtime_s": result["run"]["runtime_s"],
        "config": {
            "modes": MODE_NOTES,
            "stages": STAGE_NOTES,
            "prompt": f"{PROMPT_PREFIX} text tokens, the clip's audio placeholders, "
            f"{PROMPT_SUFFIX} text tokens; the clips of a batch have the same length",
            "inductor_cache": "fresh per run (cold compile times)",
        },
        **report,
    }
    report["targets"] = targets(report)
    report["evidence"] = evidence(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "latency.md").write_text(markdown(report))
    written = plots(report, out)
    print(f"wrote {out}/latency.json, latency.md, {len(written)} plots; {runtime:.0f} s")
    for t in report["targets"]:
        print(f"target: {t['target']}: measured {fmt(t['measured'])}, met {fmt(t['met'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
