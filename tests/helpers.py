"""Helpers shared by the tests."""

from pathlib import Path

import torch
import transformers
from fms.utils.generation import generate

AUDIO_ID, EOS_ID = 127, 0  # the tiny 3.3 checkpoints' `<|audio|>` and `word_tokenizer()`'s EOS
DATA = Path(__file__).parent / "data"
SENTENCES = ("fox_16k.wav", "long_16k.wav", "short_16k.wav")  # 2.4, 4.52 and 1.22 s
RATE = 16000


def long_recording(
    pause: float = 0.25, silence: float = 12.0, repeats: int = 3
) -> tuple[torch.Tensor, tuple[float, float]]:
    """About 67 s of speech from the espeak-ng fixtures: the three sentences `repeats` times
    with `pause` seconds after each, a `silence`, the same again; faint noise throughout (so
    silence is not digital zero). Returns the waveform and the silence's (start, end) in s."""
    from granite_fms.audio.features import load_audio

    def zeros(seconds: float) -> torch.Tensor:
        return torch.zeros(round(seconds * RATE))

    part = []
    for name in SENTENCES * repeats:
        part += [load_audio(DATA / name), zeros(pause)]
    half = torch.cat(part)
    wave = torch.cat([half, zeros(silence), half])
    noise = torch.randn(wave.shape, generator=torch.Generator().manual_seed(0))
    start = half.numel() / RATE
    return wave + 3e-4 * noise, (start, start + silence)


def set_generation_eos(path: Path, eos) -> None:
    """Rewrite the EOS id(s) of a checkpoint's generation_config.json."""
    config = transformers.GenerationConfig.from_pretrained(path)
    config.eos_token_id = eos
    config.save_pretrained(path)


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


def fms_suite_fixtures(model_class, model_config) -> type:
    """The fixtures of FMS's model test suite (`fms.testing._internal.model_test_suite`) for a
    `model_class` of `model_config`; BatchNorm's buffers get values its random init skips."""
    import pytest
    from fms.testing._internal.model_test_suite import ConfigFixtureMixin, ModelFixtureMixin

    class Fixtures(ConfigFixtureMixin, ModelFixtureMixin):
        @pytest.fixture(scope="class", autouse=True)
        def uninitialized_model(self, config):
            model = model_class(config)
            model.post_init()
            return model

        @pytest.fixture(scope="class", autouse=True)
        def config(self):
            return model_config

        def _maybe_get_initialized_parameter(self, key, parameter):
            if not parameter.is_floating_point():  # BatchNorm's num_batches_tracked
                return parameter.clone()
            if key.endswith("running_var"):
                return torch.rand_like(parameter) + 0.5
            return None

    return Fixtures
