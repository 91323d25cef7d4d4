"""Log-mel features with deltas for Granite Speech 5.0 (TurboCTC).

Matches `transformers.GraniteSpeech5FeatureExtractor` run on one clip at a time. HF computes a
batch's spectrogram on the zero-padded waveforms, so a clip's last frames see its batchmates'
padding (zeros, not the reflect padding of its own end); here every clip is computed alone and
then padded, so its features never depend on the batch.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

from granite_fms.audio.features import (
    AudioClip,
    GraniteSpeechFeatureExtractor,
    clip_list,
    clip_name,
    scaled_log_mel,
)
from granite_fms.files import read_json

PREPROCESSOR_CONFIG = "preprocessor_config.json"
FEATURE_EXTRACTOR_TYPE = "GraniteSpeech5FeatureExtractor"
# preprocessor_config.json key (HF's name) -> GraniteSpeech5FeatureExtractor argument.
MEL_SETTINGS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels")
_PREPROCESSOR_KEYS = {
    "sampling_rate": "sample_rate",
    "n_fft": "n_fft",
    "win_length": "win_length",
    "hop_length": "hop_length",
    "num_mel_bins": "n_mels",
    "delta_win_length": "delta_win_length",
    "logmel_floor_db": "floor_db",
}


@dataclass
class CTCFeatures:
    """A padded batch of encoder inputs; `model(*features)` runs it."""

    input_features: Tensor  # (B, T, 4 * n_mels) float32, zero after each clip's end
    input_features_mask: Tensor  # (B, T) bool, each clip's frames

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "CTCFeatures":
        """Move to `device`; `dtype`, if given, applies to `input_features` only."""
        return CTCFeatures(
            self.input_features.to(device, dtype), self.input_features_mask.to(device)
        )

    def __iter__(self):
        return iter((self.input_features, self.input_features_mask))


class GraniteSpeech5FeatureExtractor:
    """Audio clips -> (B, T, 4 * n_mels) features at 50 Hz: each 10 ms log-mel frame with its
    delta, pairs of frames stacked; a clip of n samples has ceil((n // hop) / 2) frames.

    Loading, resampling, the input checks and the mel spectrogram are 3.x's
    (`GraniteSpeechFeatureExtractor`); the frames differ (deltas, a last odd frame kept).
    """

    def __init__(self, delta_win_length: int = 3, floor_db: float = 8.0, **mel: int):
        """mel: the log-mel settings (`sample_rate`, `n_fft`, `win_length`, `hop_length`,
        `n_mels`), by default 3.x's (`GraniteSpeechFeatureExtractor`)."""
        unknown = sorted(set(mel) - set(MEL_SETTINGS))
        if unknown:
            raise TypeError(f"unknown settings {unknown}: the mel settings are {MEL_SETTINGS}")
        self.reader = GraniteSpeechFeatureExtractor(**mel)
        if not isinstance(delta_win_length, int) or delta_win_length < 3:
            raise ValueError(f"delta_win_length must be an int >= 3, got {delta_win_length!r}")
        if not floor_db > 0:
            raise ValueError(f"floor_db must be positive, got {floor_db!r}")
        self.delta_win_length = delta_win_length
        self.floor_db = float(floor_db)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "GraniteSpeech5FeatureExtractor":
        """The extractor `preprocessor_config.json` in `path` describes (defaults without one)."""
        file = Path(path) / PREPROCESSOR_CONFIG
        cfg = read_json(file) if file.is_file() else {}
        kind = cfg.get("feature_extractor_type", FEATURE_EXTRACTOR_TYPE)
        if kind != FEATURE_EXTRACTOR_TYPE:
            raise ValueError(
                f"{file}: feature_extractor_type {kind!r} is not {FEATURE_EXTRACTOR_TYPE!r}"
            )
        try:
            return cls(**{ours: cfg[hf] for hf, ours in _PREPROCESSOR_KEYS.items() if hf in cfg})
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from e

    @property
    def sample_rate(self) -> int:
        return self.reader.sample_rate

    @property
    def hop_length(self) -> int:
        return self.reader.hop_length

    @property
    def n_mels(self) -> int:
        return self.reader.n_mels

    def frame_count(self, num_samples: int) -> int:
        """Encoder frames of a clip of `num_samples`."""
        return -(-(num_samples // self.hop_length) // 2)

    def waveforms(
        self, audio: AudioClip | list[AudioClip], sampling_rate: int | None = None
    ) -> list[Tensor]:
        """`waveform` of one clip or of each clip of a list (see 3.x's `waveforms`)."""
        return self.reader.waveforms(audio, sampling_rate)

    def waveform(self, clip: AudioClip, sampling_rate: int | None = None, index: int = 0) -> Tensor:
        """One clip as a checked float32 1-D tensor at `sample_rate` (see 3.x's `waveform`)."""
        return self.reader.waveform(clip, sampling_rate, index)

    def __call__(
        self, audio: AudioClip | list[AudioClip], sampling_rate: int | None = None
    ) -> CTCFeatures:
        """Features for one clip or a list of clips (wav/flac paths, or 1-D float arrays or
        tensors at `sample_rate`), each computed alone, then zero-padded to the longest."""
        clips = clip_list(audio)
        feats = [
            self.features(self.waveform(clip, sampling_rate, i), clip_name(clip, i))
            for i, clip in enumerate(clips)
        ]
        lengths = torch.tensor([f.shape[0] for f in feats])
        return CTCFeatures(
            input_features=torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
            input_features_mask=torch.arange(int(lengths.max()))[None, :] < lengths[:, None],
        )

    @torch.no_grad()
    def features(self, wave: Tensor, where: str = "audio") -> Tensor:
        """(num_samples,) checked waveform -> (frames, 4 * n_mels)."""
        hop = self.hop_length
        frames = 2 * self.frame_count(wave.numel())
        # An odd last mel frame is kept: the waveform is zero-padded so that the centred
        # spectrogram has one more frame to pair it with, as HF does.
        wave = F.pad(wave, (0, max(0, (frames - 1) * hop + 1 - wave.numel())))
        power = self.reader.mel(wave)[:, :frames]
        logmel = scaled_log_mel(power, wave, where, self.floor_db)  # (frames, n_mels)
        deltas = torchaudio.functional.compute_deltas(logmel.T, self.delta_win_length).T
        return torch.cat([logmel, deltas], dim=1).reshape(-1, 4 * self.n_mels)


__all__ = ["CTCFeatures", "GraniteSpeech5FeatureExtractor"]
