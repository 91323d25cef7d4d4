"""Prompts + audio -> model inputs for Granite Speech."""

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from granite_fms.audio import longform
from granite_fms.audio.features import AudioClip, GraniteSpeechFeatureExtractor
from granite_fms.audio.prompts import AUDIO_TOKEN, PromptPreset
from granite_fms.checks import is_int
from granite_fms.files import read_json
from granite_fms.hf.config import read_hf_config
from granite_fms.models.granite_speech import GraniteSpeechConfig

logger = logging.getLogger(__name__)

Prompt = str | Sequence[str]
PromptIds = Sequence[int] | Sequence[Sequence[int]]
PREPROCESSOR_CONFIG = "preprocessor_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_FEATURE_EXTRACTOR_TYPE = "GraniteSpeechFeatureExtractor"
# preprocessor_config.json key (HF's name) -> GraniteSpeechFeatureExtractor argument.
_PREPROCESSOR_KEYS = {
    "sampling_rate": "sample_rate",
    "n_fft": "n_fft",
    "win_length": "win_length",
    "hop_length": "hop_length",
    "n_mels": "n_mels",
    "projector_window_size": "window_size",
    "projector_downsample_rate": "downsample_rate",
}


def feature_extractor_from_pretrained(path: str | os.PathLike) -> GraniteSpeechFeatureExtractor:
    """The feature extractor a checkpoint directory describes, checked against its config.json.

    Settings come from `preprocessor_config.json` (HF's top-level keys, which are what HF's
    extractor uses) or, without that file, are the defaults with the window and downsampling
    of `config.json`. A file that contradicts itself or `config.json` is a ValueError.
    """
    path = Path(path)
    file = path / PREPROCESSOR_CONFIG
    cfg = read_json(file) if file.is_file() else {}
    kind = cfg.get("feature_extractor_type", _FEATURE_EXTRACTOR_TYPE)
    if kind != _FEATURE_EXTRACTOR_TYPE:
        raise ValueError(
            f"{file}: feature_extractor_type {kind!r} is not supported "
            f"(only {_FEATURE_EXTRACTOR_TYPE})"
        )
    kwargs = {ours: cfg[hf] for hf, ours in _PREPROCESSOR_KEYS.items() if hf in cfg}
    hf_config = read_hf_config(path) if (path / "config.json").is_file() else None
    if hf_config is not None and not cfg:
        kwargs = dict(window_size=hf_config.window_size, downsample_rate=hf_config.downsample_rate)
    try:
        extractor = GraniteSpeechFeatureExtractor(**kwargs)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e
    # HF writes `melspec_kwargs` too but builds its spectrogram from the top-level keys (or
    # their defaults): a file whose two copies disagree describes two front ends.
    for key, value in (cfg.get("melspec_kwargs") or {}).items():
        if hasattr(extractor, key) and getattr(extractor, key) != value:
            raise ValueError(
                f"{file}: melspec_kwargs.{key} is {value!r} but the top-level settings give "
                f"{key}={getattr(extractor, key)!r} (what HF's feature extractor uses)"
            )
    if hf_config is not None:
        source = file.name if cfg else f"the default (no {file.name})"
        pairs = [
            ("projector_window_size", extractor.window_size, "window_size", hf_config.window_size),
            (
                "projector_downsample_rate",
                extractor.downsample_rate,
                "downsample_rate",
                hf_config.downsample_rate,
            ),
            (
                "2 * n_mels (stacked frames)",
                2 * extractor.n_mels,
                "encoder_config.input_dim",
                hf_config.encoder_config.input_dim,
            ),
        ]
        mismatches = [
            f"{ours} = {a} in {source} but {theirs} = {b} in config.json"
            for ours, a, theirs, b in pairs
            if a != b
        ]
        if mismatches:
            raise ValueError(f"feature settings for {path} disagree: " + "; ".join(mismatches))
    return extractor


