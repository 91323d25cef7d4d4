"""Writers: the files Whisper's command line writes, for a result with timed segments."""

import io
import json

import pytest

from granite_fms.app import writers

RESULT = {
    "text": "hello world --> there and\ttab",
    "segments": [
        {"id": 0, "start": 0.0, "end": 2.5, "text": " hello world --> there", "tokens": [1, 2]},
        {"id": 1, "start": 3725.0004, "end": 3730.9996, "text": "and\ttab ", "tokens": [3]},
    ],
    "warnings": [],
}


def render(fmt: str) -> str:
    file = io.StringIO()
    writers.WRITERS[fmt](RESULT, file)
    return file.getvalue()


@pytest.mark.parametrize(
    ("seconds", "hours", "marker", "want"),
    [
        (0.0, False, ".", "00:00.000"),
        (61.2345, False, ".", "01:01.234"),
        (59.9996, False, ".", "01:00.000"),
        (3725.5, False, ".", "01:02:05.500"),
        (2.5, True, ",", "00:00:02,500"),
    ],
)
def test_format_timestamp(seconds, hours, marker, want):
    assert writers.format_timestamp(seconds, hours, marker) == want


def test_negative_timestamp_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        writers.format_timestamp(-1.0)


def test_txt():
    assert render("txt") == "hello world --> there\nand\ttab\n"


def test_srt():
    assert render("srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nhello world -> there\n\n"
        "2\n01:02:05,000 --> 01:02:11,000\nand\ttab\n\n"
    )


def test_vtt():
    assert render("vtt") == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:02.500\nhello world -> there\n\n"
        "01:02:05.000 --> 01:02:11.000\nand\ttab\n\n"
    )


def test_tsv():
    assert render("tsv") == (
        "start\tend\ttext\n0\t2500\thello world --> there\n3725000\t3731000\tand tab\n"
    )


def test_json_is_the_result():
    assert json.loads(render("json")) == RESULT


def test_write_names_the_file_after_the_clip(tmp_path):
    paths = [writers.write(RESULT, "talk", fmt, tmp_path / "out") for fmt in writers.FORMATS]
    assert [p.name for p in paths] == [f"talk.{f}" for f in ("txt", "json", "srt", "vtt", "tsv")]
    assert paths[2].read_text() == render("srt")
    with pytest.raises(ValueError, match="output format must be one of"):
        writers.write(RESULT, "talk", "docx", tmp_path)
