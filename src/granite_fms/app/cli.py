"""The commands of `granite-fms` (parsed by `granite_fms_cli`): check, load, run, exit status.

Every command first checks what it can without the model (flags, inputs, output paths, the
results file and its lock, torchrun, compile settings), then loads the model and checks the
context (prompt, audio and budget against the model's positions), and only then works. The
exit status is `granite_fms_cli.EXIT_CODES`': 0 all done, 1 some items failed, 2 usage,
configuration or input errors, 3 an internal error (traceback in a log file), 130 interrupted.
"""

import argparse
import json
import logging
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from granite_fms.app import checks, dataset, evaluation, writers
from granite_fms.app.dataset import Item, Request
from granite_fms.app.errors import UsageError, save_traceback
from granite_fms.app.ranks import Ranks
from granite_fms.app.results import Locked, OtherSettings, ResultStore
from granite_fms.audio.longform import LongFormOptions
from granite_fms.audio.prompts import PromptPreset
from granite_fms.hf.config import read_eos_token_ids
from granite_fms.hf.granite_speech5 import is_granite_speech5
from granite_fms.inference.compile import CompileConfig
from granite_fms.inference.options import GenerationOptions
from granite_fms.pipeline import SpeechPipeline
from granite_fms.pipeline5 import CTCPipeline, CTCProcessor

logger = logging.getLogger("granite_fms.app.cli")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; its exit status."""
    try:
        _logging(args)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"granite-fms: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"granite-fms: interrupted{INTERRUPTED.get(args.command, '')}", file=sys.stderr)
        return 130
    except Exception as e:
        log = save_traceback(e)
        print(
            f"granite-fms: internal error: {type(e).__name__}: {e} (traceback in {log}; "
            "please report it)",
            file=sys.stderr,
        )
        return 3


class _Unasked(logging.Filter):
    """Drops a third-party log message about a feature this run does not use."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _logging(args: argparse.Namespace) -> None:
    logging.basicConfig(format="granite-fms: %(levelname)s: %(message)s")
    logging.getLogger("granite_fms").setLevel(logging.INFO)
    # Cut windows are named in each row's `warnings`; one log line each would bury the bar.
    logging.getLogger("granite_fms.pipeline").setLevel(logging.ERROR)
    if not args.quantize:  # transformers imports torchao, whose enums torch calls deprecated
        _unasked("torch.utils._pytree", "is an Enum subclass")
    if args.device_type != "cuda":  # Inductor's C++ builder looks for CUDA even for the CPU
        _unasked("torch.utils.cpp_extension", "No CUDA runtime")


def _unasked(name: str, text: str) -> None:
    log = logging.getLogger(name)
    if not any(isinstance(f, _Unasked) and f.text == text for f in log.filters):
        log.addFilter(_Unasked(text))


# ----- checks before the model loads -----------------------------------------------------------


