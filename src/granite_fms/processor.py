"""Prompts + audio -> model inputs for Granite Speech."""

import inspect
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from granite_fms.features import AudioClip, GraniteSpeechFeatureExtractor

logger = logging.getLogger(__name__)

AUDIO_TOKEN = "<|audio|>"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


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

        The tokenizer is loaded only if the directory has tokenizer files.
        """
        path = Path(path)
        tokenizer = None
        if any((path / name).is_file() for name in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        else:
            logger.info("no tokenizer files in %s; processor has no tokenizer", path)
        return cls(tokenizer=tokenizer, audio_token=audio_token)

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
