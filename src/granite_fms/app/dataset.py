"""Transcribing a dataset: inputs, batches, one NeMo-style JSONL row per clip, several processes.

    items = collect(["clips/", "more.mp3", "test-clean.jsonl"])
    ranks = Ranks.from_env("cpu")                               # torchrun: gloo / nccl
    mine = probe(ranks.shard(items))
    for rows in run(pipe, plan_batches(mine, 8, 30.0), request, ranks):
        store.append(rows)                      # app.results.ResultStore; rank 0 gets all rows

Inputs: audio files (`AUDIO_SUFFIXES`), folders (every audio file below them, sorted; other
files are skipped and named in a warning) and NeMo-style JSONL manifests (one object per line:
`audio_filepath`, optional `duration` in seconds and reference `text`, and any other fields; a
relative path is relative to the manifest's folder). An item's key is its `audio_filepath` as
given; that is what a resumed run matches. An input that holds no audio is an error.

A row is NeMo's: the manifest's fields as they are (its reference stays in `text`), the
hypothesis in `pred_text`, with `segments`, `warnings`, `settings` and `timing`.

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
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from granite_fms.app.errors import save_traceback
from granite_fms.app.ranks import Ranks
from granite_fms.audio.features import AUDIO_SUFFIXES
from granite_fms.audio.longform import LongFormOptions
from granite_fms.inference.options import GenerationOptions
from granite_fms.pipeline import Progress, SpeechPipeline

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Item:
    """One clip: `audio_filepath` as given (the key of its row), the file to read, its duration
    (seconds; None until probed), its manifest row (`fields`: every field, kept in its result
    row), why it cannot be read, and what is odd about it (`warnings`, e.g. truncated)."""

    audio_filepath: str
    path: Path
    duration: float | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def reference(self) -> str | None:
        return self.fields.get("text")


def collect(inputs: Sequence[str | os.PathLike]) -> list[Item]:
    """Items of files, folders and manifests, in order, each key once. Raises
    FileNotFoundError for a missing input, ValueError for an input without audio (an empty
    folder or manifest, a file of another kind) or a bad manifest."""
    items: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            items += _folder(path)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            items += read_manifest(path)
        elif path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            items.append(Item(str(path), path))
        elif path.is_file():
            raise ValueError(
                f"{path} is neither audio ({' '.join(AUDIO_SUFFIXES)}) nor a manifest (.jsonl)"
            )
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


def _folder(path: Path) -> list[Item]:
    """Every audio file below `path`, sorted; the other files are named in a warning."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    audio = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    skipped = [str(p.relative_to(path)) for p in files if p.suffix.lower() not in AUDIO_SUFFIXES]
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        logger.warning(
            "%s: skipped %d files that are not audio (%s): %s",
            path,
            len(skipped),
            " ".join(AUDIO_SUFFIXES),
            ", ".join(skipped[:5]) + more,
        )
    if not audio:
        raise ValueError(f"no audio files ({' '.join(AUDIO_SUFFIXES)}) under {path}")
    return [Item(str(p), p) for p in audio]


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """Items of a NeMo-style manifest (see the module docstring); ValueError if it has none."""
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
        items.append(Item(row["audio_filepath"], file, duration, row))
    if not items:
        raise ValueError(f"manifest {path} has no rows")
    return items


def probe(items: Sequence[Item]) -> list[Item]:
    """Items with a duration (the manifest's, else the file header's) and a warning if the
    file is shorter than its header says; an unreadable file gets an `error` instead (its row
    says why; the run goes on)."""
    out = []
    for item in items:
        try:
            info = sf.info(str(item.path), verbose=True)
        except (OSError, RuntimeError, sf.LibsndfileError) as e:
            out.append(replace(item, error=f"could not read audio file {item.path}: {e}"))
            continue
        duration = info.duration if item.duration is None else item.duration
        out.append(replace(item, duration=duration, warnings=_truncated(info)))
    return out


def _truncated(info: Any) -> tuple[str, ...]:
    """libsndfile's own note that a chunk is shorter than its header says ("data : 76800
    (should be 38378)"), as sox and ffmpeg warn of it."""
    lines = [line.strip() for line in info.extra_info.splitlines()]
    short = [line for line in lines if re.search(r"\(should be \d+\)", line)]
    if not any(line.startswith("data") for line in short):
        return ()
    return (
        f"the file is shorter than its header says (libsndfile: {'; '.join(short)}): it is "
        f"truncated; transcribed the {info.frames / info.samplerate:.2f} s it holds",
    )


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