def _request(args: argparse.Namespace) -> Request:
    """The request the flags describe, its text flags and options checked."""
    task = "translate" if args.command == "translate" else "transcribe"
    target = getattr(args, "target_language", None)
    keywords = tuple(getattr(args, "keyword", ()))
    checks.not_blank(args.language, "--language")
    checks.not_blank(target, "--target_language")
    try:
        PromptPreset(system=None).user_turn(task, language=target, keywords=keywords)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--keyword: {e}") from e
    try:
        long_form = LongFormOptions(
            chunk_length=args.chunk_length,
            segmentation=args.segmentation,
            batch_size=args.batch_size,
        )
        generation = GenerationOptions(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--{e}") from e  # each message starts with the field, the flag's name
    model = str(Path(args.model_path).resolve()) if args.model_path else f"variant {args.variant}"
    return Request(
        task=task,
        target_language=target,
        language=args.language,
        keywords=keywords,
        long_form=long_form,
        generation=generation,
        model=model,
        tokenizer=str(Path(args.tokenizer).resolve()) if args.tokenizer else None,
        dtype=args.default_dtype,
        quantize=args.quantize,
    )


def _check_model(args: argparse.Namespace) -> None:
    """The model flags, and the settings of the devices and compiler they ask for."""
    from fms.models import list_variants

    if bool(args.model_path) == bool(args.variant):
        raise UsageError(
            "pass --model_path DIR (a checkpoint) or --variant NAME (random weights), not both"
            if args.model_path
            else "pass --model_path DIR (a checkpoint) or --variant tiny (random weights)"
        )
    if args.model_path and not Path(args.model_path).is_dir():
        raise UsageError(f"--model_path {args.model_path} is not a directory")
    variants = list_variants("granite_speech") + list_variants("granite_speech5")
    if args.variant and args.variant not in variants:
        raise UsageError(
            f"--variant {args.variant!r} is not one of {variants} (granite_speech and "
            "granite_speech5 variants)"
        )
    if args.tokenizer and not Path(args.tokenizer).is_dir():
        raise UsageError(f"--tokenizer {args.tokenizer} is not a directory")
    if args.device_type is None:
        args.device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device_type cuda: this machine has no CUDA device torch can use")
    if args.distributed:
        if not args.model_path:
            raise UsageError("--distributed needs --model_path (a checkpoint to shard)")
        if _is_granite_speech5(args):
            raise UsageError(
                "--distributed shards the LLM of Granite Speech 3.x/4.x; Granite Speech 5.0 has "
                "none (without it, torchrun's ranks each hold a whole model and share the clips)"
            )
        checks.torchrun(args.device_type)
    if getattr(args, "compile", False) or "compiled" in getattr(args, "modes", ()):
        checks.compile_settings(args.compile_mode, args.compile_backend)


def _is_granite_speech5(args: argparse.Namespace) -> bool:
    """Whether the (checked) model flags name a Granite Speech 5.0 (CTC) model."""
    from fms.models import list_variants

    if args.model_path:
        return is_granite_speech5(args.model_path)
    return args.variant in list_variants("granite_speech5")


def _collect(inputs: list[str]) -> list[Item]:
    try:
        return dataset.collect(inputs)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(str(e)) from e


@dataclass(frozen=True)
class _Outputs:
    """Where a transcribe or translate run writes: per-clip files and the rows file."""

    formats: tuple[str, ...]
    directory: Path
    jsonl: Path | None

    @classmethod
    def check(cls, args: argparse.Namespace, items: list[Item]) -> "_Outputs":
        fmt = args.output_format
        formats = writers.FORMATS if fmt == "all" else (fmt,) if fmt in writers.FORMATS else ()
        if formats:
            checks.writable_dir(args.output_dir, "--output_dir")
        jsonl = args.output and checks.writable_file(args.output, "--output")
        if jsonl is None and fmt in ("jsonl", "all"):
            default = Path(args.output_dir) / f"{args.command}.jsonl"
            jsonl = checks.writable_file(default, "--output_dir (its rows file)")
        out = cls(formats, Path(args.output_dir), jsonl)
        out._check_names(items)
        return out

    def _check_names(self, items: list[Item]) -> None:
        """Per-clip files are named after the clip: two of one name would overwrite."""
        seen: dict[str, str] = {}
        for item in items if self.formats else ():
            stem = Path(item.audio_filepath).stem
            if stem in seen:
                raise UsageError(
                    f"{seen[stem]} and {item.audio_filepath} would both write {stem}.* in "
                    "--output_dir; use --output_format jsonl (rows keyed by path) or rename one"
                )
            seen[stem] = item.audio_filepath
            for fmt in self.formats:  # e.g. a folder named talk.txt
                if (self.directory / f"{stem}.{fmt}").is_dir():
                    raise UsageError(f"{self.directory / f'{stem}.{fmt}'} is a directory")

    def write(self, row: dict[str, Any], only_missing: bool = False) -> int:
        """The per-clip files of a row (those that are missing); how many were written."""
        stem = Path(row["audio_filepath"]).stem
        result = {"text": row["pred_text"]}
        result |= {k: row[k] for k in ("segments", "language", "warnings") if k in row}
        written = 0
        for fmt in self.formats:
            if not (only_missing and (self.directory / f"{stem}.{fmt}").exists()):
                writers.write(result, stem, fmt, self.directory)
                written += 1
        return written


def _open_store(args, outputs: _Outputs, request: Request) -> ResultStore | None:
    """The rows file, locked (by torchrun's rank 0, its only writer)."""
    if outputs.jsonl is None or os.environ.get("RANK", "0") != "0":
        return None
    store = ResultStore(outputs.jsonl, request.settings())
    try:
        store.lock()
    except Locked as e:
        raise UsageError(str(e)) from e
    return store


def _resume(args, store: ResultStore, outputs: _Outputs, items: list[Item]) -> set[str]:
    """Keys of the clips the rows file already holds with these settings; their missing
    per-clip files are written again from the rows."""
    try:
        done = store.load(overwrite=args.overwrite)
    except OtherSettings as e:
        raise UsageError(
            f"{e}; rerun with --overwrite to start it afresh, or write to another --output"
        ) from e
    keys = [i.audio_filepath for i in items if i.audio_filepath in done]
    if keys:
        logger.info(
            "%d of %d clips are already done in %s (same settings): skipped",
            len(keys),
            len(items),
            store.path,
        )
    rewritten = sum(outputs.write(done[k], only_missing=True) for k in keys)
    if rewritten:
        logger.info("wrote %d missing per-clip files again from %s", rewritten, store.path)
    return set(keys)


# ----- the model ---------------------------------------------------------------------------------


def load_pipeline(args: argparse.Namespace, device: str) -> SpeechPipeline | CTCPipeline:
    """The pipeline the (checked) model flags describe; UsageError if it cannot be loaded."""
    from fms.models import list_variants

    from granite_fms.app.demo import random_ctc_pipeline, random_pipeline
    from granite_fms.audio.processor import GraniteSpeechProcessor

    dtype = DTYPES.get(args.default_dtype)
    try:
        if args.model_path:
            strategy = "tp" if args.distributed else None
            pipe = SpeechPipeline.from_pretrained(
                args.model_path, dtype=dtype, device=device, distributed_strategy=strategy
            )
        elif args.variant in list_variants("granite_speech5"):
            pipe = random_ctc_pipeline(args.variant, dtype=dtype, device=device)
        else:
            pipe = random_pipeline(args.variant, dtype=dtype, device=device)
        if args.tokenizer and isinstance(pipe, CTCPipeline):
            processor = CTCProcessor.from_pretrained(args.tokenizer)
            if processor.tokenizer is None:
                raise UsageError(f"--tokenizer {args.tokenizer} holds no tokenizer files")
            pipe = CTCPipeline(pipe.model, replace(pipe.processor, tokenizer=processor.tokenizer))
        elif args.tokenizer:
            processor = GraniteSpeechProcessor.from_pretrained(args.tokenizer)
            if processor.tokenizer is None:
                raise UsageError(f"--tokenizer {args.tokenizer} holds no tokenizer files")
            eos = read_eos_token_ids(args.model_path) if args.model_path else None
            pipe = SpeechPipeline(pipe.model, processor, eos_token_id=eos)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as e:
        raise UsageError(f"could not load the model: {e}") from e
    if pipe.tokenizer is None:
        raise UsageError(f"{args.model_path} has no tokenizer files; pass --tokenizer DIR")
    if args.quantize and isinstance(pipe, CTCPipeline):
        raise UsageError("--quantize int8 is for the LLM of Granite Speech 3.x/4.x")
    if args.quantize:
        pipe.quantize(args.quantize)
    if getattr(args, "compile", False) or args.compile_cache or args.compile_regional:
        _compile(pipe, args)
    return pipe


def _compile(pipe: SpeechPipeline | CTCPipeline, args: argparse.Namespace) -> None:
    """The compile flags as one `CompileConfig`; --compile_cache loads an artifact."""
    config = CompileConfig(
        backend=args.compile_backend,
        mode=args.compile_mode,
        regional=args.compile_regional,
        cache=args.compile_cache,
        quantize=args.quantize,
    )
    try:
        pipe.compile(config)
    except (ValueError, OSError) as e:
        raise UsageError(f"{'--compile_cache' if config.cache else '--compile'}: {e}") from e


def _check_context(pipe: SpeechPipeline | CTCPipeline, request: Request) -> None:
    """Windows and budgets that fit the model's positions: what is capped is said once here
    (`SpeechPipeline.fit_context`); a prompt that leaves no room is a usage error. A CTC model
    has no positions to fit, but refuses the options of the generative ones."""
    if isinstance(pipe, CTCPipeline):
        try:
            pipe.check_options(request.task, request.keywords, request.generation)
        except ValueError as e:
            raise UsageError(str(e)) from e
        return
    try:
        options = request.long_form.chunk_length, request.generation.max_new_tokens
        fit = pipe.fit_context(request.prompt(pipe), *options)
    except ValueError as e:
        raise UsageError(f"--keyword: {e}" if request.keywords else str(e)) from e
    for note in fit.notes:
        logger.warning(note)


# ----- transcribe / translate ----------------------------------------------------------------


def transcribe(args: argparse.Namespace) -> int:
    """`transcribe` and `translate`: check, open the rows file, load, run the clips not done."""
    request = _request(args)
    _check_model(args)
    items = _collect(args.inputs)
    outputs = _Outputs.check(args, items)
    store = _open_store(args, outputs, request)
    with store or nullcontext():
        done = _resume(args, store, outputs, items) if store is not None else set()
        if len(done) == len(items) and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            store.finish([item.audio_filepath for item in items])
            return 0  # every clip done: no model to load
        if args.distributed:  # tensor parallel: join the group first, then load a shard
            ranks = Ranks.tensor_parallel(args.device_type)
            pipe = load_pipeline(args, ranks.device)
        else:
            # Loaded before joining torchrun's group: FMS's get_model (--variant) would shard
            # it over the group's ranks; here every rank holds a whole model and its own clips.
            pipe = load_pipeline(args, Ranks.local_device(args.device_type))
            ranks = Ranks.from_env(args.device_type)
        try:
            _check_context(pipe, request)
            done = ranks.broadcast(done)
            pending = [item for item in items if item.audio_filepath not in done]
            code = _run_items(args, pipe, ranks, request, pending, outputs, store)
            if store is not None:
                store.finish([item.audio_filepath for item in items])  # in input order
            return code
        except KeyboardInterrupt:
            if ranks.main and store is not None:
                print(
                    f"granite-fms: interrupted; the finished clips are in {store.path}: rerun "
                    "the same command to resume",
                    file=sys.stderr,
                )
                return 130
            raise
        finally:
            ranks.close()


def _run_items(args, pipe, ranks, request, pending, outputs, store) -> int:
    if not ranks.main:
        logging.getLogger("granite_fms").setLevel(logging.WARNING)
    mine = dataset.probe(ranks.shard(pending))
    batches = dataset.plan_batches(mine, args.batch_size, request.long_form.chunk_length)
    total = sum(ranks.gather([sum(i.duration or 0.0 for i in mine)]))
    progress = _Progress(total, len(pending), args.command, enabled=ranks.main)
    failed: list[dict[str, Any]] = []
    warned: list[dict[str, Any]] = []
    for rows in dataset.run(pipe, batches, request, ranks, progress.windows):
        if store is not None:
            store.append(rows)
        for row in rows:
            if "error" in row:
                failed.append(row)
                continue
            warned += [row] if row["warnings"] else []
            outputs.write(row)
            if args.verbose:
                _print_segments(row)
        progress.rows(rows)
    progress.close()
    if ranks.main:
        _report_warnings(warned, store)
        _list_failures(failed)
    return 1 if ranks.broadcast(len(failed)) else 0


def _list_failures(rows: list[dict[str, Any]]) -> int:
    """Each failed row on stderr; how many there were."""
    failed = [row for row in rows if "error" in row]
    for row in failed:
        print(f"granite-fms: failed: {row['audio_filepath']}: {row['error']}", file=sys.stderr)
    return len(failed)


def _report_warnings(warned: list[dict[str, Any]], store: ResultStore | None) -> None:
    if warned and store is not None:
        logger.warning(
            "%d clips have warnings: see the `warnings` of their rows in %s",
            len(warned),
            store.path,
        )
        return
    for row in warned:
        for warning in row["warnings"]:
            logger.warning("%s: %s", row["audio_filepath"], warning)


def _print_segments(row: dict[str, Any]) -> None:
    """A clip's segments on stdout, as Whisper prints them."""
    from tqdm import tqdm

    tqdm.write(row["audio_filepath"], file=sys.stdout)
    for s in row["segments"]:
        start, end = writers.format_timestamp(s["start"]), writers.format_timestamp(s["end"])
        tqdm.write(f"[{start} --> {end}] {s['text'].strip()}", file=sys.stdout)


class _Progress:
    """A tqdm bar over audio seconds, advanced as each generation call (a batch of windows)
    finishes, with the clips done and the live RTFx."""

    def __init__(self, audio_s: float, clips: int, desc: str, enabled: bool):
        from tqdm import tqdm

        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio "
        fmt += "[{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm(
            total=audio_s, desc=desc, bar_format=fmt, disable=not enabled, file=sys.stderr
        )
        self.enabled, self.clips, self.done, self.audio_s = enabled, clips, 0, 0.0
        self.start = time.perf_counter()

    def windows(self, seconds: float) -> None:
        self.bar.update(min(seconds, self.bar.total - self.bar.n))  # durations are rounded

    def rows(self, rows: list[dict[str, Any]]) -> None:
        """Clips done: the bar moves to their audio (VAD skips silences, failures count)."""
        self.done += len(rows)
        self.audio_s += sum(row.get("duration") or 0.0 for row in rows)
        self.bar.n = min(self.audio_s, self.bar.total)
        wall = time.perf_counter() - self.start
        self.bar.set_postfix_str(f"{self.done}/{self.clips} clips, RTFx {self.rtfx(wall):.1f}")

    def rtfx(self, wall: float) -> float:
        return self.audio_s / wall if wall > 0 else 0.0

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            wall = time.perf_counter() - self.start
            print(
                f"granite-fms: {self.done} clips, {self.audio_s / 3600:.3f} h of audio in "
                f"{wall:.1f} s: RTFx {self.rtfx(wall):.1f}",
                file=sys.stderr,
            )


