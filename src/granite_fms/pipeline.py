"""Audio and prompts in, text out: Granite Speech generation on FMS in one call.

    pipe = SpeechPipeline.from_pretrained("granite-speech-3.3-2b", dtype=torch.bfloat16)
    pipe.transcribe(["a.wav", "b.wav"])        # ["...", "..."], one per clip
    pipe.transcribe("a.wav", num_beams=4)      # the model cards' beam search
    pipe.transcribe("talk.wav", segmentation="vad", return_segments=True)
    # [{"text": "...", "segments": [{"id", "start", "end", "text", "tokens"}], "warnings": []}]
    pipe.translate("a.wav", "French")          # ["..."]
    pipe.generate(prompt="What is 2 + 2?")     # text only: the LoRA adapter is off
    pipe.generate_ids(clip, prompt_ids=ids)    # token ids in and out, no tokenizer needed
    pipe.compile()                             # or from_pretrained(..., compile=True)
    pipe.save_compiled("granite.compiled")     # after warmup(); later: compile(cache=...)

Every request is a batch: one clip or a list in, a list out. `transcribe` and `translate` take
audio of any length: clips longer than `chunk_length` are cut into windows
(`granite_fms.audio.longform`), and the windows of all clips are decoded in batches. Every
request runs through the one generation loop, `granite_fms.inference.generation.Generator`:
eager by default, compiled graphs after `compile()` (bucketed shapes, a static KV cache, CUDA
graphs on a GPU). Each row keeps its new tokens up to (not including) the first EOS; a row cut
by `max_new_tokens` is logged as a warning (and flagged in `run`'s results).

Templated prompts carry the pinned system turn of the checkpoint family's preset
(`granite_fms.audio.prompts`), so a prompt never depends on today's date.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from granite_fms.audio import longform
from granite_fms.audio.features import AudioClip, clip_list, clip_name
from granite_fms.audio.longform import LongFormOptions, Progress
from granite_fms.audio.processor import GraniteSpeechProcessor, Prompt, PromptIds, PromptSpec
from granite_fms.audio.prompts import PromptPreset, preset_for
from granite_fms.checks import token_ids
from granite_fms.hf.config import read_eos_token_ids
from granite_fms.hf.granite_speech5 import is_granite_speech5
from granite_fms.hf.loader import load_model
from granite_fms.inference.compile import CompileConfig, compile_config, load_artifact
from granite_fms.inference.generation import BucketPolicy, Generation, Generator
from granite_fms.inference.options import GenerationOptions, long_form_options, with_changes
from granite_fms.inference.quantize import is_quantized, quantize_llm
from granite_fms.models.granite_speech import GraniteSpeech
from granite_fms.pipeline5 import CTCPipeline
from granite_fms.pipeline_base import ModelPipeline

logger = logging.getLogger(__name__)

Audio = AudioClip | list[AudioClip]


@dataclass
class SpeechPipeline(ModelPipeline):
    """A `GraniteSpeech` model, its processor (whose tokenizer is optional) and a generator.

    eos_token_id: the id(s) that end a row, kept as a tuple; None: the tokenizer's EOS (none
        without a tokenizer); (): no stop. `GenerationOptions.eos_token_id` overrides it.
    prompts: the system turn and instructions; defaults to the checkpoint family's preset.
    generator: the generation loop; eager unless `compile()` (or one passed in) says otherwise.
    """

    model: GraniteSpeech
    processor: GraniteSpeechProcessor = field(default_factory=GraniteSpeechProcessor)
    eos_token_id: int | Sequence[int] | None = None
    prompts: PromptPreset | None = None
    generator: Generator | None = None

    def __post_init__(self):
        if self.generator is None:
            self.generator = Generator(self.model)
        if self.prompts is None:
            self.prompts = preset_for(self.audio_token_id)
        if self.tokenizer is not None:
            self.processor.check_audio_token_id(self.audio_token_id)
        if self.eos_token_id is None:
            self.eos_token_id = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_id = token_ids("eos_token_id", self.eos_token_id) or ()

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        compile: bool | CompileConfig = False,
        distributed_strategy: str | None = None,
    ) -> "SpeechPipeline | CTCPipeline":
        """Model and processor (its tokenizer if the directory has tokenizer files) from a local
        Hugging Face checkpoint directory; EOS ids from `generation_config.json`, else the
        tokenizer's. `compile`: True or a `CompileConfig`; `distributed_strategy="tp"` shards the
        LLM over a torchrun job's ranks (`load_model`). A Granite Speech 5.0 (CTC) checkpoint
        gives a `CTCPipeline`."""
        where = dict(dtype=dtype, device=device, distributed_strategy=distributed_strategy)
        if is_granite_speech5(model_dir):
            return CTCPipeline.from_pretrained(model_dir, compile=compile, **where)
        model = load_model(model_dir, **where)
        processor = GraniteSpeechProcessor.from_pretrained(model_dir)
        pipe = cls(model, processor, eos_token_id=read_eos_token_ids(model_dir))
        if compile is False:
            return pipe
        return pipe.compile(None if compile is True else compile)

    def compile(
        self,
        config: CompileConfig | None = None,
        /,
        *,
        policy: BucketPolicy | None = None,
        **options,
    ) -> "SpeechPipeline":
        """Generate through compiled graphs from now on (the way to serve). config: a
        `CompileConfig` or its fields as keywords (default: Inductor, symbolic shapes); policy:
        the bucket policy (default: the generator's). Graphs compile on first use or `warmup()`;
        `cache` loads an artifact of `save_compiled` first, so that they load instead."""
        config = compile_config(config, options)
        if config.quantize is not None and not is_quantized(self.model):
            self.quantize(config.quantize)
        if config.cache is not None:
            load_artifact(config.cache, self.model, config, self.device)
        self.generator = Generator(self.model, policy or self.generator.policy, compile=config)
        return self

    def eager(self) -> "SpeechPipeline":
        """Generate without compiling from now on (the default)."""
        self.generator = Generator(self.model, self.generator.policy)
        return self

    def quantize(self, scheme: str = "int8") -> "SpeechPipeline":
        """Quantise the LLM's linear weights in place (`granite_fms.inference.quantize`)."""
        quantize_llm(self.model, scheme)
        return self

    def save_compiled(self, path: str | Path) -> Path:
        """Write the graphs compiled in this process (compile, then `warmup()`) as one file
        that `compile(cache=path)` loads in another process with the same torch, triton and
        device; returns its path."""
        return self.generator.save_compiled(path)

    def warmup(
        self,
        audio_seconds: Sequence[float] | None = None,
        batch_sizes: Sequence[int] = (1,),
        *,
        max_new_tokens: int = 200,
        num_beams: Sequence[int] = (1,),
        progress: bool = True,
    ) -> "SpeechPipeline":
        """Compile now, with a progress bar, the graphs that transcription requests of these
        lengths (default: `Generator.warmup`'s), batch sizes and beam counts will use."""
        user = self.prompts.user_turn(audio_token=self.audio_token)
        has_tokenizer = self.tokenizer is not None
        text = self.processor.text_tokens(user, self._spec) if has_tokenizer else len(user.split())
        fe = self.processor.feature_extractor
        frames = [fe.encoder_frames(s) for s in audio_seconds or ()]
        self.generator.warmup(
            frames,
            batch_sizes,
            text_tokens=text,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            progress=progress,
        )
        return self

    @property
    def audio_token_id(self) -> int:
        return self.model.config.audio_token_index

    @property
    def audio_token(self) -> str:
        return self.processor.audio_token

    @property
    def _spec(self) -> PromptSpec:
        return PromptSpec.of(self.model.config, self.prompts)

    def transcribe(
        self,
        audio: Audio,
        *,
        keywords: Sequence[str] = (),
        long_form: LongFormOptions | None = None,
        generation: GenerationOptions | None = None,
        progress: Progress | None = None,
        **changes,
    ) -> list[str] | list[longform.Transcript]:
        """Transcript of each clip, of any length (`keywords`: words to bias towards). `long_form`:
        `LongFormOptions` (windows of at most `chunk_length` s, fitted to the model's positions
        by `fit_context`; `return_segments`: a `Transcript` per clip); `generation`:
        `GenerationOptions` (default: each window's own budget); keyword arguments replace
        fields of either. `progress(seconds)` follows each generation call."""
        turn = self.prompts.user_turn("transcribe", keywords=keywords, audio_token=self.audio_token)
        return self._long_form(audio, turn, long_form, generation, progress, **changes)

    def translate(
        self, audio: Audio, language: str, **options
    ) -> list[str] | list[longform.Transcript]:
        """Translation of each clip's speech into `language` (e.g. "French"); see `transcribe`."""
        turn = self.prompts.user_turn("translate", language=language, audio_token=self.audio_token)
        return self._long_form(audio, turn, **options)

    def _long_form(self, audio, prompt, long_form=None, generation=None, progress=None, **changes):
        """Cut each clip into windows, decode all windows in batches, put each clip together."""
        options, generation = long_form_options(changes, long_form, generation)
        generation = generation.with_eos(self.eos_token_id)
        tokenizer, fe = self._decoder(), self.processor.feature_extractor
        clips, rate = clip_list(audio), fe.sample_rate
        fit = self.fit_context(prompt, options.chunk_length, generation.max_new_tokens)
        for note in fit.notes:
            logger.warning(note)

        def generate(batch, budgets):
            return self._run(batch, prompt, replace(generation, max_new_tokens=budgets))

        waves, budget = fe.waveforms(clips), generation.max_new_tokens
        plans, budgets, out = longform.decode(
            waves, options, generate, fit, budget, fe.num_audio_tokens, progress, rate
        )
        texts = tokenizer.batch_decode([g.tokens for g in out], skip_special_tokens=True)
        stops = bool(generation.eos_token_id)
        results = longform.transcripts(plans, out, texts, budgets, rate, stops)
        for c, result in enumerate(results):
            for warning in result["warnings"]:
                logger.warning("%s: %s", clip_name(clips[c], c), warning)
        return options.output(results)

    def generate(self, audio: Audio | None = None, prompt: Prompt | None = None, **kwargs):
        """`generate_ids`, decoded with the tokenizer (special tokens skipped)."""
        tokenizer = self._decoder()
        ids = self.generate_ids(audio, prompt, **kwargs)
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    def generate_ids(
        self, audio: Audio | None = None, prompt: Prompt | None = None, **kwargs
    ) -> list[list[int]]:
        """New token ids of each request, up to (not including) the first EOS; `run`'s arguments."""
        return [g.tokens for g in self.run(audio, prompt, **kwargs)]

    @torch.no_grad()
    def run(
        self,
        audio: Audio | None = None,
        prompt: Prompt | None = None,
        *,
        prompt_ids: PromptIds | None = None,
        chat_template: bool = True,
        generation: GenerationOptions | None = None,
        **changes,
    ) -> list[Generation]:
        """Each request's new tokens, whether it ended with an EOS (a cut one is logged) and its
        beam score. audio: one clip or a list (paths, or 1-D arrays at 16 kHz), None for text
        only (the LoRA adapter off). prompt / prompt_ids: text (templated if `chat_template`)
        or token ids, one for every clip or one per clip (`GraniteSpeechProcessor.input_ids`).
        Keyword arguments replace fields of `generation`: `run(clip, num_beams=4)`."""
        (generation,) = with_changes(changes, generation or GenerationOptions())
        generation = generation.with_eos(self.eos_token_id)
        out = self._run(audio, prompt, generation, prompt_ids, chat_template)
        cut = [i for i, g in enumerate(out) if not g.finished and generation.eos_token_id]
        if cut:
            logger.warning(
                "requests %s reached max_new_tokens without an EOS: their outputs are cut", cut
            )
        return out

    def _run(
        self, audio, prompt, generation, prompt_ids=None, chat_template=True
    ) -> list[Generation]:
        """`run` without its warning (long-form results name their cut windows themselves)."""
        features = counts = None
        if audio is not None:
            features = self.processor.feature_extractor(audio).to(self.device)
            counts = self.model.audio_token_counts(features.input_features_mask).tolist()
        inputs = self.processor.input_ids(prompt, prompt_ids, counts, self._spec, chat_template)
        return self.generator.generate(inputs, features, generation)

    def fit_context(
        self, prompt: str, chunk_length: float = 30.0, max_new_tokens: int | None = None
    ) -> longform.ContextFit:
        """The windows and budgets of `prompt`'s requests that fit the model's positions
        (`GraniteSpeechProcessor.fit_context`); ValueError if the prompt alone leaves no room."""
        return self.processor.fit_context(prompt, self._spec, chunk_length, max_new_tokens)

    def _decoder(self):
        if self.tokenizer is None:
            raise ValueError("decoding needs a tokenizer; use generate_ids for token ids")
        return self.tokenizer

    def prompt_text(self, text: str, chat_template: bool = True) -> str:
        """The text the tokenizer sees for one prompt: in the chat template (if the tokenizer
        has one and `chat_template`), after the preset's pinned system turn."""
        return self.processor.prompt_text(text, self.prompts if chat_template else None)


__all__ = ["Progress", "SpeechPipeline", "read_eos_token_ids"]
