"""Long-form transcription: windows, VAD, per-window budgets, batched windows = alone, warnings.

The recording is made here from the espeak-ng fixtures (`helpers.long_recording`: about 65 s,
sentences with 0.25 s pauses, a 12 s silence in the middle); the model is the tiny 3.3
checkpoint with `word_tokenizer()` (`dirs` in conftest).
"""

import math

import pytest
import torch

from granite_fms.audio import longform
from granite_fms.pipeline import SpeechPipeline
from helpers import DATA, RATE, long_recording

pytestmark = pytest.mark.usefixtures("one_thread")
FOX = DATA / "fox_16k.wav"


@pytest.fixture(scope="module")
def recording() -> tuple[torch.Tensor, tuple[float, float]]:
    return long_recording()


@pytest.fixture(scope="module")
def pipe(dirs) -> SpeechPipeline:
    return SpeechPipeline.from_pretrained(dirs[1])


@pytest.fixture(scope="module")
def default_result(pipe, recording):
    """transcribe() with its defaults (30 s fixed windows, budgets sized from the windows)."""
    return pipe.transcribe(recording[0], return_segments=True)[0]


def _alone(pipe: SpeechPipeline, wave: torch.Tensor, budget: int, prompt: str) -> list[int]:
    return pipe.generate_ids(wave, prompt, max_new_tokens=budget)[0]


# windows


@pytest.mark.parametrize("segmentation", ["fixed", "vad"])
@pytest.mark.parametrize("chunk_length", [5.0, 10.0, 30.0])
def test_no_window_longer_than_chunk_length(recording, segmentation, chunk_length):
    wave = recording[0]
    windows = longform.split(wave, chunk_length, segmentation)
    assert len(windows) > 1
    assert all(0 < len(w) <= chunk_length * RATE for w in windows)
    assert all(a.end <= b.start for a, b in zip(windows, windows[1:], strict=False))


def test_fixed_windows_cover_the_file_in_order(recording):
    wave = recording[0]
    windows = longform.split(wave, 10.0, "fixed")
    assert len(windows) == math.ceil(wave.numel() / (10 * RATE))
    assert windows[0].start == 0 and windows[-1].end == wave.numel()
    assert all(a.end == b.start for a, b in zip(windows, windows[1:], strict=False))
    assert max(map(len, windows)) - min(map(len, windows)) <= 1


def test_vad_skips_the_long_silence_and_cuts_in_pauses(recording):
    wave, (quiet_start, quiet_end) = recording
    windows = longform.split(wave, 10.0, "vad")
    pad = longform.VadConfig().pad
    for w in windows:
        assert w.end / RATE <= quiet_start + pad + 0.05 or w.start / RATE >= quiet_end - pad - 0.05
    # Every sample of speech is in a window.
    loud = (wave.abs() > 0.05).nonzero().flatten()
    covered = torch.zeros(wave.numel(), dtype=torch.bool)
    for w in windows:
        covered[w.start : w.end] = True
    assert covered[loud].all()
    # Windows that touch were cut inside a stretch of speech: each cut lies in a pause.
    cuts = [a.end for a, b in zip(windows, windows[1:], strict=False) if a.end == b.start]
    assert cuts, "a 10 s window must cut the 27 s stretches of speech"
    for cut in cuts:
        assert wave[cut - 160 : cut + 160].abs().max() < 0.01, f"cut at {cut / RATE:.2f} s"


def test_vad_on_silence_finds_nothing(pipe):
    silence = 3e-4 * torch.randn(40 * RATE, generator=torch.Generator().manual_seed(1))
    assert longform.split(silence, 30.0, "vad") == []
    result = pipe.transcribe(silence, segmentation="vad", return_segments=True)[0]
    assert result == {"text": "", "segments": [], "warnings": [result["warnings"][0]]}
    assert "no speech" in result["warnings"][0]


def test_budgets():
    assert longform.budget(30.0, whole_clip=False) == 200
    assert longform.budget(15.0, whole_clip=False) == 100
    assert longform.budget(1.0, whole_clip=False) == 32
    assert longform.budget(2.4, whole_clip=True) == 200
    assert longform.budget(60.0, whole_clip=True) == 400


# the pipeline


def test_segments_cover_the_file_with_budgets_from_their_length(default_result, recording):
    wave = recording[0]
    segments = default_result["segments"]
    assert len(segments) == 3  # 65 s in 30 s windows: three of 21.8 s
    assert segments[0]["start"] == 0 and segments[-1]["end"] == wave.numel() / RATE
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:], strict=False))
    assert [s["id"] for s in segments] == [0, 1, 2]
    for s in segments:
        budget = longform.budget(s["end"] - s["start"], whole_clip=False)
        assert budget < 200 and 0 < len(s["tokens"]) <= budget  # 200 per 30 s of 21.8 s
    texts = [s["text"].strip() for s in segments]
    assert default_result["text"] == " ".join(t for t in texts if t)