# ----- eval -----------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> int:
    """`eval`: every mode on the manifest's clips, scored; the report as JSON and Markdown."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("eval runs in one process (its timings compare modes on one device)")
    request = _request(args)
    _check_model(args)
    try:
        items = dataset.read_manifest(args.manifest)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--manifest: {e}") from e
    missing = [i.audio_filepath for i in items if i.reference is None]
    if missing:
        raise UsageError(f"--manifest {args.manifest}: rows without a reference `text`: {missing}")
    out = checks.writable_file(args.output, "--output")
    checks.writable_file(out.with_suffix(".md"), "--output (its .md)")
    from granite_fms.provenance import provenance

    origin = provenance()  # before the run: the code that ran, whatever changes during it
    load_before = os.getloadavg()
    pipe = load_pipeline(args, Ranks.local_device(args.device_type))
    _check_context(pipe, request)
    items = dataset.probe(items)
    batches = dataset.plan_batches(items, args.batch_size, request.long_form.chunk_length)
    references = {i.audio_filepath: i.reference for i in items}
    modes, texts, failed = {}, {}, 0
    for mode in args.modes:
        warmup, wall, rows = _mode_passes(pipe, args, mode, batches, request)
        failed += _list_failures(rows)
        modes[mode] = evaluation.score(rows, references, wall, warmup)
        texts[mode] = {r["audio_filepath"]: r["pred_text"] for r in rows if "error" not in r}
    settings = request.settings() | _device_settings(pipe, args)
    settings["load_average"] = {"before": load_before, "after": os.getloadavg()}
    model = args.model_path or f"variant {args.variant}"
    report = evaluation.report(
        model, args.model_path is None, Path(args.manifest), items, settings, modes, texts, origin
    )
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(evaluation.markdown(report))
    for mode, figures in modes.items():
        print(f"granite-fms: {evaluation.summary(mode, figures)}", file=sys.stderr)
    return 1 if failed else 0


def _device_settings(pipe: SpeechPipeline, args: argparse.Namespace) -> dict[str, Any]:
    """The settings of an eval report besides the request's: where and how it ran."""
    return {
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        "compile_mode": args.compile_mode,
        "compile_backend": args.compile_backend,
        "torch_threads": torch.get_num_threads(),
    }


