"""Audio in, text out with Granite Speech 5.0 (TurboCTC): windows, one CTC pass, segments.

    pipe = SpeechPipeline.from_pretrained("granite-speech-5.0-470m-turboctc")   # a CTCPipeline
    pipe.transcribe(["a.wav", "b.wav"])                     # ["...", "..."]
    pipe.transcribe("talk.wav", return_segments=True)       # segments timed from CTC frames
    pipe.compile()                                          # symbolic batch and length

A non-autoregressive model: no prompt, no budget of new tokens, one forward per batch. Clips
longer than `chunk_length` are cut into windows as for 3.x (`granite_fms.audio.longform`), all
windows of all clips go through `CTCDecoder` in batches (padding never changes a window's
result), and each window's segment is timed by its first and last token's CTC frames.
Options of the generative models (beam search, prompts and keywords, translation, token
budgets) are a ValueError here, not ignored.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from granite_fms.audio import longform
from granite_fms.audio.features import AudioClip, clip_list
from granite_fms.audio.features5 import GraniteSpeech5FeatureExtractor
from granite_fms.audio.longform import LongFormOptions, Progress
from granite_fms.inference.compile import CompileConfig, compile_config
from granite_fms.inference.ctc import Alignment, CTCDecoder, decode_texts
from granite_fms.inference.options import GenerationOptions, long_form_options
from granite_fms.models.granite_speech5 import GraniteSpeech5
from granite_fms.pipeline_base import ModelPipeline

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_UNSUPPORTED = "Granite Speech 5.0 (CTC) does not support: "
_TRANSLATE = "translation (it transcribes only; there is no prompt to ask for more)"


@dataclass
class CTCProcessor:
    """The feature extractor and the (optional) tokenizer of a 5.0 checkpoint, as HF's
    `GraniteSpeech5Processor` pairs them."""

    feature_extractor: GraniteSpeech5FeatureExtractor
    tokenizer: object = None

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "CTCProcessor":
        """From a local checkpoint directory; the tokenizer only if it has tokenizer files."""
        path = Path(path)
        tokenizer = None
        if any((path / name).is_file() for name in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return cls(GraniteSpeech5FeatureExtractor.from_pretrained(path), tokenizer)


@dataclass
class CTCPipeline(ModelPipeline):
    """A `GraniteSpeech5` model, its processor and a `CTCDecoder` (eager until `compile()`)."""

    model: GraniteSpeech5
    processor: CTCProcessor
    decoder: CTCDecoder | None = None

    def __post_init__(self):
        fe, cfg = self.processor.feature_extractor, self.model.config
        if 4 * fe.n_mels != cfg.input_dim:
            raise ValueError(
                f"the feature extractor makes {4 * fe.n_mels} features per frame (4 x n_mels), "
                f"the model takes {cfg.input_dim}"
            )
        if self.decoder is None:
            self.decoder = CTCDecoder(self.model)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        compile: bool | CompileConfig = False,
        distributed_strategy: str | None = None,
    ) -> "CTCPipeline":
        """Model, feature extractor and tokenizer from a local 5.0 checkpoint directory;
        `compile` as `SpeechPipeline.from_pretrained`'s."""
        from granite_fms.hf.granite_speech5 import load_model

        if distributed_strategy is not None:
            raise ValueError(
                "distributed_strategy shards the LLM of Granite Speech 3.x/4.x; Granite "
                "Speech 5.0 has none (run one whole model per rank instead)"
            )
        model = load_model(model_dir, dtype=dtype, device=device)
        pipe = cls(model, CTCProcessor.from_pretrained(model_dir))
        if compile is False:
            return pipe
        return pipe.compile(None if compile is True else compile)

    def compile(self, config: CompileConfig | None = None, /, **options) -> "CTCPipeline":
        """Decode through one compiled graph family from now on (see `CTCDecoder`). config: a
        `CompileConfig` or its fields as keywords; of them, 5.0 takes `backend` and `mode` (its
        shapes are always symbolic, it has no LLM to quantise and no artifact)."""
        config = compile_config(config, options)
        unsupported = {
            "cache": config.cache is not None,
            "quantize": config.quantize is not None,
            "regional": config.regional,
            "symbolic=False": not config.symbolic,
        }
        if any(unsupported.values()):
            names = ", ".join(name for name, given in unsupported.items() if given)
            raise ValueError(f"{_UNSUPPORTED}compiling with {names}")
        self.decoder = CTCDecoder(
            self.model, compile=True, backend=config.backend, mode=config.mode
        )
        return self

    def eager(self) -> "CTCPipeline":
        """Decode without compiling from now on (the default)."""
        self.decoder = CTCDecoder(self.model)
        return self

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per output frame (80 ms for the released model)."""
        fe = self.processor.feature_extractor
        return 2 * fe.hop_length * self.model.config.frame_stride / fe.sample_rate

    @staticmethod
    def check_options(
        task: str = "transcribe",
        keywords: Sequence[str] = (),
        generation: GenerationOptions | None = None,
    ) -> None:
        """ValueError for an option of the generative models, which a CTC model cannot honour
        (an EOS id is not one: a CTC path has no end token to stop at, so it is not read)."""
        generation = generation or GenerationOptions()
        problems = []
        if task != "transcribe":
            problems.append(_TRANSLATE)
        if generation.num_beams != 1:
            problems.append(
                f"num_beams={generation.num_beams} (its greedy CTC path is the decoding)"
            )
        if keywords:
            problems.append(f"keywords {list(keywords)} (it takes no prompt)")
        if generation.max_new_tokens is not None:
            problems.append(f"max_new_tokens={generation.max_new_tokens} (it makes no new tokens)")
        if problems:
            raise ValueError(_UNSUPPORTED + "; ".join(problems))

    def transcribe(
        self,
        audio: AudioClip | list[AudioClip],
        *,
        keywords: Sequence[str] = (),
        long_form: LongFormOptions | None = None,
        generation: GenerationOptions | None = None,
        progress: Progress | None = None,
        **changes,
    ) -> list[str] | list[longform.Transcript]:
        """Transcript of each clip, of any length; `SpeechPipeline.transcribe`'s arguments.

        long_form: `LongFormOptions`; with `return_segments`, per clip `{"text", "segments":
            [{"id", "start", "end", "text", "tokens"}], "warnings"}`: a segment per window that
            holds speech, from its first token's frame to the end of its last token's (seconds
            from the clip's start).
        keywords, generation: only their defaults (see `check_options`).
        Keyword arguments replace fields of either options value, as for 3.x.
        """
        options, generation = long_form_options(changes, long_form, generation)
        self.check_options("transcribe", keywords, generation)
        if self.tokenizer is None:
            raise ValueError("transcribing needs a tokenizer and this pipeline has none")
        fe = self.processor.feature_extractor
        clips = clip_list(audio)
        waves = fe.waveforms(clips)
        least = (2 * self.model.config.frame_stride - 1) * fe.hop_length  # one output frame
        for i, wave in enumerate(waves):
            if wave.numel() < least:
                raise ValueError(
                    f"audio[{i}]: audio too short ({wave.numel()} samples); Granite Speech 5.0 "
                    f"needs at least {least} samples at {fe.sample_rate} Hz"
                )
        plans, _, alignments = longform.decode(
            waves, options, self._decode, progress=progress, sample_rate=fe.sample_rate
        )
        texts = decode_texts(self.tokenizer, alignments)
        results, first = [], 0
        for plan in plans:
            last = first + len(plan)
            results.append(self._transcript(plan, alignments[first:last], texts[first:last]))
            first = last
        return options.output(results)

    def translate(self, audio, language: str, **options):
        """A ValueError: Granite Speech 5.0 transcribes only."""
        raise ValueError(_UNSUPPORTED + _TRANSLATE)

    def _decode(self, pieces: list[torch.Tensor], budgets: tuple[int, ...]) -> list[Alignment]:
        """Collapsed CTC paths of one batch of windows (`longform.batched`'s callback)."""
        return self.decoder(self.processor.feature_extractor(pieces))

    def _transcript(
        self, windows: Sequence[longform.Window], alignments: Sequence[Alignment], texts
    ) -> longform.Transcript:
        rate, step = self.processor.feature_extractor.sample_rate, self.frame_seconds
        segments: list[longform.Segment] = []
        for window, alignment, text in zip(windows, alignments, texts, strict=True):
            if not alignment.tokens:
                continue
            start, end = window.start / rate, window.end / rate
            segments.append(
                longform.Segment(
                    id=len(segments),
                    start=start + alignment.frames[0] * step,
                    end=min(end, start + (alignment.frames[-1] + 1) * step),
                    text=text,
                    tokens=alignment.tokens,
                )
            )
        warnings = [] if windows else ["no speech found: nothing was transcribed"]
        return longform.Transcript(
            text=longform.join([s["text"] for s in segments]), segments=segments, warnings=warnings
        )


__all__ = ["CTCPipeline", "CTCProcessor"]
