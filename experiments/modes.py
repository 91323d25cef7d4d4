"""The modes the experiments compare, on one set of random weights (experiments/models.py).

Modes, for one workload (clips of one length, a prompt with one audio placeholder):

* `hf_eager`: transformers `generate` with its default dynamic cache;
* `hf_compiled`: `generate(cache_implementation="static", compile_config=CompileConfig())`,
  which compiles the decode-step forward (prefill, encoder, projector, merge stay eager);
* `fms_eager`: `SpeechPipeline.generate_ids`, uncompiled;
* `fms_compiled`: `SpeechPipeline.compile()`: the `Generator`'s fullgraph Inductor graphs
  (audio path, prefill, decode step) over bucketed shapes and a static KV cache;
* `fms_compiled_cudagraphs` (GPU): the same with the decode step in CUDA graphs.

Each mode gives an e2e function (raw waveforms -> new token ids; its first call is the cold
start) and a builder of its per-stage timing tasks (see STAGE_NOTES).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from experiments.harness import Stamps, Task, gpu_only, timed

SAMPLE_RATE = 16000
PROMPT_PREFIX, PROMPT_SUFFIX = 12, 8  # text tokens around the audio placeholder
DECODE_CALLS = 16  # back-to-back decode calls per `decode_call` sample

MODE_NOTES = {
    "hf_eager": "transformers generate, dynamic cache",
    "hf_compiled": "transformers generate(cache_implementation='static', compile_config="
    "CompileConfig()): the decode-step forward compiled (mode reduce-overhead on GPU, default "
    "on CPU); prefill, encoder, projector and merge eager",
    "fms_eager": "SpeechPipeline.generate_ids, uncompiled: the Generator's loop (bucketed shapes, "
    "static KV cache) without torch.compile",
    "fms_compiled": "SpeechPipeline.compile(): the same loop with fullgraph Inductor graphs for "
    "the audio region (encoder + projector), prefill and decode step (mode 'default'); the merge "
    "eager",
    "fms_compiled_cudagraphs": "the same with the decode step in CUDA graphs (reduce-overhead)",
}
STAGE_NOTES = {
    "features": "raw waveforms -> log-mel features on the model's device",
    "encoder": "conformer encoder (eager modes; FMS: on the bucket-padded input)",
    "projector": "Q-Former projector (eager modes)",
    "merge": "placeholder embeddings replaced by audio embeddings (eager modes)",
    "audio_path": "encoder + projector + merge, as the mode runs them (FMS: on the bucket-padded "
    "input)",
    "prefill": "LLM over the merged prompt embeddings, KV cache written, model call only",
    "decode": "one iteration of the mode's generation loop (forward + token choice), from "
    "synchronised timestamps after each new token",
    "decode_call": f"one compiled decode step, mean of {DECODE_CALLS} back-to-back calls",
    "e2e": "raw waveforms -> new token ids (features, prompt expansion, generate)",
    "first_call": "first e2e call of the mode for this workload (compiles included)",
    "second_call": "second e2e call",
}


# ----- workloads ----------------------------------------------------------------------------


@dataclass
class Workload:
    audio_s: float
    batch: int
    waves: list[torch.Tensor]  # raw 16 kHz clips, all of the same length
    prompt: list[int]  # unexpanded: one audio placeholder
    new_tokens: int

    @property
    def label(self) -> str:
        return f"{self.audio_s:g}s_b{self.batch}"


def make_workload(fm, audio_s: float, batch: int, new_tokens: int) -> Workload:
    audio_id = fm.config.audio_token_index
    gen = torch.Generator().manual_seed(int(1000 * audio_s) + batch)
    waves = [0.1 * torch.randn(int(audio_s * SAMPLE_RATE), generator=gen) for _ in range(batch)]
    text = torch.randint(1, audio_id, (PROMPT_PREFIX + PROMPT_SUFFIX,), generator=gen).tolist()
    prompt = text[:PROMPT_PREFIX] + [audio_id] + text[PROMPT_PREFIX:]
    return Workload(audio_s, batch, waves, prompt, new_tokens)


def expand(prompt: list[int], audio_id: int, count: int) -> torch.Tensor:
    """The prompt with its one placeholder expanded to `count` audio tokens."""
    from granite_fms.audio.processor import GraniteSpeechProcessor

    return GraniteSpeechProcessor.expand_audio_token_ids(prompt, audio_id, int(count))


def encoder_input(fm, features: torch.Tensor) -> torch.Tensor:
    """Features in the encoder's dtype, as `GraniteSpeech.audio_embeddings` casts them, for
    calls of the encoder itself (features are fp32, the weights fp32 or bf16)."""
    return features.to(fm.encoder.input_linear.weight.dtype)


def fms_inputs(fm, w: Workload):
    """Features, expanded prompt rows, and the padded ids + padding kwargs of FMS's generate."""
    from fms.utils.generation import pad_input_ids

    from granite_fms.audio.features import GraniteSpeechFeatureExtractor

    device = fm.language_model.base_model.embedding.weight.device
    feats = GraniteSpeechFeatureExtractor()(w.waves).to(device)
    rows = [expand(w.prompt, fm.config.audio_token_index, n) for n in feats.audio_token_counts]
    ids, padding = pad_input_ids([r.to(device) for r in rows])
    return feats, rows, ids, padding


