"""Helpers shared by the tests."""

import torch
from fms.utils.generation import generate


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


def fms_generate(fm, ids, features=None, frame_mask=None, new=20, **kw):
    """FMS's eager `generate` (dynamic KV cache), greedy: the new tokens (B, new)."""
    extra = dict(kw)
    if features is not None:
        extra.update(input_features=features, input_features_mask=frame_mask)
    out = generate(
        fm,
        ids,
        max_new_tokens=new,
        max_seq_len=512,
        do_sample=False,
        use_cache=True,
        prepare_model_inputs_hook=fm.prepare_inputs_for_generation,
        extra_kwargs=extra,
    )
    return out[:, -new:]
