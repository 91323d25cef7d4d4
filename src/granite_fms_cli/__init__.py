"""`granite-fms`: transcribe or translate files, folders and manifests; evaluate WER and speed.

    granite-fms transcribe talk.wav clips/ --model_path granite-speech-3.3-2b --output_format srt
    granite-fms transcribe test-clean.jsonl --model_path CKPT --output rows.jsonl --compile
    torchrun --nproc-per-node 4 --no-python granite-fms transcribe DATA --model_path CKPT ...
    granite-fms translate talk.wav --model_path CKPT --target_language French
    granite-fms eval --model_path CKPT --manifest test-clean.jsonl --output results/eval.json
    granite-fms transcribe clips/ --variant tiny    # the built-in default: random weights
    granite-fms transcribe clips/ --variant tiny-ctc    # the same for Granite Speech 5.0 (CTC)
    granite-fms serve --model_path CKPT --compile   # OpenAI-compatible server on :8000
    granite-fms compile --model_path CKPT --output granite.compiled   # then --compile_cache

This module is the command's front door: it parses the command line with the standard library
only, so `--help`, `--version` and argument errors answer at once, and then hands the parsed
arguments to `granite_fms.app.cli.run`, which imports torch and FMS. It lives outside the
`granite_fms` package because importing that package registers the architecture with FMS, which
imports torch (seconds).

Flags shared with FMS's `scripts/inference.py` keep its names (`--model_path`, `--variant`,
`--tokenizer`, `--device_type`, `--default_dtype`, `--compile`, `--compile_mode`); output flags
follow Whisper's command line. A subcommand is a function that adds its parser (below) and an
entry in `granite_fms.app.cli.COMMANDS`.
"""

import argparse
import os
import sys

# The exit status of every command.
EXIT_CODES = """exit status:
  0    every item done
  1    some items failed: each is listed on stderr (and has a row with its `error`)
  2    bad arguments, configuration or inputs, found before any work
  3    an internal error: one line on stderr, the traceback in the log file it names
  130  interrupted (Ctrl-C)"""

# Choices the command line offers; tests/test_cli.py checks them against the library's.
OUTPUT_FORMATS = ("txt", "json", "srt", "vtt", "tsv", "jsonl", "all")  # writers.FORMATS + 2
SEGMENTATIONS = ("fixed", "vad")  # granite_fms.audio.longform.SEGMENTATIONS
QUANTIZE = ("int8",)  # granite_fms.inference.quantize.SCHEMES
DTYPES = ("bf16", "fp16", "fp32")
MODES = ("eager", "compiled")
BATCH_SIZE = 8  # granite_fms.audio.longform.BATCH_SIZE


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


