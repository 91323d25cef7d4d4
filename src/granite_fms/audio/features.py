"""Log-mel features and audio-token counts for Granite Speech.

Matches `transformers.GraniteSpeechFeatureExtractor` run on one clip at a time; see
`GraniteSpeechFeatureExtractor` for why batches are computed clip by clip.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

from granite_fms.checks import is_int
from granite_fms.models.qformer import output_length

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Float audio is expected in [-1, 1]; resampling clipped audio overshoots that a little, while
# int16 samples passed as floats peak in the thousands.
_LOUD_PEAK = 2.0
_SETTINGS = (
    "sample_rate",
    "n_fft",
    "win_length",
    "hop_length",
    "n_mels",
    "window_size",
    "downsample_rate",
)

AudioClip = str | os.PathLike | np.ndarray | Tensor

# The files `load_audio` reads: what libsndfile (soundfile) decodes, by the usual suffixes.
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".caf")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """Read an audio file (`AUDIO_SUFFIXES`: wav, flac, mp3, ogg/opus, ...) as a mono float32
    1-D tensor at `sample_rate`.

    Channels are averaged; other sample rates are resampled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise ValueError(f"could not read audio file {path}: {e}") from e
    if data.shape[0] == 0:
        # Checked before resampling, which fails on an empty signal.
        raise ValueError(f"empty audio (0 samples) in {path}")
    wave = torch.from_numpy(data).mean(dim=1)
    if file_rate != sample_rate:
        wave = torchaudio.functional.resample(wave, file_rate, sample_rate)
    return wave


def encoder_frame_count(num_samples: int, hop_length: int = 160) -> int:
    """Number of encoder frames (pairs of mel frames) for a clip of `num_samples`."""
    return (num_samples // hop_length + 1) // 2


def audio_token_count(
    num_samples: int, hop_length: int = 160, window_size: int = 15, downsample_rate: int = 5
) -> int:
    """Number of `<|audio|>` embeddings the projector makes for a clip of `num_samples`."""
    return output_length(encoder_frame_count(num_samples, hop_length), window_size, downsample_rate)


@dataclass
class AudioFeatures:
    """A padded batch of encoder inputs.

    `input_features_mask` marks each clip's valid encoder frames, so it has the same length as
    `input_features`; note that HF's mask of that name is over projector outputs instead.
    `model(**features)` passes `input_features` and `input_features_mask`.
    """

    input_features: Tensor  # (B, T, 2 * n_mels) float32, zero after each clip's end
    input_features_mask: Tensor  # (B, T) bool
    audio_token_counts: Tensor  # (B,) int64, `<|audio|>` placeholders each clip needs

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "AudioFeatures":
        """Move to `device`; `dtype`, if given, applies to `input_features` only."""
        return AudioFeatures(
            self.input_features.to(device, dtype),
            self.input_features_mask.to(device),
            self.audio_token_counts.to(device),
        )

    def as_dict(self) -> dict[str, Tensor]:
        return {k: self[k] for k in self.keys()}

    def keys(self) -> tuple[str, ...]:
        return ("input_features", "input_features_mask")

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)


def clip_name(clip: AudioClip, index: int) -> str:
    """How errors name clip `index` of a request: a file by its path, an array by its index."""
    return str(clip) if isinstance(clip, str | os.PathLike) else f"audio[{index}]"


def clip_list(audio: AudioClip | list[AudioClip]) -> list[AudioClip]:
    """One clip or a list of clips, as a list (a request is a batch)."""
    clips = list(audio) if isinstance(audio, list | tuple) else [audio]
    if not clips:
        raise ValueError("empty list of audio clips")
    return clips