def _mode_passes(pipe, args, mode, batches, request) -> tuple[float | None, float, list]:
    """A mode's warm-up pass (compiled only) and timed pass: warm-up s, wall s, rows."""
    if mode == "compiled":
        _compile(pipe, args)
    else:
        pipe.eager()
    warmup = None
    if mode == "compiled":
        warmup, _ = _timed_pass(pipe, batches, request, f"{mode} warm-up")
    wall, rows = _timed_pass(pipe, batches, request, mode)
    return warmup, wall, rows


def _timed_pass(
    pipe: SpeechPipeline, batches: list[list[Item]], request: Request, desc: str
) -> tuple[float, list[dict[str, Any]]]:
    audio = sum(i.duration or 0.0 for b in batches for i in b)
    progress = _Progress(audio, sum(len(b) for b in batches), desc, enabled=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for batch_rows in dataset.run(pipe, batches, request, Ranks(), progress.windows):
        rows += batch_rows
        progress.rows(batch_rows)
    wall = time.perf_counter() - start
    progress.close()
    return wall, rows


# ----- serve ----------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """`serve`: the model behind an OpenAI-compatible server (`granite_fms.app.server`)."""
    from dataclasses import fields

    from granite_fms.app import server

    try:
        options = server.ServeOptions(
            **{f.name: getattr(args, f.name) for f in fields(server.ServeOptions)}
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    if args.distributed:
        raise UsageError("serve runs one model in one process; --distributed does not apply")
    _check_model(args)
    if _is_granite_speech5(args):
        raise UsageError("serve runs Granite Speech 3.x/4.x; Granite Speech 5.0 is not served yet")
    pipe = load_pipeline(args, Ranks.local_device(args.device_type))
    name = (
        Path(args.model_path).resolve().name
        if args.model_path
        else f"granite-speech-{args.variant}"
    )
    server.run(pipe, options, model=name, host=args.host, port=args.port, warmup=args.compile)
    return 0


def compile_artifact(args: argparse.Namespace) -> int:
    """`compile`: compile what requests of these sizes use (logged, under a progress bar) and
    save it as one artifact for --compile_cache."""
    args.compile = True
    _check_model(args)
    if _is_granite_speech5(args):
        raise UsageError("compile saves Granite Speech 3.x/4.x graphs; 5.0 compiles on its own")
    checks.writable_file(args.output, "--output")
    pipe = load_pipeline(args, Ranks.local_device(args.device_type))
    pipe.warmup(
        args.audio_seconds,
        args.batch_sizes,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
    )
    try:
        path = pipe.save_compiled(args.output)
    except (ValueError, RuntimeError, OSError) as e:
        raise UsageError(f"--output {args.output}: {e}") from e
    graphs = sum(pipe.generator.compiles.values())
    print(f"granite-fms: {graphs} graphs compiled, saved in {path}", file=sys.stderr)
    return 0


COMMANDS = {
    "transcribe": transcribe,
    "translate": transcribe,
    "eval": evaluate,
    "serve": serve,
    "compile": compile_artifact,
}
INTERRUPTED = {"eval": "; eval does not resume: no report was written"}

__all__ = ["COMMANDS", "load_pipeline", "run"]