class _NotForEval(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--compile is not an eval flag: eval runs each of --modes (eager compiled)")


# fmt: off
def _model_flags(compile_switch: bool) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = flags.add_argument_group("model")
    group.add_argument("--model_path", help="Hugging Face checkpoint directory (config, safetensors, tokenizer)")
    group.add_argument("--variant", help="a registered granite_speech (or granite_speech5) variant with random weights instead of a checkpoint (`tiny`: the built-in default, `tiny-ctc`: the same for Granite Speech 5.0; for trying the tools, their text is meaningless)")
    group.add_argument("--tokenizer", help="tokenizer directory, if not the checkpoint's (default for --variant: a word-level stand-in, granite_fms.app.demo.word_tokenizer)")
    group.add_argument("--device_type", choices=("cpu", "cuda"), help="device (default: cuda if available); under torchrun each rank takes its LOCAL_RANK")
    group.add_argument("--default_dtype", choices=DTYPES, help="weights and activations dtype (default: the checkpoint's)")
    group.add_argument("--quantize", choices=QUANTIZE, help="int8 weight-only LLM linear layers (torchao), applied after loading")
    group.add_argument("--distributed", action="store_true", help="tensor parallel under torchrun (FMS's TensorParallelStrategy): every rank holds a shard of the LLM and all ranks run the same batches; without it, torchrun's ranks each hold a whole model and share out the clips")
    group = flags.add_argument_group("compile")
    if compile_switch:
        group.add_argument("--compile", action="store_true", help="generate through compiled graphs (SpeechPipeline.compile: symbolic shapes, a static KV cache); each graph compiles on the first batch that needs it, logged")
    else:
        group.add_argument("--compile", nargs=0, action=_NotForEval, help=argparse.SUPPRESS)
    group.add_argument("--compile_mode", help="torch.compile mode of the decode step (default: reduce-overhead on CUDA, else none)")
    group.add_argument("--compile_regional", action="store_true", help="compile each conformer block and decoder layer once (CompileConfig(regional=True)): a shorter cold compile, the steady state measured in the guidelines (GS-9); implies --compile")
    group.add_argument("--compile_backend", default="inductor", help="torch.compile backend (default inductor; aot_eager or eager to debug the graphs)")
    group.add_argument("--compile_cache", metavar="FILE", help="an artifact of `granite-fms compile` to start warm from (implies --compile; made with another torch, triton or device: a warning, then a compile)")
    return flags


def _decoding_flags(keywords: bool) -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = flags.add_argument_group("decoding")
    group.add_argument("--batch_size", type=_positive_int, default=BATCH_SIZE, help=f"windows per generation call; clips are sorted by duration and batched to about this many windows (default {BATCH_SIZE}, as the API's)")
    group.add_argument("--num_beams", type=_positive_int, default=1, help="beam search width (1: greedy)")
    group.add_argument("--max_new_tokens", type=_positive_int, help="new-token budget of every window (default: 200 per 30 s of the window, and 200 for a clip that is not cut); capped to fit the model's positions, with a warning")
    group.add_argument("--chunk_length", type=float, default=30.0, help="longest window in seconds; longer clips are cut into windows (default 30; shortened, with a warning, where 30 s does not fit the model's positions)")
    group.add_argument("--segmentation", choices=SEGMENTATIONS, default="fixed", help="fixed: equal windows end to end; vad: energy-based voice activity detection (long silences skipped, cuts in pauses)")
    group.add_argument("--language", help="the spoken language, recorded in each result (not in the prompt)")
    if keywords:
        group.add_argument("--keyword", action="append", default=[], metavar="WORD", help="a word to bias the transcript towards (repeatable), as the model cards do")
    return flags


def _output_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    flags.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files (.wav .flac .mp3 .ogg .opus ...), folders (every audio file below them) and NeMo JSONL manifests (audio_filepath; optional duration, text and any other fields, kept in the rows)")
    group = flags.add_argument_group("output")
    group.add_argument("--output_format", choices=OUTPUT_FORMATS, default="all", help="txt, json, srt, vtt, tsv: one file per clip in --output_dir, named after it; jsonl: one row per clip in --output; all: every one of them (default)")
    group.add_argument("--output_dir", default=".", help="directory of the per-clip files (default: the current one)")
    group.add_argument("--output", metavar="FILE", help="JSONL rows, one per clip, with the settings that made each (default with jsonl or all: OUTPUT_DIR/<command>.jsonl); a rerun with the same settings resumes it, with other settings it is refused")
    group.add_argument("--overwrite", action="store_true", help="start --output afresh instead of resuming it")
    group.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True, help="print each clip's segments on stdout as it is decoded (default; --no-verbose: only the progress bar)")
    return flags
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="granite-fms",
        description="Granite Speech on IBM's Foundation Model Stack: transcribe, translate, eval, "
        "serve, compile.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _transcribe(commands)
    _translate(commands)
    _eval(commands)
    _serve(commands)
    _compile(commands)
    return parser


