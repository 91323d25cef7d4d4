"""Prompts + audio -> model inputs for Granite Speech."""

import inspect
import logging
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from granite_fms.audio.features import AudioClip, GraniteSpeechFeatureExtractor
from granite_fms.files import read_json
from granite_fms.hf.config import read_hf_config

logger = logging.getLogger(__name__)

AUDIO_TOKEN = "<|audio|>"
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
            if not isinstance(token, numbers.Integral) or isinstance(token, bool):
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

    def expand_audio_tokens(self, text: str | list[str], counts: list[int]) -> list[str]:
        """Replace prompt i's single audio placeholder with `counts[i]` copies."""
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) != len(counts):
            raise ValueError(
                f"got {len(texts)} prompts and {len(counts)} audio clips; pass one clip per prompt"
            )
        expanded = []
        for i, (prompt, count) in enumerate(zip(texts, counts, strict=True)):
            found = prompt.count(self.audio_token)
            if found != 1:
                raise ValueError(
                    f"prompt {i} has {found} {self.audio_token} placeholders; "
                    f"each prompt needs exactly 1 (it is expanded to {count} tokens for clip {i})"
                )
            expanded.append(prompt.replace(self.audio_token, self.audio_token * count))
        return expanded

    @staticmethod
    def expand_audio_token_ids(
        input_ids: list[int] | Tensor, audio_token_id: int, count: int
    ) -> Tensor:
        """Token-id version of `expand_audio_tokens` for one 1-D prompt."""
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.ndim != 1:
            raise ValueError(f"expected 1-D input_ids for one prompt, got shape {tuple(ids.shape)}")
        where = (ids == audio_token_id).nonzero().flatten()
        if where.numel() != 1:
            raise ValueError(
                f"input_ids has {where.numel()} audio token ids ({audio_token_id}); need exactly 1"
            )
        pos = int(where)
        return torch.cat([ids[:pos], ids.new_full((count,), audio_token_id), ids[pos + 1 :]])

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
            for i, prompt in enumerate(texts):
                if self.audio_token in prompt:
                    raise ValueError(f"prompt {i} has {self.audio_token} but no audio was given")
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