def generate_tokens(gen, rows: list[torch.Tensor], feats, new_tokens: int, **options) -> list:
    """New token ids per row from `Generator.generate` (`options` passed on): the one place in
    experiments/ that calls it and reads what it returns."""
    return [g.tokens for g in gen.generate(rows, feats, max_new_tokens=new_tokens, **options)]


def token_agreement(reference: list[list[int]], other: list[list[int]]) -> float:
    """Fraction of new tokens equal to the reference's, row by row."""
    same = [
        a == b for ra, rb in zip(reference, other, strict=True) for a, b in zip(ra, rb, strict=True)
    ]
    return sum(same) / len(same)


# ----- the modes ----------------------------------------------------------------------------

# A mode for one workload: its e2e function and a builder of its stage tasks.
ModeSetup = tuple[Callable[[], list[list[int]]], Callable[[], dict[str, Task]]]


def hf_mode(hf, w: Workload, compiled: bool, reps: dict) -> ModeSetup:
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
    audio_id = hf.config.audio_token_index
    ids = torch.stack([expand(w.prompt, audio_id, n) for n in feats["audio_embed_sizes"]])
    ids = ids.to(device)
    hf.generation_config.eos_token_id = None  # a fixed number of new tokens
    kwargs: dict = dict(
        max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens, do_sample=False, pad_token_id=0
    )
    if compiled:  # HF's default mode is reduce-overhead (CUDA graphs)
        config = CompileConfig() if gpu_only(device) else CompileConfig(mode="default")
        config._compile_all_devices = not gpu_only(device)  # HF compiles on accelerators only
        kwargs.update(cache_implementation="static", compile_config=config)

    def e2e(processors=None) -> list[list[int]]:
        f = extractor(w.waves)
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            input_features=f["input_features"].to(device, dtype),
            input_features_mask=f["input_features_mask"].to(device),
            logits_processor=processors,
            **kwargs,
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
        model = hf.model
        hf.enable_adapters()  # as HF's generate does for requests with audio
        enc = model.encoder(x).last_hidden_state
        proj = model.projector(enc)
        merged = model.get_merged_audio_embeddings(ids, proj, mask)

        def audio_path():
            audio = model.projector(model.encoder(x).last_hidden_state)
            return model.get_merged_audio_embeddings(ids, audio, mask)

        setup, cache_kwargs = None, {}
        if compiled:  # this mode's generate prefills a static cache, eagerly
            cache = StaticCache(config=hf.config, max_cache_len=ids.shape[1] + w.new_tokens)
            setup = cache.reset
            cache_kwargs = dict(
                past_key_values=cache, cache_position=torch.arange(ids.shape[1], device=device)
            )

        def prefill():
            return hf(inputs_embeds=merged, use_cache=True, logits_to_keep=1, **cache_kwargs)

        r = reps["stage"]
        tasks = {
            "features": Task(lambda: extractor(w.waves)["input_features"].to(device), r),
            "encoder": Task(lambda: model.encoder(x), r),
            "projector": Task(lambda: model.projector(enc), r),
            "merge": Task(lambda: model.get_merged_audio_embeddings(ids, proj, mask), r),
            "audio_path": Task(audio_path, r),
            "prefill": Task(prefill, r, setup),
            "decode": Task(decode_intervals, reps["decode"], inner=True),
            "e2e": Task(e2e, reps["e2e"]),
        }
        if compiled:  # the same eager code as hf_eager's: timed there only
            del tasks["encoder"], tasks["projector"], tasks["merge"]
        return tasks

    return e2e, stages


