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

Every request is a batch: one clip or a list in, a list out. `transcribe` and `translate` take
audio of any length: clips longer than `chunk_length` are cut into windows
(`granite_fms.audio.longform`) and all windows of all clips are decoded as one batch. Every
request runs through the one generation loop, `granite_fms.inference.generation.Generator`:
eager by default, compiled graphs after `compile()` (bucketed shapes, a static KV cache, CUDA
graphs on a GPU). Each row keeps its new tokens up to (not including) the first EOS; a row cut
by `max_new_tokens` is logged as a warning (and flagged in `run`'s results).

Templated prompts carry the pinned system turn of the checkpoint family's preset
(`granite_fms.audio.prompts`), so a prompt never depends on today's date.
"""

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from granite_fms.audio import longform
from granite_fms.audio.features import AudioClip, clip_name, encoder_frame_count
from granite_fms.audio.processor import GraniteSpeechProcessor, check_prompt_ids
from granite_fms.audio.prompts import PromptPreset, preset_for
from granite_fms.hf.loader import load_model
from granite_fms.inference.generation import BucketPolicy, Generation, Generator
from granite_fms.models.granite_speech import GraniteSpeech

logger = logging.getLogger(__name__)

Audio = AudioClip | list[AudioClip]
Prompt = str | Sequence[str]
PromptIds = Sequence[int] | Sequence[Sequence[int]]
EosIds = int | list[int] | None
Progress = Callable[[float], None]  # audio seconds decoded by one generation call


def _positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def read_eos_token_ids(model_dir: str | Path) -> list[int]:
    """The EOS ids of `generation_config.json` (one or a list), or [] if there is none."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    ids = [] if eos is None else [eos] if isinstance(eos, int) else eos
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{path}: eos_token_id must be an int or a list of ints, got {eos!r}")
    return list(ids)


@dataclass
class SpeechPipeline:
    """A `GraniteSpeech` model, its processor (whose tokenizer is optional) and a generator.

    eos_token_id: the id(s) that end a row; defaults to the tokenizer's EOS (None: no stop).
    prompts: the system turn and instructions; defaults to the checkpoint family's preset.
    generator: the generation loop; eager unless `compile()` (or one passed in) says otherwise.
    """

    model: GraniteSpeech
    processor: GraniteSpeechProcessor = field(default_factory=GraniteSpeechProcessor)
    eos_token_id: EosIds = None
    prompts: PromptPreset | None = None
    generator: Generator | None = None

    def __post_init__(self):
        if self.generator is None:
            self.generator = Generator(self.model, compile=False)
        if self.prompts is None:
            self.prompts = preset_for(self.audio_token_id)
        if self.tokenizer is None:
            return
        audio_id = self.tokenizer.convert_tokens_to_ids(self.processor.audio_token)
        if audio_id != self.audio_token_id:
            raise ValueError(
                f"the tokenizer maps {self.processor.audio_token} to {audio_id} but the model's "
                f"audio_token_index is {self.audio_token_id}"
            )
        if self.eos_token_id is None:
            self.eos_token_id = self.tokenizer.eos_token_id

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        compile: bool = False,
        distributed_strategy: str | None = None,
    ) -> "SpeechPipeline":
        """Model and processor from a local Hugging Face checkpoint directory.

        The tokenizer is loaded if the directory has tokenizer files (the released ones do).
        EOS ids: those of `generation_config.json` (all of them), else the tokenizer's.
        `compile=True` is `compile()` with its defaults. `distributed_strategy="tp"` shards the
        LLM over the ranks of a torchrun job (`load_model`); every rank runs the same requests.
        """
        model = load_model(
            model_dir, dtype=dtype, device=device, distributed_strategy=distributed_strategy
        )
        eos = read_eos_token_ids(model_dir)
        processor = GraniteSpeechProcessor.from_pretrained(model_dir)
        pipe = cls(model, processor, eos_token_id=eos[0] if len(eos) == 1 else eos or None)
        return pipe.compile() if compile else pipe

    def compile(
        self,
        *,
        mode: str | None = None,
        backend: str | Callable = "inductor",
        policy: BucketPolicy | None = None,
        regional: bool = False,
        cache_dir: str | Path | None = None,
    ) -> "SpeechPipeline":
        """Generate through compiled graphs from now on (the recommended way to serve).

        Each new bucket compiles on its first request (see `BucketPolicy`), or all at once
        with `warmup()`; `mode` defaults to "reduce-overhead" (CUDA graphs for the decode step)
        on a GPU and None on CPU. `regional` and `cache_dir` (a compile cache that a later
        process starts warm from): see `Generator`.
        """
        self.generator = Generator(
            self.model, policy, backend=backend, mode=mode, regional=regional, cache_dir=cache_dir
        )
        return self

    def warmup(
        self,
        audio_seconds: Sequence[float] | None = None,
        batch_sizes: Sequence[int] = (1,),
        *,
        max_new_tokens: int = 200,
        num_beams: int = 1,
        progress: bool = True,
    ) -> "SpeechPipeline":
        """Compile the graphs that transcription requests of these lengths (default: those of
        `Generator.warmup`) and batch sizes will use, with a progress bar, before the first
        request. The prompt's text length is the preset's transcription prompt's."""
        user = self.prompts.user_turn(audio_token=self.processor.audio_token)
        if self.tokenizer is not None:
            text = len(self._tokenize(0, user, True, True)) - 1
        else:
            text = len(user.split())
        frames = None
        if audio_seconds is not None:
            fe = self.processor.feature_extractor
            samples = [int(s * fe.sample_rate) for s in audio_seconds]
            frames = sorted(
                {
                    self.generator.policy.frames(encoder_frame_count(n, fe.hop_length))
                    for n in samples
                }
            )
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
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.language_model.base_model.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.base_model.embedding.weight.dtype

    @property
    def audio_token_id(self) -> int:
        return self.model.config.audio_token_index

    def transcribe(
        self,
        audio: Audio,
        *,
        chunk_length: float = 30.0,
        segmentation: longform.Segmentation = "fixed",
        return_segments: bool = False,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        keywords: Sequence[str] = (),
        batch_size: int | None = longform.BATCH_SIZE,
        progress: Progress | None = None,
    ) -> list[str] | list[longform.Transcript]:
        """Transcript of each clip, of any length (`keywords`: words to bias towards, as the
        cards do).

        chunk_length: clips longer than this many seconds are cut into windows no longer than
            it, "fixed" (equal windows end to end) or by "vad" `segmentation` (long silences
            skipped, cuts in pauses); see `granite_fms.audio.longform`. A shorter clip is one
            window.
        return_segments: per clip `{"text", "segments": [{"id", "start", "end", "text",
            "tokens"}], "warnings": [...]}` (times in seconds from the start of the clip)
            instead of its text; a window that used its whole budget is named in `warnings`.
        max_new_tokens: one budget for every window; None sizes each from its length
            (`longform.budget`: 200 per 30 s, and 200 for a clip that is not cut).
            Windows and budgets are capped to fit the model's positions
            (`longform.fit_context`), with a warning saying so.
        batch_size: windows per generation call (the longest first); None: all at once.
        progress: called after each generation call with the audio seconds it decoded.
        """
        prompt = self.prompts.user_turn(
            "transcribe", keywords=keywords, audio_token=self.processor.audio_token
        )
        return self._long_form(
            audio,
            prompt,
            chunk_length,
            segmentation,
            return_segments,
            max_new_tokens,
            num_beams,
            batch_size,
            progress,
        )

    def translate(
        self,
        audio: Audio,
        language: str,
        *,
        chunk_length: float = 30.0,
        segmentation: longform.Segmentation = "fixed",
        return_segments: bool = False,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        batch_size: int | None = longform.BATCH_SIZE,
        progress: Progress | None = None,
    ) -> list[str] | list[longform.Transcript]:
        """Translation of each clip's speech into `language` (e.g. "French"); the other
        arguments as in `transcribe`."""
        prompt = self.prompts.user_turn(
            "translate", language=language, audio_token=self.processor.audio_token
        )
        return self._long_form(
            audio,
            prompt,
            chunk_length,
            segmentation,
            return_segments,
            max_new_tokens,
            num_beams,
            batch_size,
            progress,
        )

    def _long_form(
        self,
        audio: Audio,
        prompt: str,
        chunk_length: float,
        segmentation: longform.Segmentation,
        return_segments: bool,
        max_new_tokens: int | None,
        num_beams: int,
        batch_size: int | None,
        progress: Progress | None = None,
    ) -> list[str] | list[longform.Transcript]:
        """Cut each clip into windows, decode all windows in batches, put each clip together."""
        if self.tokenizer is None:
            raise ValueError("decoding needs a tokenizer; use generate_ids for token ids")
        checks = (("batch_size", batch_size), ("max_new_tokens", max_new_tokens))
        for name, value in (*checks, ("num_beams", num_beams)):
            if (value is not None or name == "num_beams") and not _positive_int(value):
                raise ValueError(f"{name} must be a positive int (at least 1), got {value!r}")
        clips = list(audio) if isinstance(audio, list | tuple) else [audio]
        if not clips:
            raise ValueError("empty list of audio clips")
        extractor = self.processor.feature_extractor
        rate = extractor.sample_rate
        waves = [extractor.waveform(clip, index=i) for i, clip in enumerate(clips)]
        fit = self.fit_context(prompt, chunk_length, max_new_tokens)
        for note in fit.notes:
            logger.warning(note)
        plans = [longform.split(w, fit.chunk_length, segmentation, rate) for w in waves]
        jobs = [(c, window) for c, plan in enumerate(plans) for window in plan]
        budgets = [
            fit.budget(
                longform.budget(len(w) / rate, len(w) == waves[c].numel())
                if max_new_tokens is None
                else max_new_tokens,
                extractor.num_audio_tokens(len(w)),
            )
            for c, w in jobs
        ]
        pieces = [waves[c][window.start : window.end] for c, window in jobs]
        generations = self._batched(pieces, prompt, budgets, num_beams, batch_size, progress)
        texts = self.tokenizer.batch_decode(
            [g.tokens for g in generations], skip_special_tokens=True
        )
        results, first = [], 0
        for c, plan in enumerate(plans):
            last = first + len(plan)
            result = longform.transcript(
                plan,
                [g.tokens for g in generations[first:last]],
                [g.finished for g in generations[first:last]],
                texts[first:last],
                budgets[first:last],
                rate,
                stops=self.eos_token_id is not None,
            )
            for warning in result["warnings"]:
                logger.warning("%s: %s", clip_name(clips[c], c), warning)
            results.append(result)
            first = last
        return results if return_segments else [r["text"] for r in results]

    def fit_context(
        self, prompt: str, chunk_length: float = 30.0, max_new_tokens: int | None = None
    ) -> longform.ContextFit:
        """The windows and budgets of `prompt`'s requests that fit the model's positions
        (`longform.fit_context`); ValueError if the prompt alone leaves no room."""
        text_tokens = len(self._tokenize(0, prompt, True, True)) - 1  # less the placeholder
        return longform.fit_context(
            chunk_length,
            max_new_tokens,
            text_tokens,
            self.model.config.text_config.max_expected_seq_len,
            self.processor.feature_extractor.num_audio_tokens,
            self.processor.feature_extractor.sample_rate,
        )

    def _batched(
        self,
        pieces: list[torch.Tensor],
        prompt: str,
        budgets: list[int],
        num_beams: int,
        batch_size: int | None,
        progress: Progress | None = None,
    ) -> list[Generation]:
        """`_run` on the pieces in batches of `batch_size`, longest first; results in order."""
        if not pieces:
            return []
        size = batch_size or len(pieces)
        order = sorted(range(len(pieces)), key=lambda i: -pieces[i].numel())
        out: list[Generation | None] = [None] * len(pieces)
        rate = self.processor.feature_extractor.sample_rate
        for first in range(0, len(order), size):
            rows = order[first : first + size]
            generations = self._run(
                [pieces[i] for i in rows],
                prompt,
                max_new_tokens=[budgets[i] for i in rows],
                num_beams=num_beams,
            )
            for i, generation in zip(rows, generations, strict=True):
                out[i] = generation
            if progress is not None:
                progress(sum(pieces[i].numel() for i in rows) / rate)
        return out

    def generate(
        self,
        audio: Audio | None = None,
        prompt: Prompt | None = None,
        *,
        prompt_ids: PromptIds | None = None,
        max_new_tokens: int = 200,
        chat_template: bool = True,
        num_beams: int = 1,
    ) -> list[str]:
        """`generate_ids`, decoded with the tokenizer (special tokens skipped)."""
        if self.tokenizer is None:
            raise ValueError("decoding needs a tokenizer; use generate_ids for token ids")
        ids = self.generate_ids(
            audio,
            prompt,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
            num_beams=num_beams,
        )
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def generate_ids(
        self,
        audio: Audio | None = None,
        prompt: Prompt | None = None,
        *,
        prompt_ids: PromptIds | None = None,
        max_new_tokens: int = 200,
        chat_template: bool = True,
        num_beams: int = 1,
    ) -> list[list[int]]:
        """New token ids for each request, up to (not including) the first EOS.

        audio: one clip or a list (wav/flac paths, or 1-D float arrays/tensors at 16 kHz);
            None for a text-only request, which runs the LLM with the LoRA adapter off
            (unless `model.set_adapter("on")`).
        prompt: text with one `<|audio|>` placeholder per request with audio and none without;
            one string for every clip, or one per clip. Needs a tokenizer; wrapped in the
            tokenizer's chat template, after the preset's system turn, if it has one and
            `chat_template`. Default with audio: the preset's transcription turn.
        prompt_ids: instead of `prompt`, already tokenized (and templated) prompts: one list of
            ids for every clip, or one per clip, each holding the audio token id
            (`audio_token_id`) once with audio and never without. Needs no tokenizer.
        num_beams: 1 is greedy; K > 1 is HF's beam search (`generate(num_beams=K)`).

        The placeholder of row i is expanded to as many audio tokens as clip i makes.
        """
        out = self.run(
            audio,
            prompt,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
            num_beams=num_beams,
        )
        return [g.tokens for g in out]

    @torch.no_grad()
    def run(
        self,
        audio: Audio | None = None,
        prompt: Prompt | None = None,
        *,
        prompt_ids: PromptIds | None = None,
        max_new_tokens: int | Sequence[int] = 200,
        chat_template: bool = True,
        num_beams: int = 1,
    ) -> list[Generation]:
        """`generate_ids` with each row's details: tokens, whether it ended with an EOS (or was
        cut by `max_new_tokens`, one budget for all or one per request) and its beam score."""
        out = self._run(
            audio,
            prompt,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
            num_beams=num_beams,
        )
        cut = [i for i, g in enumerate(out) if not g.finished and self.eos_token_id is not None]
        if cut:
            logger.warning(
                "requests %s reached max_new_tokens without an EOS: their outputs are cut", cut
            )
        return out

    def _run(
        self,
        audio: Audio | None = None,
        prompt: Prompt | None = None,
        *,
        prompt_ids: PromptIds | None = None,
        max_new_tokens: int | Sequence[int] = 200,
        chat_template: bool = True,
        num_beams: int = 1,
    ) -> list[Generation]:
        """`run` without its warning (long-form results name their cut windows themselves)."""
        features = None
        if audio is not None:
            features = self.processor.feature_extractor(audio).to(self.device)
        n_clips = None if features is None else features.input_features.shape[0]
        rows = self._prompt_rows(prompt, prompt_ids, n_clips, chat_template)
        if features is None:
            inputs = [torch.tensor(row, dtype=torch.long) for row in rows]
        else:
            counts = self.model.audio_token_counts(features.input_features_mask).tolist()
            inputs = [
                self.processor.expand_audio_token_ids(row, self.audio_token_id, count)
                for row, count in zip(rows, counts, strict=True)
            ]
        return self.generator.generate(
            inputs,
            features,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_id,
            num_beams=num_beams,
        )

    def _prompt_rows(
        self,
        prompt: Prompt | None,
        prompt_ids: PromptIds | None,
        n_clips: int | None,
        chat_template: bool,
    ) -> list[list[int]]:
        """One unexpanded id list per request, placeholders checked."""
        if prompt is not None and prompt_ids is not None:
            raise ValueError("pass prompt or prompt_ids, not both")
        if prompt_ids is not None:
            rows = prompt_ids
        else:
            if prompt is None:
                if n_clips is None:
                    raise ValueError("nothing to do: pass audio, a prompt or prompt_ids")
                prompt = self.prompts.user_turn(audio_token=self.processor.audio_token)
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            rows = [
                self._tokenize(i, text, n_clips is not None, chat_template)
                for i, text in enumerate(texts)
            ]
        rows = check_prompt_ids(
            rows, self.model.config.text_config.src_vocab_size, self.audio_token_id
        )
        if n_clips is not None and len(rows) == 1:
            rows *= n_clips
        if n_clips is not None and len(rows) != n_clips:
            raise ValueError(
                f"got {len(rows)} prompts for {n_clips} audio clips; pass one prompt for all "
                "clips or one per clip"
            )
        wanted = 0 if n_clips is None else 1
        for i, row in enumerate(rows):
            found = row.count(self.audio_token_id)
            if found != wanted:
                raise ValueError(
                    f"prompt {i} holds the audio token id ({self.audio_token_id}) {found} times; "
                    f"a request {'with' if wanted else 'without'} audio needs {wanted}"
                )
        return rows

    def prompt_text(self, text: str, chat_template: bool = True) -> str:
        """The text the tokenizer sees for one prompt: in the chat template (if the tokenizer
        has one and `chat_template`), after the preset's pinned system turn."""
        if chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                self.prompts.messages(text), tokenize=False, add_generation_prompt=True
            )
        return text

    def _tokenize(self, i: int, text: str, has_audio: bool, chat_template: bool) -> list[int]:
        token = self.processor.audio_token
        if self.tokenizer is None:
            raise ValueError(
                "a text prompt needs a tokenizer and this pipeline has none; "
                f"pass prompt_ids with the audio token id {self.audio_token_id} instead"
            )
        found = text.count(token)
        if has_audio and found != 1:
            raise ValueError(f"prompt {i} has {found} {token} placeholders; with audio it needs 1")
        if not has_audio and found:
            raise ValueError(f"prompt {i} has {token} but no audio was given")
        return list(self.tokenizer(self.prompt_text(text, chat_template))["input_ids"])


__all__ = ["Progress", "SpeechPipeline", "read_eos_token_ids"]