# ----- running batches ----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What to do with every clip (the prompt: task, target language, keywords; the options of
    `SpeechPipeline.transcribe`) and what model does it: all of it but how windows are batched
    is a row's `settings`."""

    task: str = "transcribe"
    target_language: str | None = None
    language: str | None = None  # the spoken language, recorded in each row
    keywords: tuple[str, ...] = ()
    long_form: LongFormOptions = LongFormOptions()
    generation: GenerationOptions = GenerationOptions()
    model: str | None = None  # a checkpoint directory, or "variant NAME"
    tokenizer: str | None = None
    dtype: str | None = None  # None: the checkpoint's
    quantize: str | None = None

    def settings(self) -> dict[str, Any]:
        """What a row depends on: a rerun resumes only rows made with the same settings."""
        settings = asdict(self)
        long_form, generation = settings.pop("long_form"), settings.pop("generation")
        settings["keywords"] = list(self.keywords)
        for name in ("chunk_length", "segmentation"):
            settings[name] = long_form[name]
        for name in ("max_new_tokens", "num_beams"):
            settings[name] = generation[name]
        if generation["eos_token_id"] is not None:
            settings["eos_token_id"] = list(generation["eos_token_id"])
        return settings

    def prompt(self, pipe: SpeechPipeline) -> str:
        """The user turn every clip is sent with."""
        return pipe.prompts.user_turn(
            self.task,
            language=self.target_language,
            keywords=self.keywords,
            audio_token=pipe.processor.audio_token,
        )

    def apply(
        self, pipe: SpeechPipeline, waves: list[torch.Tensor], progress: Progress | None = None
    ) -> list[dict]:
        """One result dict per waveform (`return_segments=True`)."""
        options = dict(
            long_form=replace(self.long_form, return_segments=True),
            generation=self.generation,
            progress=progress,
        )
        if self.task == "translate":
            return pipe.translate(waves, self.target_language, **options)
        return pipe.transcribe(waves, keywords=self.keywords, **options)


def result_row(item: Item, request: Request, **result: Any) -> dict[str, Any]:
    """A clip's row: its manifest fields as they are, then the result (`pred_text`,
    `segments`, `warnings`, ... or `error`) and the settings that made it."""
    row = dict(item.fields)
    row["audio_filepath"] = item.audio_filepath
    if "duration" not in row:
        row["duration"] = item.duration
    if request.language is not None:
        row["language"] = request.language
    row.update(result)
    row["settings"] = request.settings()
    return row


def run_batch(
    pipe: SpeechPipeline,
    items: Sequence[Item],
    request: Request,
    batch: int,
    rank: int = 0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Rows of one batch, in the items' order: results, or an `error` for a clip that could
    not be read (the others go on) or for all of them if the batch itself failed (its
    traceback goes to the log file of `granite_fms.app.errors`)."""
    start = time.perf_counter()
    extractor = pipe.processor.feature_extractor
    rows: dict[str, dict[str, Any]] = {}
    loaded: list[tuple[Item, torch.Tensor]] = []
    for item in items:
        if item.error is not None:
            rows[item.audio_filepath] = result_row(item, request, error=item.error)
            continue
        try:
            loaded.append((item, extractor.waveform(item.path)))
        except (OSError, ValueError, RuntimeError, sf.LibsndfileError) as e:
            rows[item.audio_filepath] = result_row(item, request, error=str(e))
    if loaded:
        try:
            results = request.apply(pipe, [wave for _, wave in loaded], progress)
        except Exception as e:  # one bad batch must not end a dataset run; its rows say why
            log = save_traceback(e)
            # The pipeline names clips of arrays by their index in the call: name the files.
            named = re.sub(r"audio\[(\d+)\]", lambda m: str(loaded[int(m[1])][0].path), str(e))
            error = f"batch failed: {type(e).__name__}: {named}"
            logger.error("batch %d %s (traceback in %s)", batch, error.removeprefix("batch "), log)
            for item, wave in loaded:
                item = replace(item, duration=wave.numel() / extractor.sample_rate)
                rows[item.audio_filepath] = result_row(item, request, error=error)
            return [rows[item.audio_filepath] for item in items]
        wall = time.perf_counter() - start
        audio = sum(wave.numel() for _, wave in loaded) / extractor.sample_rate
        timing = dict(batch=batch, rank=rank, items=len(loaded), audio_s=audio, wall_s=wall)
        for (item, wave), result in zip(loaded, results, strict=True):
            item = replace(item, duration=wave.numel() / extractor.sample_rate)
            rows[item.audio_filepath] = result_row(
                item,
                request,
                pred_text=result["text"],
                segments=result["segments"],
                warnings=[*item.warnings, *result["warnings"]],
                timing=timing,
            )
    return [rows[item.audio_filepath] for item in items]


def run(
    pipe: SpeechPipeline,
    batches: Sequence[Sequence[Item]],
    request: Request,
    ranks: Ranks,
    progress: Progress | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Each step: this rank's next batch, then every rank's rows on rank 0 ([] elsewhere).
    `progress` is called with the audio seconds of each generation call of this rank."""
    steps = ranks.max(len(batches))
    for step in range(steps):
        rows = []
        if step < len(batches):
            rows = run_batch(pipe, batches[step], request, step, ranks.rank, progress)
        yield ranks.gather(rows)


__all__ = [
    "Item",
    "Request",
    "collect",
    "plan_batches",
    "probe",
    "read_manifest",
    "result_row",
    "run",
    "run_batch",
]
