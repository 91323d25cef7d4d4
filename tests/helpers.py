"""Helpers shared by the parity tests."""

import torch


def rel_err(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Max abs difference relative to the reference's scale (max abs value)."""
    reference, actual = reference.float(), actual.float()
    return float((reference - actual).abs().max() / reference.abs().max())


def audio_prompt(audio_id: int, n_audio: int, prefix=(1, 5, 6), suffix=(7, 8)) -> torch.Tensor:
    """(1, S) ids: prefix, n_audio placeholders, suffix."""
    ids = list(prefix) + [audio_id] * n_audio + list(suffix)
    return torch.tensor([ids])


def n_tokens(model, frames: int) -> int:
    return int(model.audio_token_counts(torch.ones(1, frames, dtype=torch.bool)))
