"""GenerationOptions and LongFormOptions: checked when built, passed whole through every layer."""

from dataclasses import FrozenInstanceError

import pytest

from granite_fms.app.dataset import Request
from granite_fms.audio.longform import LongFormOptions
from granite_fms.checks import token_ids
from granite_fms.inference.options import GenerationOptions
from granite_fms.pipeline import SpeechPipeline
from helpers import DATA

FOX = DATA / "fox_16k.wav"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(num_beams=2.5),
            ValueError,
            r"num_beams must be a positive int \(at least 1\), got 2.5",
        ),
        (dict(num_beams=True), ValueError, "num_beams must be a positive int .*, got True"),
        (dict(num_beams=0), ValueError, r"num_beams must be a positive int \(at least 1\), got 0"),
        (dict(max_new_tokens="200"), ValueError, "max_new_tokens must be a positive int"),
        (dict(max_new_tokens=[3, 0]), ValueError, "max_new_tokens must be a positive int"),
        (dict(max_new_tokens=[]), ValueError, "one per request, got"),
        (dict(eos_token_id="0"), TypeError, "eos_token_id must be an int or a list of ints"),
        (dict(eos_token_id=[0, 1.0]), TypeError, "eos_token_id must be an int or a list"),
    ],
)
def test_generation_options_are_checked_when_built(kwargs, error, match):
    with pytest.raises(error, match=match):
        GenerationOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(batch_size="4"), ValueError, "batch_size must be a positive int .*, got '4'"),
        (dict(batch_size=0), ValueError, r"batch_size must be a positive int \(at least 1\)"),
        (dict(chunk_length="30"), TypeError, "chunk_length must be a number of seconds"),
        (dict(chunk_length=float("inf")), ValueError, "chunk_length must be at least 1 second"),
        (dict(segmentation="silero"), ValueError, "segmentation must be one of"),
        (dict(return_segments="yes"), TypeError, "return_segments must be a bool"),
    ],
)
def test_long_form_options_are_checked_when_built(kwargs, error, match):
    with pytest.raises(error, match=match):
        LongFormOptions(**kwargs)


def test_options_are_frozen_values_with_normalised_fields():
    options = GenerationOptions(max_new_tokens=[3, 4], eos_token_id=0)
    assert options.max_new_tokens == (3, 4) and options.eos_token_id == (0,)
    assert options.budgets(2) == [3, 4]
    assert GenerationOptions().budgets(3) == [200, 200, 200]
    with pytest.raises(ValueError, match="2 max_new_tokens values for 1 requests"):
        options.budgets(1)
    with pytest.raises(FrozenInstanceError):
        options.num_beams = 4
    assert LongFormOptions().batch_size == 8  # bounded by default, as the CLI's --batch_size
    assert token_ids("ids", None) is None and token_ids("ids", [5, 6]) == (5, 6)


@pytest.fixture(scope="module")
def pipe(dirs) -> SpeechPipeline:
    return SpeechPipeline.from_pretrained(dirs[1])


def test_keywords_and_options_values_give_the_same_result(pipe):
    kwargs = dict(max_new_tokens=5, num_beams=2, chunk_length=2.0, return_segments=True)
    by_keyword = pipe.transcribe(FOX, **kwargs)
    segments = by_keyword[0]["segments"]
    assert len(segments) > 1 and all(len(s["tokens"]) <= 5 for s in segments)
    by_value = pipe.transcribe(
        FOX,
        long_form=LongFormOptions(chunk_length=2.0, return_segments=True),
        generation=GenerationOptions(max_new_tokens=5, num_beams=2),
    )
    assert by_keyword == by_value
    # keywords replace fields of the values given
    changed = pipe.transcribe(
        FOX, long_form=LongFormOptions(chunk_length=30.0), chunk_length=2.0, max_new_tokens=5
    )
    assert changed == pipe.transcribe(FOX, chunk_length=2.0, max_new_tokens=5)


def test_a_bad_option_is_refused_before_any_audio_is_read(pipe):
    with pytest.raises(ValueError, match="num_beams must be a positive int .*, got 2.5"):
        pipe.transcribe("no-such-file.wav", num_beams=2.5)
    with pytest.raises(ValueError, match="batch_size must be a positive int .*, got '4'"):
        pipe.transcribe("no-such-file.wav", batch_size="4")
    with pytest.raises(TypeError, match=r"unknown options \['chunk_lenght'\]"):
        pipe.transcribe("no-such-file.wav", chunk_lenght=20)
    with pytest.raises(TypeError, match=r"unknown options \['chunk_length'\]"):
        pipe.generate_ids("no-such-file.wav", chunk_length=20)


def test_options_eos_ids_override_the_pipeline(pipe):
    free = pipe.run(FOX, max_new_tokens=6, eos_token_id=())[0]
    assert len(free.tokens) == 6 and not free.finished
    stop = free.tokens[2]
    stopped = pipe.run(FOX, max_new_tokens=6, eos_token_id=[stop])[0]
    assert stopped.tokens == free.tokens[: free.tokens.index(stop)] and stopped.finished


def test_a_request_passes_its_options_through(pipe):
    request = Request(
        keywords=("French",),
        long_form=LongFormOptions(chunk_length=2.0, batch_size=2),
        generation=GenerationOptions(max_new_tokens=3),
    )
    got = request.apply(pipe, [pipe.processor.feature_extractor.waveform(FOX)])[0]
    want = pipe.transcribe(
        FOX, keywords=["French"], chunk_length=2.0, max_new_tokens=3, return_segments=True
    )[0]
    assert got == want and len(got["segments"]) > 1
