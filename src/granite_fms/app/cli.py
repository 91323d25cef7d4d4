"""`granite-fms`: transcribe or translate files, folders and manifests; evaluate WER and speed.

    granite-fms transcribe talk.wav clips/ --model_path granite-speech-3.3-2b --output_format srt
    granite-fms transcribe test-clean.jsonl --model_path CKPT --output rows.jsonl --compile
    torchrun --nproc-per-node 4 --no-python granite-fms transcribe DATA --model_path CKPT ...
    granite-fms translate talk.wav --model_path CKPT --target_language French
    granite-fms eval --model_path CKPT --manifest test-clean.jsonl --output results/eval.json
    granite-fms transcribe clips/ --variant tiny    # the built-in default: random weights
    granite-fms serve --model_path CKPT --compile   # OpenAI-compatible server on :8000

Flags shared with FMS's `scripts/inference.py` keep its names (`--model_path`, `--variant`,
`--tokenizer`, `--device_type`, `--default_dtype`, `--compile`, `--compile_mode`); output flags
follow Whisper's command line. Exit status: 0 every clip done, 1 some clips failed (each is
listed, and has a row with its `error`), 2 bad arguments, inputs or model.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from granite_fms.app import dataset, evaluation, writers
from granite_fms.app.dataset import Item, Request, ResultStore
from granite_fms.app.ranks import Ranks
from granite_fms.audio import longform
from granite_fms.inference.generation import Generator
from granite_fms.pipeline import SpeechPipeline, read_eos_token_ids

logger = logging.getLogger("granite_fms.app.cli")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OUTPUT_FORMATS = (*writers.FORMATS, "jsonl", "all")
MODES = ("eager", "compiled")


class UsageError(Exception):
    """Bad arguments, inputs or model: exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="granite-fms",
        description="Granite Speech on IBM's Foundation Model Stack: transcribe, translate, eval.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    group.add_argument(
        "--model_path", help="Hugging Face checkpoint directory (config, safetensors, tokenizer)"
    )
    group.add_argument(
        "--variant",
        help="a registered granite_speech variant with random weights instead of a checkpoint "
        "(`tiny`: the built-in default, for trying the tools; its text is meaningless)",
    )
    group.add_argument(
        "--tokenizer",
        help="tokenizer directory, if not the checkpoint's (default for --variant: a word-level "
        "stand-in, granite_fms.app.demo.word_tokenizer)",
    )
    group.add_argument(
        "--device_type",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device (default: cuda if available); under torchrun each rank takes its LOCAL_RANK",
    )
    group.add_argument(
        "--default_dtype",
        choices=tuple(DTYPES),
        help="weights and activations dtype (default: the checkpoint's)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="generate through compiled graphs (SpeechPipeline.compile: bucketed shapes, a "
        "static KV cache); each new bucket compiles on its first batch",
    )
    group.add_argument(
        "--compile_mode",
        help="torch.compile mode of the decode step (default: reduce-overhead on CUDA, else none)",
    )
    group.add_argument(
        "--compile_backend",
        default="inductor",
        help="torch.compile backend (default inductor; aot_eager or eager to debug the graphs)",
    )
    group.add_argument(
        "--compile_cache",
        metavar="DIR",
        help="root of Inductor's on-disk compile caches: a later run that compiles the same "
        "graphs loads them (a warm start) instead of generating code",
    )
    group.add_argument(
        "--quantize",
        choices=("int8",),
        help="int8 weight-only LLM linear layers (torchao), applied after loading",
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="tensor parallel under torchrun (FMS's TensorParallelStrategy): every rank holds "
        "a shard of the LLM and all ranks run the same batches; without it, torchrun's ranks "
        "each hold a whole model and share out the clips",
    )

    decoding = argparse.ArgumentParser(add_help=False)
    group = decoding.add_argument_group("decoding")
    group.add_argument(
        "--batch_size",
        type=_positive_int,
        default=8,
        help="windows per generation call; clips are sorted by duration and batched to about "
        "this many windows (default 8: a bucket of the default BucketPolicy)",
    )
    group.add_argument(
        "--num_beams", type=_positive_int, default=1, help="beam search width (1: greedy)"
    )
    group.add_argument(
        "--max_new_tokens",
        type=_positive_int,
        help="new-token budget of every window (default: 200 per 30 s of the window, and 200 "
        "for a clip that is not cut)",
    )
    group.add_argument(
        "--chunk_length",
        type=float,
        default=30.0,
        help="longest window in seconds; longer clips are cut into windows (default 30)",
    )
    group.add_argument(
        "--segmentation",
        choices=longform.SEGMENTATIONS,
        default="fixed",
        help="fixed: equal windows end to end; vad: energy-based voice activity detection "
        "(long silences skipped, cuts in pauses)",
    )
    group.add_argument(
        "--language", help="the spoken language, recorded in each result (not in the prompt)"
    )

    keyword = argparse.ArgumentParser(add_help=False)
    keyword.add_argument(
        "--keyword",
        action="append",
        default=[],
        metavar="WORD",
        help="a word to bias the transcript towards (repeatable), as the model cards do",
    )

    output = argparse.ArgumentParser(add_help=False)
    group = output.add_argument_group("output")
    group.add_argument(
        "--output_format",
        choices=OUTPUT_FORMATS,
        default="all",
        help="txt, json, srt, vtt, tsv: one file per clip in --output_dir, named after it; "
        "jsonl: one row per clip in --output; all: every one of them (default)",
    )
    group.add_argument("--output_dir", default=".", help="directory of the per-clip files")
    group.add_argument(
        "--output",
        metavar="FILE",
        help="JSONL file, one row per clip, appended after every batch (default with jsonl or "
        "all: OUTPUT_DIR/<command>.jsonl); rerunning with the same file skips the clips it "
        "holds and retries the failed ones",
    )
    inputs = argparse.ArgumentParser(add_help=False)
    inputs.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, directories (every .wav/.flac below them) and NeMo JSONL manifests "
        "(audio_filepath, optional duration and text)",
    )

    sub.add_parser(
        "transcribe",
        parents=[inputs, model, decoding, keyword, output],
        help="speech to text in its own language",
        description="Transcribe audio of any length into text with timed segments.",
    )
    translate = sub.add_parser(
        "translate",
        parents=[inputs, model, decoding, output],
        help="speech to text in another language",
        description="Translate the speech of audio of any length into another language.",
    )
    translate.add_argument(
        "--target_language", required=True, help="the language to translate into, e.g. French"
    )
    evaluate = sub.add_parser(
        "eval",
        parents=[model, decoding, keyword],
        help="WER, CER, RTFx and tokens/s on a manifest, eager and compiled",
        description="Transcribe a manifest with references in each mode and score it: WER and "
        "CER (jiwer, after granite_fms.app.evaluation's normaliser), RTFx and tokens/s. Writes "
        "the report as JSON (with provenance) and as Markdown beside it.",
    )
    evaluate.add_argument(
        "--manifest", required=True, help="NeMo JSONL manifest whose rows all have a `text`"
    )
    evaluate.add_argument(
        "--output", required=True, metavar="FILE", help="report JSON (and FILE with .md)"
    )
    evaluate.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="generation modes, run one after the other on the same clips (default: both); "
        "a compiled mode is timed after a warm-up pass",
    )
    serve = sub.add_parser(
        "serve",
        parents=[model],
        help="an OpenAI-compatible transcription server with dynamic batching",
        description="Serve /v1/audio/transcriptions and /v1/audio/translations (and /v1/models, "
        "/health, /metrics) with FastAPI on uvicorn; requests that arrive together are decoded "
        "in one batch. With --compile, every batch size is compiled before the port opens. "
        "See granite_fms.app.server.",
    )
    flag = serve.add_argument
    flag("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    flag("--port", type=int, default=8000, help="port (default 8000)")
    flag("--max_batch_size", type=_positive_int, default=8, help="requests per batch (default 8)")
    flag("--batch_window_ms", type=float, default=20.0, help="ms to gather a batch (default 20)")
    flag(
        "--api-key",
        dest="api_key",
        default=os.environ.get("GRANITE_FMS_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $GRANITE_FMS_API_KEY, else none)",
    )
    flag("--max_file_mb", type=float, default=25.0, help="largest upload, else 413 (default 25)")
    flag("--max_audio_s", type=float, default=600.0, help="longest audio, else 413 (default 600)")
    flag("--max_queue", type=_positive_int, default=64, help="queue, else 503 (default 64)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="granite-fms: %(levelname)s: %(message)s")
    logging.getLogger("granite_fms").setLevel(logging.INFO)
    # Cut windows are named in each result's `warnings`; one log line each would bury the bar.
    logging.getLogger("granite_fms.pipeline").setLevel(logging.ERROR)
    try:
        try:
            if args.command == "serve":
                return _serve(args)
            return _eval(args) if args.command == "eval" else _transcribe(args)
        except UsageError as e:
            print(f"granite-fms: error: {e}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("granite-fms: interrupted; rerun with the same --output to resume", file=sys.stderr)
        return 130


def load_pipeline(args: argparse.Namespace, device: str) -> SpeechPipeline:
    """The pipeline the model flags describe; UsageError for a bad model or tokenizer."""
    from fms.models import list_variants

    from granite_fms.app.demo import random_pipeline
    from granite_fms.audio.processor import GraniteSpeechProcessor

    if bool(args.model_path) == bool(args.variant):
        raise UsageError(
            "pass --model_path DIR (a checkpoint) or --variant NAME (random weights), not both"
            if args.model_path
            else "pass --model_path DIR (a checkpoint) or --variant tiny (random weights)"
        )
    dtype = DTYPES.get(args.default_dtype)
    try:
        if args.model_path:
            if not Path(args.model_path).is_dir():
                raise UsageError(f"--model_path {args.model_path} is not a directory")
            pipe = SpeechPipeline.from_pretrained(
                args.model_path,
                dtype=dtype,
                device=device,
                distributed_strategy="tp" if args.distributed else None,
            )
        else:
            if args.variant not in list_variants("granite_speech"):
                raise UsageError(
                    f"--variant {args.variant!r} is not one of "
                    f"{list_variants('granite_speech')} (granite_speech variants)"
                )
            pipe = random_pipeline(args.variant, dtype=dtype, device=device)
        if args.tokenizer:
            processor = GraniteSpeechProcessor.from_pretrained(args.tokenizer)
            if processor.tokenizer is None:
                raise UsageError(f"--tokenizer {args.tokenizer} holds no tokenizer files")
            eos = read_eos_token_ids(args.model_path) if args.model_path else []
            pipe = SpeechPipeline(
                pipe.model, processor, eos_token_id=eos[0] if len(eos) == 1 else eos or None
            )
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as e:
        raise UsageError(f"could not load the model: {e}") from e
    if pipe.tokenizer is None:
        raise UsageError(f"{args.model_path} has no tokenizer files; pass --tokenizer DIR")
    if args.quantize:
        pipe.generator = Generator(pipe.model, compile=False, quantize=args.quantize)
    if args.compile:
        _compile(pipe, args)
    return pipe


def _compile(pipe: SpeechPipeline, args: argparse.Namespace) -> None:
    pipe.compile(mode=args.compile_mode, backend=args.compile_backend, cache_dir=args.compile_cache)


def _request(args: argparse.Namespace) -> Request:
    try:
        longform.check_chunk_length(args.chunk_length)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--chunk_length: {e}") from e
    return Request(
        task="translate" if args.command == "translate" else "transcribe",
        target_language=getattr(args, "target_language", None),
        language=args.language,
        keywords=tuple(getattr(args, "keyword", ())),
        chunk_length=args.chunk_length,
        segmentation=args.segmentation,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        batch_size=args.batch_size,
    )


def _collect(inputs: list[str]) -> list[Item]:
    try:
        return dataset.collect(inputs)
    except (FileNotFoundError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(str(e)) from e


# ----- transcribe / translate -----------------------------------------------------------------


def _transcribe(args: argparse.Namespace) -> int:
    request = _request(args)
    fmt = args.output_format
    formats = writers.FORMATS if fmt == "all" else (fmt,) if fmt in writers.FORMATS else ()
    jsonl = args.output
    if jsonl is None and fmt in ("jsonl", "all"):
        jsonl = str(Path(args.output_dir) / f"{args.command}.jsonl")
    items = _collect(args.inputs)
    if formats:
        _check_names(items)
    if args.distributed:  # tensor parallel: join the group first, then load a shard
        ranks = Ranks.tensor_parallel(args.device_type)
        if not args.model_path:
            raise UsageError("--distributed needs --model_path (a checkpoint to shard)")
        pipe = load_pipeline(args, ranks.device)
    else:
        # Loaded before joining torchrun's group: FMS's get_model (--variant) would shard it
        # over the group's ranks; here every rank holds a whole model and takes its own clips.
        pipe = load_pipeline(args, Ranks.local_device(args.device_type))
        ranks = Ranks.from_env(args.device_type)
    try:
        return _run_items(args, pipe, ranks, request, items, jsonl, formats)
    finally:
        ranks.close()


def _run_items(
    args: argparse.Namespace,
    pipe: SpeechPipeline,
    ranks: Ranks,
    request: Request,
    items: list[Item],
    jsonl: str | None,
    formats: tuple[str, ...],
) -> int:
    if not ranks.main:
        logging.getLogger("granite_fms").setLevel(logging.WARNING)
    store = ResultStore(jsonl) if jsonl else None
    done = ranks.broadcast(store.load() if store is not None and ranks.main else set())
    pending = [item for item in items if item.audio_filepath not in done]
    if done:
        logger.info("%d of %d clips are already in %s: skipped", len(done), len(items), jsonl)
    mine = dataset.probe(ranks.shard(pending))
    batches = dataset.plan_batches(mine, args.batch_size, args.chunk_length)

    progress = _Progress(len(pending), args.command, enabled=ranks.main)
    failed: list[dict[str, Any]] = []
    warned = 0
    for rows in dataset.run(pipe, batches, request, ranks):
        if store is not None:
            store.append(rows)
        for row in rows:
            if "error" in row:
                failed.append(row)
                continue
            warned += bool(row["warnings"])
            for f in formats:
                writers.write(_result(row), Path(row["audio_filepath"]).stem, f, args.output_dir)
        progress.update(rows)
    progress.close()
    if ranks.main:
        if warned:
            logger.warning(
                "%d clips have warnings (windows cut by their budget): see their rows", warned
            )
        for row in failed:
            print(f"granite-fms: failed: {row['audio_filepath']}: {row['error']}", file=sys.stderr)
    return 1 if ranks.broadcast(len(failed)) else 0


def _check_names(items: list[Item]) -> None:
    """Per-clip files are named after the clip: two clips of one name would overwrite."""
    seen: dict[str, str] = {}
    for item in items:
        stem = Path(item.audio_filepath).stem
        if stem in seen:
            raise UsageError(
                f"{seen[stem]} and {item.audio_filepath} would both write {stem}.* in "
                "--output_dir; use --output_format jsonl (rows keyed by path) or rename one"
            )
        seen[stem] = item.audio_filepath


def _result(row: dict[str, Any]) -> dict[str, Any]:
    """What the per-clip files hold: Whisper's result keys (text, segments, language)."""
    keys = ("text", "segments", "language", "warnings")
    return {k: row[k] for k in keys if k in row}


class _Progress:
    """A tqdm bar over clips, with the audio hours done and the live RTFx."""

    def __init__(self, total: int, desc: str, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="clip", disable=not enabled, file=sys.stderr)
        self.enabled = enabled
        self.start = time.perf_counter()
        self.audio_s = 0.0

    def update(self, rows: list[dict[str, Any]]) -> None:
        self.audio_s += sum(row.get("duration") or 0.0 for row in rows if "error" not in row)
        wall = time.perf_counter() - self.start
        self.bar.set_postfix_str(f"audio {self.audio_s / 3600:.3f} h, RTFx {self.rtfx(wall):.1f}")
        self.bar.update(len(rows))

    def rtfx(self, wall: float) -> float:
        return self.audio_s / wall if wall > 0 else 0.0

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            wall = time.perf_counter() - self.start
            print(
                f"granite-fms: {self.bar.n} clips, {self.audio_s / 3600:.3f} h of audio in "
                f"{wall:.1f} s: RTFx {self.rtfx(wall):.1f}",
                file=sys.stderr,
            )


# ----- serve ----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
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
    pipe = load_pipeline(args, Ranks.local_device(args.device_type))
    name = (
        Path(args.model_path).resolve().name
        if args.model_path
        else f"granite-speech-{args.variant}"
    )
    server.run(pipe, options, model=name, host=args.host, port=args.port, warmup=args.compile)
    return 0


# ----- eval -----------------------------------------------------------------------------------


def _eval(args: argparse.Namespace) -> int:

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("eval runs in one process (its timings compare modes on one device)")
    request = _request(args)
    try:
        items = dataset.read_manifest(args.manifest)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--manifest: {e}") from e
    missing = [i.audio_filepath for i in items if i.reference is None]
    if missing or not items:
        raise UsageError(f"--manifest {args.manifest}: rows without a reference `text`: {missing}")
    args.compile = False  # the modes say how to generate
    from granite_fms.provenance import provenance

    origin = provenance()  # before the run: the code that ran, whatever changes during it
    load_before = os.getloadavg()
    pipe = load_pipeline(args, Ranks.local_device(args.device_type))
    items = dataset.probe(items)
    batches = dataset.plan_batches(items, args.batch_size, args.chunk_length)

    modes: dict[str, dict[str, Any]] = {}
    texts: dict[str, dict[str, str]] = {}
    failed = 0
    for mode in args.modes:
        if mode == "compiled":
            _compile(pipe, args)
        else:
            pipe.generator = Generator(pipe.model, compile=False)
        warmup = None
        if mode == "compiled":
            warmup, _ = _timed_pass(pipe, batches, request, f"{mode} warm-up")
        wall, rows = _timed_pass(pipe, batches, request, mode)
        good = [r for r in rows if "error" not in r]
        failed += len(rows) - len(good)
        for row in rows:
            if "error" in row:
                print(
                    f"granite-fms: failed: {row['audio_filepath']}: {row['error']}", file=sys.stderr
                )
        references = {i.audio_filepath: i.reference for i in items}
        scores = (
            evaluation.error_rates(
                [references[r["audio_filepath"]] for r in good], [r["text"] for r in good]
            )
            if good
            else {"wer": None, "cer": None}
        )
        audio = sum(r["duration"] for r in good)
        tokens = sum(len(s["tokens"]) for r in good for s in r["segments"])
        modes[mode] = {
            **scores,
            "rtfx": audio / wall,
            "tokens_per_s": tokens / wall,
            "new_tokens": tokens,
            "wall_s": wall,
            "warmup_s": warmup,
            "audio_s": audio,
            "items": len(good),
            "failed": len(rows) - len(good),
        }
        texts[mode] = {r["audio_filepath"]: r["text"] for r in good}

    report = _report(args, pipe, items, modes, texts, origin)
    # On a shared machine other work moves the timings: the load says how much there was.
    report["settings"]["load_average"] = {"before": load_before, "after": os.getloadavg()}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(evaluation.markdown(report))
    for mode, m in modes.items():
        scores = (
            "no clip scored"
            if m["wer"] is None
            else (f"WER {100 * m['wer']:.2f} %, CER {100 * m['cer']:.2f} %")
        )
        print(
            f"granite-fms: {mode}: {scores}, RTFx {m['rtfx']:.1f}, "
            f"{m['tokens_per_s']:.1f} tokens/s",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _timed_pass(
    pipe: SpeechPipeline, batches: list[list[Item]], request: Request, desc: str
) -> tuple[float, list[dict[str, Any]]]:
    progress = _Progress(sum(len(b) for b in batches), desc, enabled=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for batch_rows in dataset.run(pipe, batches, request, Ranks()):
        rows += batch_rows
        progress.update(batch_rows)
    wall = time.perf_counter() - start
    progress.close()
    return wall, rows


def _report(args, pipe, items, modes, texts, origin) -> dict[str, Any]:
    manifest = Path(args.manifest)
    report: dict[str, Any] = {
        "model": args.model_path or f"variant {args.variant}",
        "random_weights": args.model_path is None,
        "manifest": {
            "path": str(manifest),
            "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "items": len(items),
            "audio_hours": sum(i.duration or 0.0 for i in items) / 3600,
        },
        "normaliser": evaluation.NORMALISER,
        "settings": {
            "device": str(pipe.device),
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "batch_size": args.batch_size,
            "num_beams": args.num_beams,
            "max_new_tokens": args.max_new_tokens,
            "chunk_length": args.chunk_length,
            "segmentation": args.segmentation,
            "keywords": list(args.keyword),
            "compile_mode": args.compile_mode,
            "compile_backend": args.compile_backend,
            "torch_threads": torch.get_num_threads(),
        },
        "modes": modes,
        "provenance": origin,
    }
    if len(texts) > 1:
        keys = set.intersection(*(set(t) for t in texts.values()))
        same = sum(len({t[k] for t in texts.values()}) == 1 for k in keys)
        report["same_text"] = f"{same} of {len(keys)}"
    report["items"] = [
        {
            "audio_filepath": i.audio_filepath,
            "reference": i.reference,
            "hypotheses": {mode: t.get(i.audio_filepath) for mode, t in texts.items()},
        }
        for i in items
    ]
    return report


if __name__ == "__main__":
    sys.exit(main())