def check_prompt_ids(prompt_ids: Any, vocab_size: int, audio_token_id: int) -> list[list[int]]:
    """One list of ids per request, from one id list or a list of them (lists, tuples, tensors
    or arrays). Refuses text, non-integer ids, empty prompts and ids outside the vocabulary;
    the audio placeholder id may lie outside it, as it is never looked up."""
    prompt_ids = _as_list(prompt_ids)
    if isinstance(prompt_ids, str | bytes):
        raise TypeError(
            "prompt_ids must be token ids (a list of ints, or one list per request), got a "
            f"{type(prompt_ids).__name__}; pass text as prompt= (it needs a tokenizer)"
        )
    if not isinstance(prompt_ids, Sequence):
        raise TypeError(
            "prompt_ids must be a list of token ids or a list of such lists, got "
            f"{type(prompt_ids).__name__}"
        )
    if not prompt_ids:
        raise ValueError("empty list of prompts")
    flat = not isinstance(_as_list(prompt_ids[0]), Sequence)
    rows = [prompt_ids] if flat else [_as_list(row) for row in prompt_ids]
    checked = []
    for i, row in enumerate(rows):
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise TypeError(
                f"prompt {i} must be a list of token ids, got a {type(row).__name__}"
                + ("; pass text as prompt= (it needs a tokenizer)" if isinstance(row, str) else "")
            )
        if not row:
            raise ValueError(f"prompt {i} is empty (0 token ids); a prompt needs at least one")
        ids = []
        for j, token in enumerate(row):
            token = _as_list(token)
            if not is_int(token):
                raise TypeError(
                    f"prompt {i}, position {j}: token id {token!r} is a "
                    f"{type(token).__name__}, not an int"
                )
            if not (0 <= token < vocab_size or token == audio_token_id):
                raise ValueError(
                    f"prompt {i}, position {j}: token id {int(token)} is outside the model's "
                    f"vocabulary (ids 0 to {vocab_size - 1})"
                )
            ids.append(int(token))
        checked.append(ids)
    return checked


def _as_list(x: Any) -> Any:
    """Tensors and arrays as Python lists or scalars; anything else unchanged."""
    return x.tolist() if isinstance(x, Tensor | np.ndarray | np.generic) else x


def check_placeholders(
    prompts: Sequence[str] | Sequence[list[int]], placeholder: str | int, has_audio: bool
) -> None:
    """The check of prompts before their placeholder is expanded, as text (`placeholder` the
    audio token) or as token ids (its id): each holds it once with audio, never without."""
    name = f"token id {placeholder}" if isinstance(placeholder, int) else placeholder
    for i, prompt in enumerate(prompts):
        found = prompt.count(placeholder)
        if found != int(has_audio):
            raise ValueError(
                f"prompt {i} has {found} audio placeholders ({name}); "
                + ("a request with audio needs exactly 1" if has_audio else "no audio was given")
            )


@dataclass(frozen=True)
class PromptSpec:
    """What a model's prompts are made of: its audio placeholder id, its vocabulary size, its
    positions (`text_config.max_expected_seq_len`) and the preset of its templated prompts."""

    audio_token_id: int
    vocab_size: int
    max_positions: int
    preset: PromptPreset

    @classmethod
    def of(cls, config: GraniteSpeechConfig, preset: PromptPreset) -> "PromptSpec":
        """The spec of a model of `config`, its prompts of `preset`."""
        text = config.text_config
        return cls(config.audio_token_index, text.src_vocab_size, text.max_expected_seq_len, preset)


