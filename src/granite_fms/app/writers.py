"""Transcripts to files, in the shapes Whisper's command line writes them.

    write(result, "talk", "srt", out_dir)        # out_dir/talk.srt

`result` is one clip's `{"text", "segments": [{"id", "start", "end", "text", ...}], ...}`
(`SpeechPipeline.transcribe(..., return_segments=True)`), times in seconds.

* txt: each segment's text on its own line;
* json: the result as it is;
* srt: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`;
* vtt: `WEBVTT`, then cues `MM:SS.mmm --> MM:SS.mmm` (hours only from one hour on);
* tsv: `start`, `end` (integer milliseconds) and `text` columns with a header.

A JSONL dataset record (one row per clip) is `granite_fms.app.dataset.ResultStore`'s job.
"""

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

FORMATS = ("txt", "json", "srt", "vtt", "tsv")


def format_timestamp(seconds: float, always_include_hours: bool = False, marker: str = ".") -> str:
    """`[HH:]MM:SS<marker>mmm`, rounded to the millisecond."""
    if seconds < 0:
        raise ValueError(f"timestamps must be >= 0, got {seconds}")
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def _cue_text(segment: Mapping[str, Any]) -> str:
    # "-->" inside a cue would read as a timing line.
    return segment["text"].strip().replace("-->", "->")


def write_txt(result: Mapping[str, Any], file: TextIO) -> None:
    for segment in result["segments"]:
        file.write(segment["text"].strip() + "\n")


def write_json(result: Mapping[str, Any], file: TextIO) -> None:
    json.dump(result, file, ensure_ascii=False)


def write_srt(result: Mapping[str, Any], file: TextIO) -> None:
    for i, segment in enumerate(result["segments"], start=1):
        start = format_timestamp(segment["start"], True, ",")
        end = format_timestamp(segment["end"], True, ",")
        file.write(f"{i}\n{start} --> {end}\n{_cue_text(segment)}\n\n")


def write_vtt(result: Mapping[str, Any], file: TextIO) -> None:
    file.write("WEBVTT\n\n")
    for segment in result["segments"]:
        start, end = format_timestamp(segment["start"]), format_timestamp(segment["end"])
        file.write(f"{start} --> {end}\n{_cue_text(segment)}\n\n")


def write_tsv(result: Mapping[str, Any], file: TextIO) -> None:
    file.write("start\tend\ttext\n")
    for segment in result["segments"]:
        text = segment["text"].strip().replace("\t", " ")
        file.write(f"{round(1000 * segment['start'])}\t{round(1000 * segment['end'])}\t{text}\n")


WRITERS: dict[str, Callable[[Mapping[str, Any], TextIO], None]] = {
    "txt": write_txt,
    "json": write_json,
    "srt": write_srt,
    "vtt": write_vtt,
    "tsv": write_tsv,
}


def write(result: Mapping[str, Any], name: str, fmt: str, out_dir: str | Path) -> Path:
    """Write `result` to `out_dir/name.fmt`; returns the path."""
    if fmt not in WRITERS:
        raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
    path = Path(out_dir) / f"{name}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        WRITERS[fmt](result, file)
    return path


__all__ = ["FORMATS", "WRITERS", "format_timestamp", "write"]