class GraniteSpeechFeatureExtractor:
    """Audio clips -> stacked log-mel frames, as the Granite Speech conformer expects."""

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        window_size: int = 15,
        downsample_rate: int = 5,
    ):
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.window_size = window_size
        self.downsample_rate = downsample_rate
        for name in _SETTINGS:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"feature extractor {name} must be a positive int, got {value!r}")
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        # The centered STFT reflect-pads n_fft // 2 samples, which needs a longer input; and one
        # encoder frame needs two mel frames.
        self.min_samples = max(hop_length, n_fft // 2 + 1)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            n_mels=n_mels,
        )

    def encoder_frames(self, seconds: float) -> int:
        """Encoder frames of a clip of `seconds`."""
        return encoder_frame_count(int(seconds * self.sample_rate), self.hop_length)

    def num_audio_tokens(self, num_samples: int) -> int:
        """Number of `<|audio|>` placeholders a clip of `num_samples` needs."""
        return audio_token_count(
            num_samples, self.hop_length, self.window_size, self.downsample_rate
        )

    def __call__(
        self, audio: AudioClip | list[AudioClip], sampling_rate: int | None = None
    ) -> AudioFeatures:
        """Features for one clip or a list of clips.

        A clip is an audio file path (resampled and downmixed as needed) or a 1-D float array or
        tensor at `self.sample_rate`; `sampling_rate`, if given, must match it for arrays.
        """
        clips = clip_list(audio)
        waves = self.waveforms(clips, sampling_rate)
        # One clip at a time: HF runs the STFT on the zero-padded batch, so a clip's last frame
        # (zeros, not reflect padding, past its end) depends on its batchmates; ours does not.
        names = [clip_name(clip, i) for i, clip in enumerate(clips)]
        feats = [self._log_mel(w, n) for w, n in zip(waves, names, strict=True)]
        lengths = torch.tensor([f.shape[0] for f in feats])
        return AudioFeatures(
            input_features=torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
            input_features_mask=torch.arange(int(lengths.max()))[None, :] < lengths[:, None],
            audio_token_counts=torch.tensor(
                [self.num_audio_tokens(w.numel()) for w in waves], dtype=torch.int64
            ),
        )

    def waveforms(
        self, audio: AudioClip | list[AudioClip], sampling_rate: int | None = None
    ) -> list[Tensor]:
        """`waveform` of one clip or of each clip of a list (errors name an array `audio[i]`)."""
        return [self.waveform(c, sampling_rate, i) for i, c in enumerate(clip_list(audio))]

    def waveform(self, clip: AudioClip, sampling_rate: int | None = None, index: int = 0) -> Tensor:
        """Load or check one clip as `__call__` does: a float32 1-D CPU tensor at
        `self.sample_rate`. Errors name a file by its path, an array as `audio[index]`."""
        return self._waveform(clip, sampling_rate, clip_name(clip, index))

    def _waveform(self, clip: AudioClip, sampling_rate: int | None, where: str) -> Tensor:
        """Load or check one clip; returns a float32 1-D CPU tensor."""
        if isinstance(clip, str | os.PathLike):
            wave = load_audio(clip, self.sample_rate)
        elif isinstance(clip, np.ndarray | Tensor):
            wave = self._check_array(clip, sampling_rate, where)
        else:
            raise TypeError(
                f"{where}: unsupported type {type(clip).__name__}; pass a file path, "
                "a 1-D numpy array or a 1-D torch tensor"
            )
        if wave.numel() == 0:
            raise ValueError(f"{where}: empty audio (0 samples)")
        if wave.numel() < self.min_samples:
            raise ValueError(
                f"{where}: audio too short ({wave.numel()} samples); need at least "
                f"{self.min_samples} samples at {self.sample_rate} Hz"
            )
        if not torch.isfinite(wave).all():
            raise ValueError(f"{where}: audio contains NaN or inf values")
        peak = float(wave.abs().max())
        if peak > _LOUD_PEAK:
            logger.warning(
                "%s: peak sample %.3g is outside [-1, 1]; float audio is expected in [-1, 1] "
                "(int16 samples / 32768)",
                where,
                peak,
            )
        return wave

    def _check_array(
        self, clip: np.ndarray | Tensor, sampling_rate: int | None, where: str
    ) -> Tensor:
        if sampling_rate is not None and sampling_rate != self.sample_rate:
            raise ValueError(
                f"{where}: expected {self.sample_rate} Hz, got {sampling_rate} Hz; file paths are "
                "resampled automatically, arrays are not: use torchaudio.functional.resample"
            )
        if clip.ndim != 1:
            raise ValueError(
                f"{where}: expected a 1-D mono clip, got shape {tuple(clip.shape)}; ambiguous: "
                "stereo or a batch? Pass a list of 1-D mono clips, or downmix with .mean(axis=0)"
            )
        is_numpy = isinstance(clip, np.ndarray)
        if not (np.issubdtype(clip.dtype, np.floating) if is_numpy else clip.is_floating_point()):
            raise ValueError(
                f"{where}: audio has dtype {clip.dtype}; convert to float in [-1, 1] "
                "(e.g. int16 samples / 32768)"
            )
        if is_numpy:
            return torch.from_numpy(clip.astype(np.float32))
        return clip.detach().to("cpu", torch.float32)

    @torch.no_grad()
    def _log_mel(self, wave: Tensor, where: str) -> Tensor:
        """(num_samples,) -> (encoder_frames, 2 * n_mels)."""
        logmel = scaled_log_mel(self.mel(wave), wave, where)
        frames = logmel.shape[0] // 2 * 2
        return logmel[:frames].reshape(-1, 2 * self.n_mels)


def scaled_log_mel(power: Tensor, wave: Tensor, where: str, floor_db: float = 8.0) -> Tensor:
    """Mel power (n_mels, frames) -> (frames, n_mels): log10, floored `floor_db` below the
    clip's maximum, then /4 + 1 (Granite Speech's scaling). `wave` and `where` name the clip in
    the error for audio whose power overflows."""
    logmel = power.T.clamp_min(1e-10).log10()
    if not torch.isfinite(logmel).all():
        # HF returns these inf/NaN features; a model fed them answers with nonsense.
        raise ValueError(
            f"{where}: the mel power overflows float32 (peak sample "
            f"{float(wave.abs().max()):.3g}); audio must be float samples in [-1, 1]"
        )
    return torch.maximum(logmel, logmel.max() - floor_db) / 4 + 1
