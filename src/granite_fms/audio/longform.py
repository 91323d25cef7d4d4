"""Audio of any length: windows no longer than `chunk_length`, decoded as one batch, joined.

    windows = split(wave, chunk_length=30.0, segmentation="vad")   # [Window(start, end), ...]

`SpeechPipeline.transcribe` / `translate` (and `CTCPipeline.transcribe`) run these steps, as
`LongFormOptions` say, through `decode`: `split` each clip into windows; `jobs`: every window's
samples and new-token budget; `batched`: the model on batches of windows, the longest first
(padding never changes a row, so a batched window gets the tokens it gets alone). Then
`transcripts`: each clip's windows put back together.

Two segmentations:

* "fixed": `ceil(duration / chunk_length)` windows of equal length, end to end, so they cover
  the file with no gap and no overlap. Equal lengths rather than full windows and a remainder:
  a remainder can be a fraction of a second, too little context to transcribe well.
* "vad": energy-based voice activity detection (`VadConfig`). Silences of at least
  `min_silence` seconds are skipped (but `pad` either side of speech); a stretch of speech
  longer than `chunk_length` is cut in its latest pause that leaves the window at least half
  full, else at the quietest frame there.

A clip no longer than `chunk_length` is one window whatever the segmentation, so it decodes
exactly as `SpeechPipeline.generate` decodes it.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict, TypeVar

import torch
import torch.nn.functional as F

from granite_fms.checks import check_positive_int, is_int, is_number

Segmentation = Literal["fixed", "vad"]
SEGMENTATIONS = ("fixed", "vad")

T = TypeVar("T")
Progress = Callable[[float], None]  # audio seconds decoded by one generation call

TOKENS_PER_30S = 200  # the model cards' max_new_tokens for a clip of up to 30 s
MIN_WINDOW_TOKENS = 32
BATCH_SIZE = 8  # windows per generation call: the API's and the command line's default


@dataclass(frozen=True)
class Window:
    """Samples [start, end) of a clip."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class VadConfig:
    """Energy-based voice activity detection; durations in seconds, levels in dB.

    A frame is speech if its level is above `threshold_db` below the reference level (the 95th
    percentile of all frame levels, so a click does not set it) and above `min_level_db` dBFS.
    Silences shorter than `min_pause` are gaps between sounds, not pauses; speech shorter than
    `min_speech` is a click; a silence of at least `min_silence` ends a stretch of speech.
    """

    frame: float = 0.02
    threshold_db: float = 40.0
    min_level_db: float = -60.0
    min_pause: float = 0.15
    min_speech: float = 0.1
    min_silence: float = 1.0
    pad: float = 0.2

    def __post_init__(self):
        for name in ("frame", "threshold_db", "min_pause", "min_speech", "min_silence"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VadConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= 2 * self.pad < self.min_silence:
            raise ValueError(
                f"VadConfig.pad ({self.pad}) must be >= 0 and less than half of min_silence "
                f"({self.min_silence}), or the padded stretches would overlap"
            )


class Segment(TypedDict):
    id: int
    start: float  # seconds from the start of the file
    end: float
    text: str
    tokens: list[int]


class Transcript(TypedDict):
    text: str
    segments: list[Segment]
    warnings: list[str]


@dataclass(frozen=True)
class LongFormOptions:
    """How clips of any length are cut into windows, batched and returned (checked when built)."""

    # Longest window in seconds (at least 1); a longer clip is cut into windows.
    chunk_length: float = 30.0
    # "fixed": equal windows end to end; "vad": long silences skipped, cuts in pauses.
    segmentation: Segmentation = "fixed"
    # Windows per generation call, the longest first (8: a batch bucket of the default
    # `BucketPolicy`); None: every window of every clip in one call.
    batch_size: int | None = BATCH_SIZE
    # Each clip's `Transcript` (text, timed segments, warnings) instead of its text.
    return_segments: bool = False

    def __post_init__(self):
        _check_windows(self.chunk_length, self.segmentation)
        check_positive_int("batch_size", self.batch_size, none=True)
        if not isinstance(self.return_segments, bool):
            raise TypeError(f"return_segments must be a bool, got {self.return_segments!r}")

    def output(self, results: list[Transcript]) -> list[str] | list[Transcript]:
        """The results as asked: each clip's `Transcript`, or its text."""
        return results if self.return_segments else [r["text"] for r in results]


def check_chunk_length(chunk_length: float) -> None:
    if not is_number(chunk_length):
        raise TypeError(f"chunk_length must be a number of seconds, got {chunk_length!r}")
    if not (math.isfinite(chunk_length) and chunk_length >= 1.0):
        raise ValueError(f"chunk_length must be at least 1 second, got {chunk_length}")


def _check_windows(chunk_length: float, segmentation: str) -> None:
    check_chunk_length(chunk_length)
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")


def split(
    wave: torch.Tensor,
    chunk_length: float = 30.0,
    segmentation: Segmentation = "fixed",
    sample_rate: int = 16000,
    vad: VadConfig | None = None,
) -> list[Window]:
    """Windows of a 1-D waveform, in order, none longer than `chunk_length` seconds."""
    _check_windows(chunk_length, segmentation)
    chunk = int(chunk_length * sample_rate)
    n = wave.numel()
    if n <= chunk:
        return [Window(0, n)]
    if segmentation == "fixed":
        return fixed_windows(n, chunk)
    return vad_windows(wave, chunk, sample_rate, vad or VadConfig())


def fixed_windows(num_samples: int, chunk: int) -> list[Window]:
    """The fewest windows of at most `chunk` samples, of equal length (+-1 sample), end to end."""
    count = -(-num_samples // chunk)
    bounds = [i * num_samples // count for i in range(count + 1)]
    return [Window(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def frame_levels(wave: torch.Tensor, hop: int) -> torch.Tensor:
    """Level (dBFS: mean square re full scale) of each `hop`-sample frame; the last is padded."""
    frames = -(-wave.numel() // hop)
    padded = F.pad(wave.float(), (0, frames * hop - wave.numel()))
    return 10 * torch.log10(padded.view(frames, hop).pow(2).mean(1) + 1e-12)


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = torch.diff(F.pad(mask.int(), (1, 1))).tolist()
    starts = [i for i, d in enumerate(edges) if d == 1]
    ends = [i for i, d in enumerate(edges) if d == -1]
    return list(zip(starts, ends, strict=True))


def vad_windows(wave: torch.Tensor, chunk: int, sample_rate: int, cfg: VadConfig) -> list[Window]:
    """Windows over the speech of `wave`, skipping long silences, cut in pauses."""
    hop = max(1, round(cfg.frame * sample_rate))
    level = frame_levels(wave, hop)
    reference = float(torch.quantile(level, 0.95))
    speech = level > max(reference - cfg.threshold_db, cfg.min_level_db)
    frames = speech.numel()

    def count(seconds: float) -> int:
        return math.ceil(seconds * sample_rate / hop)

    for a, b in _runs(~speech):
        if b - a < count(cfg.min_pause) and a > 0 and b < frames:
            speech[a:b] = True
    for a, b in _runs(speech):
        if b - a < count(cfg.min_speech):
            speech[a:b] = False

    stretches: list[tuple[int, int, list[int]]] = []  # first, end frame; pause midpoints
    for a, b in _runs(speech):
        if stretches and a - stretches[-1][1] < count(cfg.min_silence):
            first, last, pauses = stretches[-1]
            stretches[-1] = (first, b, [*pauses, (last + a) * hop // 2])
        else:
            stretches.append((a, b, []))
    pad = round(cfg.pad * sample_rate)
    windows: list[Window] = []
    for a, b, pauses in stretches:
        start, end = max(0, a * hop - pad), min(wave.numel(), b * hop + pad)
        windows += _cut(start, end, chunk, pauses, level, hop)
    return windows


def _cut(
    start: int, end: int, chunk: int, pauses: Sequence[int], level: torch.Tensor, hop: int
) -> list[Window]:
    """[start, end) in windows of at most `chunk` samples, each at least half full and the last
    at least a quarter: cut in the latest pause that allows it, else at the quietest frame."""
    windows = []
    while end - start > chunk:
        lo, hi = start + chunk // 2, min(start + chunk, end - chunk // 4)
        inside = [p for p in pauses if lo < p <= hi]
        if inside:
            cut = inside[-1]
        else:
            first = lo // hop + 1  # frames whose first sample lies in (lo, hi]
            cut = (first + int(level[first : hi // hop + 1].argmin())) * hop
        windows.append(Window(start, cut))
        start = cut
    windows.append(Window(start, end))
    return windows


def budget(seconds: float, whole_clip: bool) -> int:
    """New-token budget of a window: 200 per 30 s of audio. A clip that is not cut gets at
    least 200 (the model cards' `max_new_tokens`, a request's default), a window of a cut clip
    at least 32."""
    sized = math.ceil(TOKENS_PER_30S * seconds / 30)
    return max(sized, TOKENS_PER_30S if whole_clip else MIN_WINDOW_TOKENS)


@dataclass(frozen=True)
class ContextFit:
    """Windows and budgets that fit the LLM's positions: a window's prompt text, its audio
    tokens and its new-token budget together take at most `max_positions`.

    chunk_length: the longest window, capped from the one asked for where that did not fit.
    notes: what was capped, in words (empty if nothing was).
    """

    chunk_length: float
    prompt_tokens: int
    max_positions: int
    notes: tuple[str, ...] = ()

    def budget(self, asked: int, audio_tokens: int) -> int:
        """`asked`, capped at what a window of `audio_tokens` leaves of the positions."""
        return min(asked, self.max_positions - self.prompt_tokens - audio_tokens)


def fit_context(
    chunk_length: float,
    max_new_tokens: int | None,
    prompt_tokens: int,
    max_positions: int,
    audio_tokens: Callable[[int], int],
    sample_rate: int = 16000,
) -> ContextFit:
    """The longest window (at most `chunk_length`, at least 1 s) whose prompt, audio tokens
    (`audio_tokens(samples)`) and budget (`max_new_tokens`, or `budget` of a cut window) fit
    `max_positions`. ValueError if not even 1 s fits: the prompt leaves no room."""
    check_chunk_length(chunk_length)

    def fits(samples: int) -> bool:
        wanted = budget(samples / sample_rate, whole_clip=False)
        wanted = wanted if max_new_tokens is None else min(wanted, max_new_tokens)
        return prompt_tokens + audio_tokens(samples) + wanted <= max_positions

    asked = int(chunk_length * sample_rate)
    if fits(asked):
        fitted, notes = chunk_length, []
    else:
        low, high = sample_rate, asked  # 1 s fits; find the last length that does
        if not fits(low):
            raise ValueError(
                f"the prompt ({prompt_tokens} tokens) leaves no room for 1 s of audio and its "
                f"new tokens in the model's {max_positions} positions "
                "(text_config.max_expected_seq_len); shorten the prompt or its keywords"
            )
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        fitted = max(1.0, math.floor(10 * low / sample_rate) / 10)
        notes = [
            f"windows of {chunk_length:g} s do not fit the model's {max_positions} positions "
            f"with a {prompt_tokens}-token prompt: windows are cut at {fitted:g} s instead"
        ]
    room = max_positions - prompt_tokens - audio_tokens(int(fitted * sample_rate))
    if max_new_tokens is not None and max_new_tokens > room:
        notes.append(
            f"max_new_tokens {max_new_tokens} does not fit the model's {max_positions} "
            f"positions: each window's budget is capped at what its prompt and audio leave "
            f"({room} for a window of {fitted:g} s)"
        )
    return ContextFit(fitted, prompt_tokens, max_positions, tuple(notes))


def jobs(
    waves: Sequence[torch.Tensor],
    plans: Sequence[Sequence[Window]],
    sample_rate: int,
    max_new_tokens: int | None = None,
    fit: ContextFit | None = None,
    audio_tokens: Callable[[int], int] | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """The generation jobs of all clips: the samples of every window, in order, and its budget
    (`max_new_tokens` for every window, or None: each its own, `budget`), capped by a `fit` at
    what the window's audio tokens (`audio_tokens(samples)`) leave of the positions."""
    if not (max_new_tokens is None or is_int(max_new_tokens)):
        raise TypeError(
            f"long form takes one max_new_tokens for every window, got {max_new_tokens}"
        )
    pieces, budgets = [], []
    for wave, plan in zip(waves, plans, strict=True):
        for window in plan:
            pieces.append(wave[window.start : window.end])
            whole = len(window) == wave.numel()
            asked = max_new_tokens or budget(len(window) / sample_rate, whole)
            budgets.append(asked if fit is None else fit.budget(asked, audio_tokens(len(window))))
    return pieces, budgets


def batched(
    pieces: Sequence[torch.Tensor],
    budgets: Sequence[int],
    batch_size: int | None,
    generate: Callable[[list[torch.Tensor], tuple[int, ...]], list[T]],
    progress: Progress | None = None,
    sample_rate: int = 16000,
) -> list[T]:
    """`generate(windows, budgets)` on batches of `batch_size` windows (None: one batch), the
    longest first, so that a batch pads little and memory peaks come early; results in order.
    `progress` is called after each batch with the seconds of audio it decoded."""
    order = sorted(range(len(pieces)), key=lambda i: -pieces[i].numel())
    size = batch_size or max(1, len(order))
    out: list = [None] * len(pieces)
    for first in range(0, len(order), size):
        rows = order[first : first + size]
        results = generate([pieces[i] for i in rows], tuple(budgets[i] for i in rows))
        for i, result in zip(rows, results, strict=True):
            out[i] = result
        if progress is not None:
            progress(sum(pieces[i].numel() for i in rows) / sample_rate)
    return out


def decode(
    waves: Sequence[torch.Tensor],
    options: LongFormOptions,
    generate: Callable[[list[torch.Tensor], tuple[int, ...]], list[T]],
    fit: ContextFit | None = None,
    max_new_tokens: int | None = None,
    audio_tokens: Callable[[int], int] | None = None,
    progress: Progress | None = None,
    sample_rate: int = 16000,
) -> tuple[list[list[Window]], list[int], list[T]]:
    """Each wave's windows (`split`, at most `fit.chunk_length` if fitted, else the options'),
    every window's budget (`jobs`) and, in window order, `generate`'s result for it
    (`batched`)."""
    chunk = options.chunk_length if fit is None else fit.chunk_length
    plans = [split(w, chunk, options.segmentation, sample_rate) for w in waves]
    pieces, budgets = jobs(waves, plans, sample_rate, max_new_tokens, fit, audio_tokens)
    out = batched(pieces, budgets, options.batch_size, generate, progress, sample_rate)
    return plans, budgets, out


class Decoded(Protocol):
    """What generation gives for a window: its new tokens and whether they ended with an EOS."""

    tokens: list[int]
    finished: bool


def transcripts(
    plans: Sequence[Sequence[Window]],
    decoded: Sequence[Decoded],
    texts: Sequence[str],
    budgets: Sequence[int],
    sample_rate: int,
    stops: bool,
) -> list[Transcript]:
    """Each clip's result from its windows (`plans`) and, for the windows of all clips in
    order, what generation gave (`decoded`), their texts and budgets.

    stops: whether generation had an EOS id; without one every row runs its whole budget and
    that is not worth a warning.
    """
    out, k = [], 0
    for windows in plans:
        segments: list[Segment] = []
        warnings: list[str] = []
        for i, window in enumerate(windows):
            start, end = window.start / sample_rate, window.end / sample_rate
            segments.append(
                Segment(id=i, start=start, end=end, text=texts[k], tokens=decoded[k].tokens)
            )
            if stops and not decoded[k].finished:
                warnings.append(
                    f"segment {i} ({start:.2f}-{end:.2f} s) used its whole budget of {budgets[k]} "
                    "new tokens without an end of text: its text may be cut"
                )
            k += 1
        if not windows:
            warnings.append("no speech found: nothing was transcribed")
        text = join([s["text"] for s in segments])
        out.append(Transcript(text=text, segments=segments, warnings=warnings))
    return out


def join(texts: Sequence[str]) -> str:
    """Texts of consecutive windows as one; a single window's text is kept as it is."""
    if len(texts) == 1:
        return texts[0]
    return " ".join(t.strip() for t in texts if t.strip())


__all__ = [
    "BATCH_SIZE",
    "SEGMENTATIONS",
    "ContextFit",
    "Decoded",
    "LongFormOptions",
    "Progress",
    "Segment",
    "Transcript",
    "VadConfig",
    "Window",
    "batched",
    "budget",
    "decode",
    "fit_context",
    "fixed_windows",
    "jobs",
    "split",
    "transcripts",
    "vad_windows",
]