def test_batched_windows_equal_each_window_alone(pipe, default_result, recording):
    wave = recording[0]
    prompt = pipe.prompts.user_turn("transcribe")
    for s in default_result["segments"]:
        piece = wave[round(s["start"] * RATE) : round(s["end"] * RATE)]
        budget = longform.budget(s["end"] - s["start"], whole_clip=False)
        assert s["tokens"] == _alone(pipe, piece, budget, prompt)
    assert len({tuple(s["tokens"]) for s in default_result["segments"]}) > 1


def test_two_clips_and_small_batches_change_nothing(pipe, recording):
    wave = recording[0]
    kwargs = dict(chunk_length=10.0, segmentation="vad", return_segments=True, max_new_tokens=4)
    together = pipe.transcribe([wave, FOX], **kwargs)
    in_pairs = pipe.transcribe([wave, FOX], batch_size=2, **kwargs)
    assert together == in_pairs
    assert together[0] == pipe.transcribe(wave, **kwargs)[0]
    windows = longform.split(wave, 10.0, "vad")
    got = [(s["start"], s["end"]) for s in together[0]["segments"]]
    assert got == [(w.start / RATE, w.end / RATE) for w in windows]
    assert len(together[1]["segments"]) == 1


def test_a_clip_shorter_than_chunk_length_is_todays_result(pipe):
    prompt = pipe.prompts.user_turn("transcribe")
    for segmentation in ("fixed", "vad"):
        got = pipe.transcribe(FOX, segmentation=segmentation, return_segments=True)[0]
        assert got["text"] == pipe.generate(FOX, prompt, max_new_tokens=200)[0]
        assert [(s["start"], s["end"]) for s in got["segments"]] == [(0.0, 2.4)]


def test_a_window_that_hits_its_budget_is_in_warnings(pipe, recording, caplog):
    with caplog.at_level("WARNING", logger="granite_fms.pipeline"):
        result = pipe.transcribe(recording[0], max_new_tokens=2, return_segments=True)[0]
    cut = [s for s in result["segments"] if len(s["tokens"]) == 2]
    assert cut, "with 2 tokens some window must run out of budget"
    for s in cut:
        assert any(w.startswith(f"segment {s['id']} (") for w in result["warnings"])
        assert f"audio[0]: segment {s['id']} (" in caplog.text
    assert len(result["warnings"]) == len(cut)


def test_translate_is_long_form_too(pipe, recording):
    wave = recording[0]
    result = pipe.translate(wave, "French", max_new_tokens=3, return_segments=True)[0]
    prompt = pipe.prompts.user_turn("translate", language="French")
    first = result["segments"][0]
    piece = wave[: round(first["end"] * RATE)]
    assert len(result["segments"]) == 3 and first["tokens"] == _alone(pipe, piece, 3, prompt)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(chunk_length=0.5), ValueError, "chunk_length must be at least 1 second"),
        (dict(chunk_length="30"), TypeError, "chunk_length must be a number"),
        (dict(segmentation="silero"), ValueError, "segmentation must be one of"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
        (dict(max_new_tokens=0), ValueError, "at least 1"),
    ],
)
def test_bad_arguments(pipe, recording, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe.transcribe(recording[0], **kwargs)


def test_jobs_and_batches():
    waves = [torch.zeros(10 * RATE), torch.zeros(4 * RATE)]
    plans = [longform.split(w, 3.0) for w in waves]  # 4 windows of 2.5 s, then one of 4 s
    pieces, budgets = longform.jobs(waves, plans, RATE)
    assert [p.numel() for p in pieces] == [int(2.5 * RATE)] * 4 + [2 * RATE] * 2
    assert budgets == [longform.budget(2.5, False)] * 4 + [longform.budget(2.0, False)] * 2
    assert longform.jobs(waves, plans, RATE, 7)[1] == [7] * 6
    calls = []

    def generate(batch, budgets):
        calls.append((sorted(p.numel() for p in batch), budgets))
        return [(p.numel(), b) for p, b in zip(batch, budgets, strict=True)]

    lengths = [1, 5, 3, 4]
    pieces = [torch.zeros(n) for n in lengths]
    got = longform.batched(pieces, [10, 50, 30, 40], 3, generate)
    assert got == [(1, 10), (5, 50), (3, 30), (4, 40)]  # in the windows' order
    assert calls == [([3, 4, 5], (50, 40, 30)), ([1], (10,))]  # longest first
    assert len(longform.batched(pieces, [1] * 4, None, generate)) == 4 and len(calls) == 3
    assert longform.batched([], [], 8, generate) == [] and len(calls) == 3


def test_vad_config_is_checked():
    with pytest.raises(ValueError, match="less than half of min_silence"):
        longform.VadConfig(pad=0.6, min_silence=1.0)
