"""Transcribing a dataset: inputs, batches, one JSONL row per clip, resume, several processes.

    items = collect(["clips/", "more.flac", "test-clean.jsonl"])
    store = ResultStore("out.jsonl"); done = store.load()      # repairs a torn last line
    ranks = Ranks.from_env("cpu")                               # torchrun: gloo / nccl
    mine = probe(ranks.shard([i for i in items if i.audio_filepath not in done]))
    for rows in run(pipe, plan_batches(mine, 8, 30.0), request, ranks):
        store.append(rows)                                      # rank 0 gets every rank's rows

Inputs: audio files, folders (every .wav/.flac below them) and NeMo-style JSONL manifests (one
object per line: `audio_filepath`, optional `duration` in seconds and reference `text`; a
relative path is relative to the manifest's folder). An item's key is its `audio_filepath` as
given; that is what a resumed run matches.

Several processes (`torchrun`): items are dealt out by rank, each rank sorts its share by
duration and runs it in batches, and after every batch rank 0 gathers all ranks' rows and is
the only writer. One writer keeps the one output file whole at every moment, so an interrupted
run resumes the same way with any number of processes, and there are no part files to merge.
The price is a step in lockstep per batch; with shares sorted by duration the ranks' k-th
batches are of about the same size, so little time is spent waiting.
"""

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from granite_fms.app.ranks import Ranks
from granite_fms.audio import longform
from granite_fms.pipeline import SpeechPipeline

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
MANIFEST_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Item:
    """One clip: `audio_filepath` as given (the key of its row), the file to read, its duration
    (seconds; None until probed), the manifest's reference text, and why it cannot be read."""

    audio_filepath: str
    path: Path
    duration: float | None = None
    reference: str | None = None
    error: str | None = None


def collect(inputs: Sequence[str | os.PathLike]) -> list[Item]:
    """Items of files, folders (recursive .wav/.flac, sorted) and manifests, in order, each
    key once. Raises FileNotFoundError for a missing input, ValueError for a bad manifest."""
    items: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not found:
                logger.warning("no .wav or .flac files under %s", path)
            items += [Item(str(p), p) for p in found]
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            items += read_manifest(path)
        elif path.is_file():
            items.append(Item(str(path), path))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    unique: dict[str, Item] = {}
    for item in items:
        unique.setdefault(item.audio_filepath, item)
    if len(unique) < len(items):
        logger.warning(
            "%d inputs were given more than once; each is done once", len(items) - len(unique)
        )
    return list(unique.values())


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """Items of a NeMo-style manifest (see the module docstring)."""
    path = Path(path)
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not a JSON object: {e}") from e
        if not isinstance(row, dict) or not isinstance(row.get("audio_filepath"), str):
            raise ValueError(f"{where}: needs a string 'audio_filepath'")
        duration, text = row.get("duration"), row.get("text")
        if duration is not None and not (isinstance(duration, int | float) and duration >= 0):
            raise ValueError(f"{where}: 'duration' must be a number of seconds, got {duration!r}")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: 'text' must be a string, got {text!r}")
        audio = Path(row["audio_filepath"])
        file = audio if audio.is_absolute() else path.parent / audio
        duration = None if duration is None else float(duration)
        items.append(Item(row["audio_filepath"], file, duration, text))
    return items


def probe(items: Sequence[Item]) -> list[Item]:
    """Items with a duration: the manifest's, else the file header's; an unreadable file keeps
    None and gets an `error` (its row says why; the run goes on)."""
    out = []
    for item in items:
        if item.duration is not None:
            out.append(item)
            continue
        try:
            out.append(replace(item, duration=sf.info(str(item.path)).duration))
        except (OSError, RuntimeError, sf.LibsndfileError) as e:
            out.append(replace(item, error=f"could not read audio file {item.path}: {e}"))
    return out


def plan_batches(items: Sequence[Item], batch_size: int, chunk_length: float) -> list[list[Item]]:
    """Items sorted by duration (longest first, so memory peaks and compiles come early) and
    grouped so that each batch holds about `batch_size` windows of at most `chunk_length` s."""
    ordered = sorted(items, key=lambda i: (-(i.duration or 0.0), i.audio_filepath))
    batches: list[list[Item]] = []
    windows = 0
    for item in ordered:
        need = max(1, math.ceil((item.duration or 0.0) / chunk_length))
        if batches and windows + need <= batch_size:
            batches[-1].append(item)
            windows += need
        else:
            batches.append([item])
            windows = need
    return batches


# ----- the JSONL record ---------------------------------------------------------------------