class GraniteSpeechProcessor:
    """Extracts audio features and expands each prompt's `<|audio|>` placeholder.

    Batch row i pairs prompt i with clip i; the prompt's single placeholder becomes as many
    audio tokens as the projector makes for that clip.
    """

    def __init__(
        self,
        feature_extractor: GraniteSpeechFeatureExtractor | None = None,
        tokenizer=None,
        audio_token: str = AUDIO_TOKEN,
    ):
        self.feature_extractor = feature_extractor or GraniteSpeechFeatureExtractor()
        self.tokenizer = tokenizer
        self.audio_token = audio_token

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, audio_token: str = AUDIO_TOKEN):
        """Processor for a local checkpoint directory; never touches the network.

        The feature extractor follows `feature_extractor_from_pretrained`; the tokenizer is
        loaded only if the directory has tokenizer files.
        """
        path = Path(path)
        feature_extractor = feature_extractor_from_pretrained(path)
        tokenizer = None
        if any((path / name).is_file() for name in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        else:
            logger.info("no tokenizer files in %s; processor has no tokenizer", path)
        return cls(feature_extractor, tokenizer, audio_token)

    def check_audio_token_id(self, audio_token_index: int) -> None:
        """The tokenizer maps the audio token to the model's `audio_token_index`."""
        audio_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
        if audio_id != audio_token_index:
            raise ValueError(
                f"the tokenizer maps {self.audio_token} to {audio_id} but the model's "
                f"audio_token_index is {audio_token_index}"
            )

    def expand_audio_tokens(self, text: str | list[str], counts: list[int]) -> list[str]:
        """Replace prompt i's single audio placeholder with `counts[i]` copies."""
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) != len(counts):
            raise ValueError(
                f"got {len(texts)} prompts and {len(counts)} audio clips; pass one clip per prompt"
            )
        check_placeholders(texts, self.audio_token, has_audio=True)
        return [
            t.replace(self.audio_token, self.audio_token * n)
            for t, n in zip(texts, counts, strict=True)
        ]

    @staticmethod
    def expand_audio_token_ids(
        input_ids: list[int] | Tensor, audio_token_id: int, count: int
    ) -> Tensor:
        """Token-id version of `expand_audio_tokens` for one 1-D prompt."""
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.ndim != 1:
            raise ValueError(f"expected 1-D input_ids for one prompt, got shape {tuple(ids.shape)}")
        check_placeholders([ids.tolist()], audio_token_id, has_audio=True)
        pos = int((ids == audio_token_id).nonzero())
        return torch.cat([ids[:pos], ids.new_full((count,), audio_token_id), ids[pos + 1 :]])

    def prompt_text(self, text: str, preset: PromptPreset | None = None) -> str:
        """The text the tokenizer sees for one prompt: with a `preset`, in the tokenizer's chat
        template (if it has one) after the preset's pinned system turn; else `text` itself."""
        if preset is not None and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                preset.messages(text), tokenize=False, add_generation_prompt=True
            )
        return text

    def input_ids(
        self,
        prompt: Prompt | None,
        prompt_ids: PromptIds | None,
        counts: Sequence[int] | None,
        spec: PromptSpec,
        chat_template: bool = True,
    ) -> list[Tensor]:
        """One id tensor per request, prompt i's placeholder expanded to `counts[i]` audio
        tokens (`counts` None: no audio).

        The prompts are text (tokenized in the chat template of `spec.preset` if
        `chat_template`; default with audio: the preset's transcription turn) or `prompt_ids`,
        one for every clip or one per clip, each holding the placeholder once with audio, never
        without.
        """
        has_audio, audio_id = counts is not None, spec.audio_token_id
        if prompt is not None and prompt_ids is not None:
            raise ValueError("pass prompt or prompt_ids, not both")
        if prompt_ids is None:
            if prompt is None:
                if not has_audio:
                    raise ValueError("nothing to do: pass audio, a prompt or prompt_ids")
                prompt = spec.preset.user_turn(audio_token=self.audio_token)
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            check_placeholders(texts, self.audio_token, has_audio)
            encoded = self._encode(texts, spec.preset if chat_template else None, audio_id)
            rows = check_prompt_ids(encoded, spec.vocab_size, audio_id)
        else:
            rows = check_prompt_ids(prompt_ids, spec.vocab_size, audio_id)
            check_placeholders(rows, audio_id, has_audio)
        if not has_audio:
            return [torch.tensor(row, dtype=torch.long) for row in rows]
        if len(rows) == 1:
            rows *= len(counts)
        if len(rows) != len(counts):
            raise ValueError(
                f"got {len(rows)} prompts for {len(counts)} audio clips; pass one prompt for all "
                "clips or one per clip"
            )
        return [
            self.expand_audio_token_ids(row, audio_id, n)
            for row, n in zip(rows, counts, strict=True)
        ]

    def text_tokens(self, prompt: str, spec: PromptSpec) -> int:
        """The tokens of a templated prompt besides its audio: its length with none."""
        return len(self.input_ids(prompt, None, [0], spec)[0])

    def fit_context(
        self,
        prompt: str,
        spec: PromptSpec,
        chunk_length: float = 30.0,
        max_new_tokens: int | None = None,
    ) -> longform.ContextFit:
        """The windows and budgets of `prompt`'s requests that fit `spec.max_positions`
        (`longform.fit_context`); ValueError if the prompt alone leaves no room."""
        fe = self.feature_extractor
        tokens = self.text_tokens(prompt, spec)
        return longform.fit_context(
            chunk_length,
            max_new_tokens,
            tokens,
            spec.max_positions,
            fe.num_audio_tokens,
            fe.sample_rate,
        )

    def _encode(
        self, texts: list[str], preset: PromptPreset | None, audio_token_id: int
    ) -> list[list[int]]:
        if self.tokenizer is None:
            raise ValueError(
                "a text prompt needs a tokenizer and this processor has none; pass prompt_ids "
                f"with the audio token id {audio_token_id} instead"
            )
        return [list(self.tokenizer(self.prompt_text(t, preset))["input_ids"]) for t in texts]

    def __call__(
        self,
        text: str | list[str] | None,
        audio: AudioClip | list[AudioClip] | None = None,
        sampling_rate: int | None = None,
    ) -> dict[str, Tensor]:
        """Model inputs: `input_ids` and `attention_mask` (left-padded) for text, and
        `input_features` and `input_features_mask` for audio. Either may be None.
        """
        if text is None and audio is None:
            raise ValueError("nothing to process: pass text, audio or both")
        if text is not None and self.tokenizer is None:
            raise ValueError(
                "a tokenizer is needed to process text: load one with "
                "GraniteSpeechProcessor.from_pretrained(path) or pass tokenizer=..., "
                "or tokenize yourself and use expand_audio_token_ids"
            )
        out: dict[str, Tensor] = {}
        texts = [text] if isinstance(text, str) else text
        counts = None
        if audio is not None:
            features = self.feature_extractor(audio, sampling_rate)
            out.update(features.as_dict())
            counts = features.audio_token_counts.tolist()
            if texts is not None:
                texts = self.expand_audio_tokens(texts, counts)
        elif texts is not None:
            check_placeholders(texts, self.audio_token, has_audio=False)
        if texts is not None:
            out.update(self._tokenize(texts, counts))
        return out

    def _tokenize(self, texts: list[str], counts: list[int] | None) -> dict[str, Tensor]:
        kwargs = {"return_tensors": "pt", "padding": True}
        # Left padding puts every prompt's last token at the end, where generation continues.
        if "padding_side" in inspect.signature(self.tokenizer.__call__).parameters:
            kwargs["padding_side"] = "left"
        encoded = self.tokenizer(texts, **kwargs)
        input_ids = encoded["input_ids"]
        if counts is not None:
            # A tokenizer that splits the placeholder would misalign audio embeddings silently.
            audio_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
            found = (input_ids == audio_id).sum(dim=1).tolist()
            if audio_id in (None, self.tokenizer.unk_token_id) or found != counts:
                raise ValueError(
                    f"tokenized prompts have {found} {self.audio_token} tokens, expected {counts}; "
                    f"is {self.audio_token} a special token of this tokenizer?"
                )
        return {"input_ids": input_ids, "attention_mask": encoded["attention_mask"]}