def fms_generate_intervals(model, fm, w: Workload) -> list[float]:
    """Per-iteration times of `fms.utils.generation.generate` (FMS's torch.cat KV cache) on
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
        post_iteration_hook=hook,
        prepare_model_inputs_hook=fm.prepare_inputs_for_generation,
        extra_kwargs={**feats.as_dict(), **padding},
    )
    return stamps.intervals()


def generator_intervals(gen, w: Workload) -> list[float]:
    """Per-iteration times of `Generator.generate`, from timestamps after each region call."""
    feats, rows, _, _ = fms_inputs(gen.model, w)
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
        generate_tokens(gen, rows, feats, w.new_tokens)
    finally:
        gen.prefill, gen.decode = regions
    return stamps.intervals()


def decode_step_inputs(gen, w: Workload):
    """A prepared request and the arguments of its first greedy decode step (as the loop
    passes them: no beam reordering)."""
    feats, rows, _, _ = fms_inputs(gen.model, w)
    p = gen.prepare(rows, feats, w.new_tokens)
    token = torch.ones(p.position_ids.shape[0], 1, dtype=torch.long, device=gen.device)
    slot = torch.full((1,), p.prompt_len, device=gen.device)
    return p, (token, p.position_ids[:, -1:] + 1, p.cache, slot, p.key_valid)


def prefill_logits(gen, p) -> torch.Tensor:
    """The prefill's last-position logits (fp32) of a prepared request with audio, adapter on:
    the audio region, the merge, the prefill region."""
    gen.model.start_request(True)
    audio = gen.encode(p.features, p.frame_mask)
    embeds = gen.model.merge_audio(p.input_ids, audio, p.frame_mask)
    positions = torch.arange(p.prompt_len, device=gen.device)
    return gen.prefill(embeds, p.position_ids, p.cache, positions, p.key_valid).float()


def fms_mode(pipe, w: Workload, reps: dict) -> ModeSetup:
    """`SpeechPipeline.generate_ids` through its Generator: uncompiled or compiled."""
    from granite_fms.audio.features import GraniteSpeechFeatureExtractor

    fm, gen = pipe.model, pipe.generator
    extractor = GraniteSpeechFeatureExtractor()

    def e2e() -> list[list[int]]:
        f = extractor(w.waves)
        rows = [expand(w.prompt, fm.config.audio_token_index, n) for n in f.audio_token_counts]
        return generate_tokens(gen, rows, f, w.new_tokens)

    def stages() -> dict[str, Task]:
        r = reps["stage"]
        p, step = decode_step_inputs(gen, w)
        positions = torch.arange(p.prompt_len, device=gen.device)
        fm.start_request(True)

        def audio_path():  # as the loop runs it: the audio region, then the merge
            return fm.merge_audio(p.input_ids, gen.encode(p.features, p.frame_mask), p.frame_mask)

        def decode_calls() -> list[float]:
            seconds = timed(lambda: [gen.decode(*step) for _ in range(DECODE_CALLS)], gen.device)
            return [seconds / DECODE_CALLS]

        embeds = audio_path()
        tasks = {
            "features": Task(lambda: extractor(w.waves).to(pipe.device), r),
            "audio_path": Task(audio_path, r),
            "prefill": Task(
                lambda: gen.prefill(embeds, p.position_ids, p.cache, positions, p.key_valid), r
            ),
            "decode": Task(lambda: generator_intervals(gen, w), reps["decode"], inner=True),
            "decode_call": Task(decode_calls, r, inner=True),
            "e2e": Task(e2e, reps["e2e"]),
        }
        if gen.config is None:  # eager: the modules, one by one
            x, mask = encoder_input(fm, p.features), p.frame_mask
            enc = fm.encoder(x, mask)
            proj = fm.projector(enc)
            tasks["encoder"] = Task(lambda: fm.encoder(x, mask), r)
            tasks["projector"] = Task(lambda: fm.projector(enc), r)
            tasks["merge"] = Task(lambda: fm.merge_audio(p.input_ids, proj, mask), r)
        return tasks

    return e2e, stages


def modes_for(hf, fm, device: torch.device) -> dict[str, Callable[[Workload, dict], ModeSetup]]:
    """The modes compared on this device (CUDA graphs on a GPU only), keyed by name."""
    from granite_fms.pipeline import SpeechPipeline

    eager = SpeechPipeline(fm)  # no tokenizer: token ids in and out, no EOS
    modes = {
        "hf_eager": lambda w, reps: hf_mode(hf, w, False, reps),
        "hf_compiled": lambda w, reps: hf_mode(hf, w, True, reps),
        "fms_eager": lambda w, reps: fms_mode(eager, w, reps),
    }
    plain = SpeechPipeline(fm).compile(mode="default")
    if gpu_only(device):
        # reduce-overhead: the decode step in CUDA graphs; its own audio and prefill regions
        # compile the same graphs as `plain`'s.
        graphs = SpeechPipeline(fm).compile()
        modes["fms_compiled_cudagraphs"] = lambda w, reps: fms_mode(graphs, w, reps)
    modes["fms_compiled"] = lambda w, reps: fms_mode(plain, w, reps)
    return modes