class ResultStore:
    """One JSON row per clip, appended and flushed per batch, so an interrupted run loses at
    most the batch in flight.

    `load` reads what an earlier run left and makes it whole before anything is appended: a
    torn last line (a write cut short), rows with an `error` (retried) and repeated keys (the
    first is kept) are dropped, and the file is rewritten without them.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> set[str]:
        """Keys of the clips already done."""
        if not self.path.is_file():
            return set()
        kept, dropped = {}, {"torn": 0, "failed": 0, "repeated": 0}
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["audio_filepath"]
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
                dropped["torn"] += 1
                continue
            if "error" in row:
                dropped["failed"] += 1
            elif key in kept:
                dropped["repeated"] += 1
            else:
                kept[key] = line
        if any(dropped.values()) or (raw and not raw.endswith(b"\n")):
            logger.warning(
                "%s: dropped %s; rewriting it with the %d finished rows",
                self.path,
                ", ".join(f"{n} {why}" for why, n in dropped.items() if n) or "nothing",
                len(kept),
            )
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(b"".join(line + b"\n" for line in kept.values()))
            os.replace(tmp, self.path)
        return set(kept)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            file.flush()
            os.fsync(file.fileno())


# ----- running batches ----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What to do with every clip: `SpeechPipeline.transcribe`'s or `translate`'s arguments."""

    task: str = "transcribe"
    target_language: str | None = None
    language: str | None = None  # the spoken language, recorded in each row
    keywords: tuple[str, ...] = ()
    chunk_length: float = 30.0
    segmentation: longform.Segmentation = "fixed"
    max_new_tokens: int | None = None
    num_beams: int = 1
    batch_size: int = 8

    def apply(self, pipe: SpeechPipeline, waves: list[torch.Tensor]) -> list[dict]:
        """One result dict per waveform (`return_segments=True`)."""
        common = dict(
            chunk_length=self.chunk_length,
            segmentation=self.segmentation,
            return_segments=True,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            batch_size=self.batch_size,
        )
        if self.task == "translate":
            return pipe.translate(waves, self.target_language, **common)
        return pipe.transcribe(waves, keywords=self.keywords, **common)


def error_row(item: Item, error: str) -> dict[str, Any]:
    return {"audio_filepath": item.audio_filepath, "duration": item.duration, "error": error}


def run_batch(
    pipe: SpeechPipeline, items: Sequence[Item], request: Request, batch: int, rank: int = 0
) -> list[dict[str, Any]]:
    """Rows of one batch, in the items' order: results, or an `error` for a clip that could
    not be read (the others go on) or for all of them if the batch itself failed."""
    start = time.perf_counter()
    extractor = pipe.processor.feature_extractor
    rows: dict[str, dict[str, Any]] = {}
    loaded: list[tuple[Item, torch.Tensor]] = []
    for item in items:
        if item.error is not None:
            rows[item.audio_filepath] = error_row(item, item.error)
            continue
        try:
            loaded.append((item, extractor.waveform(item.path)))
        except (OSError, ValueError, RuntimeError, sf.LibsndfileError) as e:
            rows[item.audio_filepath] = error_row(item, str(e))
    if loaded:
        error = None
        try:
            results = request.apply(pipe, [wave for _, wave in loaded])
        except Exception as e:  # one bad batch must not end a dataset run; its rows say why
            logger.exception("batch %d failed", batch)
            results = [None] * len(loaded)
            error = f"batch failed: {type(e).__name__}: {e}"
        wall = time.perf_counter() - start
        audio = sum(wave.numel() for _, wave in loaded) / extractor.sample_rate
        timing = dict(batch=batch, rank=rank, items=len(loaded), audio_s=audio, wall_s=wall)
        for (item, wave), result in zip(loaded, results, strict=True):
            duration = wave.numel() / extractor.sample_rate
            if result is None:
                rows[item.audio_filepath] = error_row(replace(item, duration=duration), str(error))
                continue
            row: dict[str, Any] = {"audio_filepath": item.audio_filepath, "duration": duration}
            row["task"] = request.task
            if request.target_language is not None:
                row["target_language"] = request.target_language
            if request.language is not None:
                row["language"] = request.language
            row.update(result)
            row["timing"] = timing
            rows[item.audio_filepath] = row
    return [rows[item.audio_filepath] for item in items]


def run(
    pipe: SpeechPipeline, batches: Sequence[Sequence[Item]], request: Request, ranks: Ranks
) -> Iterator[list[dict[str, Any]]]:
    """Each step: this rank's next batch, then every rank's rows on rank 0 ([] elsewhere)."""
    steps = ranks.max(len(batches))
    for step in range(steps):
        rows = (
            run_batch(pipe, batches[step], request, step, ranks.rank) if step < len(batches) else []
        )
        yield ranks.gather(rows)


__all__ = [
    "Item",
    "Request",
    "ResultStore",
    "collect",
    "plan_batches",
    "probe",
    "read_manifest",
    "run",
    "run_batch",
]