def _command(commands, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand's parser, its help ending with the exit statuses."""
    return commands.add_parser(
        name,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        **kwargs,
    )


def _transcribe(commands) -> None:
    _command(
        commands,
        "transcribe",
        parents=[_output_flags(), _model_flags(True), _decoding_flags(keywords=True)],
        help="speech to text in its own language",
        description="Transcribe audio of any length into text with timed segments.",
    )


def _translate(commands) -> None:
    translate = _command(
        commands,
        "translate",
        parents=[_output_flags(), _model_flags(True), _decoding_flags(keywords=False)],
        help="speech to text in another language",
        description="Translate the speech of audio of any length into another language.",
    )
    translate.add_argument(
        "--target_language", required=True, help="the language to translate into, e.g. French"
    )


def _eval(commands) -> None:
    evaluate = _command(
        commands,
        "eval",
        parents=[_model_flags(False), _decoding_flags(keywords=True)],
        help="WER, CER, RTFx and tokens/s on a manifest, eager and compiled",
        description="Transcribe a manifest with references in each mode and score it: WER and "
        "CER (jiwer, after granite_fms.app.evaluation's normaliser), RTFx and tokens/s. Writes "
        "the report as JSON (with provenance) and as Markdown beside it. It does not resume: "
        "an interrupted eval writes nothing.",
    )
    # fmt: off
    evaluate.add_argument("--manifest", required=True, help="NeMo JSONL manifest whose rows all have a `text`")
    evaluate.add_argument("--output", required=True, metavar="FILE", help="report JSON (and FILE with .md)")
    evaluate.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="generation modes, run one after the other on the same clips (default: both); a compiled mode is timed after a warm-up pass")
    # fmt: on


def _serve(commands) -> None:
    serve = _command(
        commands,
        "serve",
        parents=[_model_flags(True)],
        help="an OpenAI-compatible transcription server with dynamic batching",
        description="Serve /v1/audio/transcriptions and /v1/audio/translations (and /v1/models, "
        "/health, /metrics) with FastAPI on uvicorn; requests that arrive together are decoded "
        "in one batch. With --compile, every batch size is compiled before the port opens. "
        "See granite_fms.app.server.",
    )
    # Defaults: granite_fms.app.server.ServeOptions' (tests/test_server.py checks them).
    # fmt: off
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max_batch_size", type=_positive_int, default=8, help="requests per batch (default 8)")
    serve.add_argument("--batch_window_ms", type=float, default=20.0, help="ms to gather a batch (default 20)")
    serve.add_argument("--api-key", dest="api_key", default=os.environ.get("GRANITE_FMS_API_KEY"), help="require 'Authorization: Bearer KEY' (default: $GRANITE_FMS_API_KEY, else none)")
    serve.add_argument("--max_file_mb", type=float, default=25.0, help="largest upload, else 413 (default 25)")
    serve.add_argument("--max_audio_s", type=float, default=600.0, help="longest audio, else 413 (default 600)")
    serve.add_argument("--max_queue", type=_positive_int, default=64, help="queue, else 503 (default 64)")
    # fmt: on


def _compile(commands) -> None:
    compile_ = _command(
        commands,
        "compile",
        parents=[_model_flags(True)],
        help="compile once and save the result for --compile_cache",
        description="Compile the graphs that requests of these sizes use (a progress bar, a log "
        "line per graph) and save them as one file; --compile_cache FILE (or "
        "SpeechPipeline.compile(cache=FILE)) loads it in any later process with the same torch, "
        "triton and device.",
    )
    # fmt: off
    compile_.add_argument("--output", required=True, metavar="FILE", help="the artifact to write")
    compile_.add_argument("--batch_sizes", nargs="+", type=_positive_int, default=[1, BATCH_SIZE], help=f"batch sizes to compile for (default: 1 {BATCH_SIZE})")
    compile_.add_argument("--audio_seconds", nargs="+", type=float, help="clip lengths to compile for (default: one within an encoder block and one over several)")
    compile_.add_argument("--num_beams", nargs="+", type=_positive_int, default=[1], help="beam widths to compile for (default: 1)")
    compile_.add_argument("--max_new_tokens", type=_positive_int, default=200, help="the budget whose cache length to compile for (default 200)")
    # fmt: on


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("granite-fms")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (argparse exits 2 on bad arguments, 0 after --help), then run the command
    (`granite_fms.app.cli.run`); returns the exit status (`EXIT_CODES`)."""
    args = build_parser().parse_args(argv)
    try:
        from granite_fms.app.cli import run
    except KeyboardInterrupt:
        print("granite-fms: interrupted", file=sys.stderr)
        return 130
    return run(args)


__all__ = ["EXIT_CODES", "build_parser", "main"]
