"""The `granite-fms` command: every output format, settings-aware resume, the lock, unreadable
clips, the exit-status contract, torchrun with 2 processes, and eval's WER harness.

Runs call `granite_fms_cli.main(argv)` in this process (the entry point `granite-fms` is that
function), except where a fresh process is the point (imports, torchrun). Budgets are a few
tokens: the text of a random model says nothing, the rows and files around it do. The
catalogue of refused command lines is `test_refused_before_the_model_loads`.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
import torch

import granite_fms_cli
from granite_fms.app import cli, dataset, evaluation, writers
from granite_fms.app.results import ResultStore
from granite_fms.audio import longform
from granite_fms.audio.longform import LongFormOptions
from granite_fms.inference import quantize
from granite_fms.inference.options import GenerationOptions
from granite_fms.pipeline import SpeechPipeline
from helpers import DATA, RATE, long_recording

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parent.parent / "src"
FAST = ["--max_new_tokens", "3", "--device_type", "cpu"]


def main(*argv) -> int:
    return granite_fms_cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder: two short clips, and a recording over 60 s one level down."""
    root = tmp_path_factory.mktemp("clips")
    shutil.copy(DATA / "fox_16k.wav", root / "fox.wav")
    shutil.copy(DATA / "fox_stereo.flac", root / "stereo.flac")
    (root / "talks").mkdir()
    sf.write(root / "talks" / "talk.wav", long_recording()[0].numpy(), RATE)
    return root


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Four fixture clips by relative path, shortest first, durations for two of them, and a
    field of the manifest's own (`speaker`)."""
    root = tmp_path_factory.mktemp("manifest")
    names = ["short_16k.wav", "short_22k.wav", "fox_16k.wav", "long_16k.wav"]
    for name in names:
        shutil.copy(DATA / name, root / name)
    rows = [{"audio_filepath": n, "text": "hello world", "speaker": i} for i, n in enumerate(names)]
    rows[0]["duration"], rows[2]["duration"] = 1.21875, 2.4
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model is a failure (exit status 3): what is refused, is refused before."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_pipeline", load)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def untimed(rows: list[dict]) -> dict[str, dict]:
    return {r["audio_filepath"]: {k: v for k, v in r.items() if k != "timing"} for r in rows}


def test_transcribe_a_folder_writes_every_format(dirs, clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert main("transcribe", clips, "--model_path", dirs[1], "--output_dir", out, *FAST) == 0
    rows = read_rows(out / "transcribe.jsonl")
    names = [Path(r["audio_filepath"]).name for r in rows]
    assert names == ["fox.wav", "stereo.flac", "talk.wav"]  # input order: sorted paths
    for row in rows:
        stem = Path(row["audio_filepath"]).stem
        assert {p.name for p in out.glob(f"{stem}.*")} == {
            f"{stem}.{f}" for f in ("txt", "json", "srt", "vtt", "tsv")
        }
        saved = json.loads((out / f"{stem}.json").read_text())
        assert saved["segments"] == row["segments"] and saved["text"] == row["pred_text"]
        assert (out / f"{stem}.srt").read_text().count(" --> ") == len(row["segments"])
        assert row["timing"]["wall_s"] > 0 and row["settings"]["task"] == "transcribe"
        assert row["settings"]["model"] == str(dirs[1].resolve())
        assert row["settings"]["max_new_tokens"] == 3 and "batch_size" not in row["settings"]
    talk = rows[2]
    assert talk["duration"] > 60 and len(talk["segments"]) == 3
    assert talk["segments"][-1]["end"] == talk["duration"]
    std = capsys.readouterr()
    assert "RTFx" in std.err and "s of audio" in std.err
    # --verbose (the default): each clip's segments on stdout, as Whisper prints them.
    first = rows[0]["segments"][0]
    assert f"[00:00.000 --> 00:02.400] {first['text'].strip()}" in std.out
    assert std.out.count(" --> ") == sum(len(r["segments"]) for r in rows)


def test_the_command_line_offers_the_library_choices():
    parser = granite_fms_cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == {"transcribe", "translate", "eval", "serve", "compile"}
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    flags = {s for a in subparsers["transcribe"]._actions for s in a.option_strings}
    assert {"--model_path", "--device_type", "--default_dtype", "--compile", "--compile_mode"} <= (
        flags
    )
    assert granite_fms_cli.OUTPUT_FORMATS == (*writers.FORMATS, "jsonl", "all")
    assert granite_fms_cli.SEGMENTATIONS == longform.SEGMENTATIONS
    assert granite_fms_cli.QUANTIZE == quantize.SCHEMES
    assert granite_fms_cli.DTYPES == tuple(cli.DTYPES)
    default = LongFormOptions().batch_size  # what transcribe uses when given none
    assert granite_fms_cli.BATCH_SIZE == default == longform.BATCH_SIZE


def test_help_and_version_do_not_import_torch():
    """They answer from the standard library alone (`granite_fms` imports torch and FMS)."""
    code = (
        "import sys, granite_fms_cli\n"
        "for argv in (['--help'], ['--version'], ['transcribe', '--help']):\n"
        "    try:\n"
        "        granite_fms_cli.main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'granite_fms')))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[]")
    assert "exit status:" in done.stdout and "130  interrupted" in done.stdout
    assert "granite-fms " in done.stdout  # --version


def test_a_run_shows_no_third_party_warnings_and_no_traceback(dirs, tmp_path):
    """A plain run in a fresh process: transformers imports torchao, whose two deprecation
    messages torch logs at import; no --quantize, so they are not shown."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    argv = ["transcribe", DATA / "fox_16k.wav", "--model_path", dirs[1], *FAST]
    argv += ["--output_dir", tmp_path, "--no-verbose"]
    done = subprocess.run(
        [sys.executable, "-m", "granite_fms_cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Enum subclass" not in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""  # --no-verbose


def test_cuda_runtime_message_is_dropped_on_the_cpu(caplog):
    args = granite_fms_cli.build_parser().parse_args(["transcribe", "x.wav", *FAST])
    cli._logging(args)
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using")
        logging.getLogger("torch.utils.cpp_extension").warning("another message")
    assert "No CUDA runtime" not in caplog.text and "another message" in caplog.text


def test_interrupted_manifest_run_resumes_without_duplicates(dirs, manifest, tmp_path, monkeypatch):
    argv = ["transcribe", manifest, "--model_path", dirs[1], *FAST]
    argv += ["--output_format", "jsonl", "--batch_size", "1"]
    reference = tmp_path / "reference.jsonl"
    assert main(*argv, "--output", reference) == 0
    out = tmp_path / "rows.jsonl"
    append = ResultStore.append
    calls = []

    def stop_after_two_batches(self, rows):
        append(self, rows)
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultStore, "append", stop_after_two_batches)
    assert main(*argv, "--output", out) == 130
    monkeypatch.undo()
    first = read_rows(out)
    assert len(first) == 2 and not Path(f"{out}.lock").exists()
    with out.open("a") as f:  # a write cut short
        f.write('{"audio_filepath": "short_22k.wav", "text": "w1 w')

    assert main(*argv, "--output", out) == 0
    rows = read_rows(out)
    assert len(rows) == 4 and untimed(rows) == untimed(read_rows(reference))
    assert [r["audio_filepath"] for r in rows] == [  # input order, not longest first
        "short_16k.wav",
        "short_22k.wav",
        "fox_16k.wav",
        "long_16k.wav",
    ]
    assert main(*argv, "--output", out) == 0  # nothing left: nothing appended
    assert len(read_rows(out)) == 4


def test_rows_are_nemo_rows(dirs, manifest, tmp_path):
    """Every manifest field kept as it is (its `text` is the reference), the hypothesis in
    `pred_text`; the manifest's duration where it has one, the file's where not."""
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", manifest, "--model_path", dirs[1], *FAST, "--output_format", "jsonl"]
    assert main(*argv, "--output", out, "--language", "English") == 0
    given = read_rows(manifest)
    for row, source in zip(read_rows(out), given, strict=True):
        assert {k: row[k] for k in source} == source
        assert row["pred_text"] == row["segments"][0]["text"] and row["language"] == "English"
    rows = read_rows(out)
    assert rows[1]["duration"] == pytest.approx(
        sf.info(manifest.parent / "short_22k.wav").duration, abs=1e-4
    )


def test_a_rerun_with_other_settings_is_refused_until_overwrite(dirs, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    shutil.copy(DATA / "fox_16k.wav", clip)
    argv = ["transcribe", clip, "--model_path", dirs[1], "--device_type", "cpu"]
    argv += ["--output_dir", tmp_path]
    assert main(*argv, "--max_new_tokens", "2") == 0
    before = (tmp_path / "transcribe.jsonl").read_text()
    assert main(*argv, "--max_new_tokens", "5") == 2
    err = capsys.readouterr().err
    assert "holds 1 rows made with other settings (max_new_tokens 2 there, 5 now)" in err
    assert "--overwrite" in err and (tmp_path / "transcribe.jsonl").read_text() == before
    assert main(*argv, "--max_new_tokens", "5", "--overwrite") == 0
    (row,) = read_rows(tmp_path / "transcribe.jsonl")
    assert row["settings"]["max_new_tokens"] == 5
    assert (tmp_path / "clip.txt").read_text().strip() == row["pred_text"]


def test_translate_never_takes_transcribe_rows(dirs, tmp_path, capsys):
    argv = [DATA / "fox_16k.wav", "--model_path", dirs[1], *FAST, "--output", tmp_path / "r"]
    argv += ["--output_format", "jsonl"]
    assert main("transcribe", *argv) == 0
    assert main("translate", *argv, "--target_language", "French") == 2
    assert "task 'transcribe' there, 'translate' now" in capsys.readouterr().err


def test_missing_per_clip_files_are_written_again_without_the_model(dirs, tmp_path, monkeypatch):
    argv = ["transcribe", DATA / "fox_16k.wav", "--model_path", dirs[1], *FAST]
    argv += ["--output_dir", tmp_path]
    assert main(*argv) == 0
    srt = (tmp_path / "fox_16k.srt").read_text()
    (tmp_path / "fox_16k.srt").unlink()
    monkeypatch.setattr(cli, "load_pipeline", lambda *a: pytest.fail("the model was loaded"))
    assert main(*argv) == 0
    assert (tmp_path / "fox_16k.srt").read_text() == srt


def test_a_second_writer_is_refused(dirs, tmp_path, capsys, no_model):
    out = tmp_path / "rows.jsonl"
    with ResultStore(out, {}):
        argv = [DATA / "fox_16k.wav", "--model_path", dirs[1], "--output_format", "jsonl"]
        code = main("transcribe", *argv, "--output", out)
        assert code == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by granite-fms pid {os.getpid()}" in err
    assert not Path(f"{out}.lock").exists()  # released with its store


def test_an_unreadable_clip_gets_an_error_row_and_the_run_goes_on(dirs, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "fox_16k.wav", folder / "fox.wav")
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav file")
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", folder, "--model_path", dirs[1], *FAST, "--output", out]
    argv += ["--output_format", "txt", "--output_dir", tmp_path]
    assert main(*argv) == 1
    rows = {Path(r["audio_filepath"]).name: r for r in read_rows(out)}
    assert "error" in rows["broken.wav"] and "broken.wav" in rows["broken.wav"]["error"]
    assert "audio[" not in rows["broken.wav"]["error"]
    assert "error" not in rows["fox.wav"] and (tmp_path / "fox.txt").is_file()
    assert f"failed: {folder / 'broken.wav'}" in capsys.readouterr().err
    # A rerun retries the failed clip only, and keeps one row per clip.
    assert main(*argv) == 1
    assert [Path(r["audio_filepath"]).name for r in read_rows(out)] == ["broken.wav", "fox.wav"]


def test_every_audio_format_in_a_folder_and_skipped_files_named(dirs, tmp_path, caplog):
    """The same extensions for folders and named files; the others are counted and named."""
    wave, rate = sf.read(DATA / "fox_16k.wav")
    folder = tmp_path / "in"
    folder.mkdir()
    for ext, fmt, subtype in (("mp3", "MP3", "MPEG_LAYER_III"), ("ogg", "OGG", "VORBIS")):
        sf.write(folder / f"a.{ext}", wave, rate, format=fmt, subtype=subtype)
    sf.write(folder / "b.opus", wave, rate, format="OGG", subtype="OPUS")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", folder, "--model_path", dirs[1], *FAST, "--output_format", "jsonl"]
    with caplog.at_level(logging.WARNING):
        assert main(*argv, "--output", out) == 0
    assert [Path(r["audio_filepath"]).name for r in read_rows(out)] == ["a.mp3", "a.ogg", "b.opus"]
    assert all(abs(r["duration"] - 2.4) < 0.01 for r in read_rows(out))
    assert "skipped 1 files that are not audio" in caplog.text and "notes.txt" in caplog.text


def test_a_truncated_wav_gets_a_row_warning(dirs, tmp_path):
    data = (DATA / "fox_16k.wav").read_bytes()
    clip = tmp_path / "cut.wav"
    clip.write_bytes(data[: len(data) // 2])
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", clip, "--model_path", dirs[1], *FAST, "--output_format", "jsonl"]
    assert main(*argv, "--output", out) == 0
    (row,) = read_rows(out)
    warning = next(w for w in row["warnings"] if "truncated" in w)
    assert "shorter than its header says" in warning and "(should be 38378)" in warning
    assert row["duration"] == pytest.approx(1.2, abs=0.01)


def test_warnings_without_a_rows_file_are_printed_per_clip(dirs, tmp_path, caplog):
    argv = ["transcribe", DATA / "fox_16k.wav", "--model_path", dirs[1], *FAST]
    with caplog.at_level(logging.WARNING):
        assert main(*argv, "--output_format", "txt", "--output_dir", tmp_path) == 0
    assert "see the `warnings` of their rows" not in caplog.text
    assert f"{DATA / 'fox_16k.wav'}: segment 0 (0.00-2.40 s) used its whole budget" in caplog.text


def test_the_skipped_count_counts_the_inputs_done(dirs, tmp_path, caplog):
    argv = ["--model_path", dirs[1], *FAST, "--output_format", "jsonl", "--output", tmp_path / "r"]
    assert main("transcribe", DATA / "fox_16k.wav", *argv) == 0
    with caplog.at_level(logging.INFO):
        assert main("transcribe", DATA / "fox_16k.wav", DATA / "short_16k.wav", *argv) == 0
    assert "1 of 2 clips are already done" in caplog.text


def test_progress_counts_the_windows_of_a_long_file(pipe_full, clips):
    """Each generation call reports its audio seconds: a 67 s file in 30 s windows, one
    window per call, moves the bar three times before its row exists."""
    item = dataset.probe(dataset.collect([clips / "talks" / "talk.wav"]))
    request = dataset.Request(
        long_form=LongFormOptions(batch_size=1), generation=GenerationOptions(max_new_tokens=2)
    )
    seconds: list[float] = []
    batches = dataset.plan_batches(item, 1, 30.0)
    (rows,) = dataset.run(pipe_full, batches, request, cli.Ranks(), seconds.append)
    assert len(seconds) == 3 and sum(seconds) == pytest.approx(rows[0]["duration"])


@pytest.fixture(scope="module")
def pipe_full(dirs) -> SpeechPipeline:
    return SpeechPipeline.from_pretrained(dirs[1])


def test_context_too_small_for_the_windows_is_fitted_with_a_warning(dirs, tmp_path, caplog):
    """A 30 s clip on a checkpoint of 512 positions: prompt + 300 audio tokens + 200 new
    tokens do not fit, so windows are shortened (two of 15 s), and the command says so."""
    clip = tmp_path / "thirty.wav"
    sf.write(clip, long_recording()[0][: 30 * RATE].numpy(), RATE)
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", clip, "--model_path", dirs[1], "--device_type", "cpu"]
    argv += ["--output_format", "jsonl", "--output", out, "--max_new_tokens", "100000"]
    with caplog.at_level(logging.WARNING):
        assert main(*argv) == 0
    assert "windows of 30 s do not fit the model's 512 positions" in caplog.text
    assert "max_new_tokens 100000 does not fit the model's 512 positions" in caplog.text
    (row,) = read_rows(out)
    assert len(row["segments"]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transcribe", "no/such/dir", "{model}"], "input not found: no/such/dir"),
        (["transcribe", "{clip}"], "pass --model_path DIR"),
        (["transcribe", "{clip}", "--variant", "huge"], "--variant 'huge' is not one of"),
        (["transcribe", "{clip}", "{model}", "--chunk_length", "0"], "at least 1 second"),
        (["transcribe", "{clip}", "{model}", "--language", " "], "--language is blank (' ')"),
        (["translate", "{clip}", "{model}", "--target_language", ""], "--target_language is bl"),
        (["translate", "{clip}", "{model}", "--target_language", "  "], "--target_language is"),
        (["transcribe", "{clip}", "{model}", "--keyword", ""], "--keyword: keywords must be"),
        (["transcribe", "{clip}", "{model}", "--distributed"], "needs torchrun"),
        (["transcribe", "{clip}", "{model}", "--compile", "--compile_mode", "x"], "mode 'x' is"),
        (["transcribe", "{clip}", "{model}", "--compile", "--compile_backend", "x"], "'x' is not"),
        (["transcribe", "{clip}", "{model}", "--output_dir", "{clip}"], "is a file, not a dir"),
        (["transcribe", "{clip}", "{model}", "--output_dir", "/proc/x"], "cannot write there"),
        (["transcribe", "{clip}", "{model}", "--output", "{tmp}"], "is a directory; it needs a"),
        (["transcribe", "{empty}", "{model}"], "no audio files"),
        (["transcribe", "{empty_manifest}", "{model}"], "has no rows"),
        (["transcribe", "{text_file}", "{model}"], "is neither audio"),
        (["transcribe", "{bad_manifest}", "{model}"], ":2: needs a string 'audio_filepath'"),
        (["transcribe", "{tmp}/x", "{tmp}/y", "{model}"], "would both write same.*"),
        (["eval", "--manifest", "{clip}", "{model}", "--output", "{tmp}/r.json"], "--manifest"),
        (["eval", "--manifest", "{unscored}", "{model}", "--output", "{tmp}/r"], "without a ref"),
        (["eval", "--manifest", "{empty_manifest}", "{model}", "--output", "r"], "has no rows"),
        (["eval", "--manifest", "{manifest}", "{model}", "--output", "{tmp}"], "is a directory"),
        pytest.param(
            ["transcribe", "{clip}", "{model}", "--device_type", "cuda"],
            "--device_type cuda: this machine has no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here"),
        ),
    ],
)
def test_refused_before_the_model_loads(
    dirs, manifest, tmp_path, argv, message, capsys, no_model, monkeypatch
):
    """Each gets one line `granite-fms: error: ...` naming the problem, and exit status 2."""
    monkeypatch.delenv("RANK", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "bad.jsonl").write_text('{"audio_filepath": "a.wav"}\n{"text": "no path"}\n')
    (tmp_path / "unscored.jsonl").write_text('{"audio_filepath": "a.wav"}\n')
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        shutil.copy(DATA / "short_16k.wav", tmp_path / sub / "same.wav")
    values = dict(
        model=f"--model_path={dirs[1]}",
        clip=DATA / "fox_16k.wav",
        tmp=tmp_path,
        empty=tmp_path / "empty",
        empty_manifest=tmp_path / "empty.jsonl",
        text_file=tmp_path / "notes.txt",
        bad_manifest=tmp_path / "bad.jsonl",
        unscored=tmp_path / "unscored.jsonl",
        manifest=manifest,
    )
    assert main(*[a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("granite-fms: error: ") and message in err
    assert err.count("\n") == 1


def test_a_checkpoint_without_a_tokenizer_exits_2(dirs, capsys):
    assert main("transcribe", DATA / "fox_16k.wav", "--model_path", dirs[0], *FAST) == 2
    assert "no tokenizer files; pass --tokenizer DIR" in capsys.readouterr().err


def test_a_prompt_longer_than_the_model_exits_2(dirs, capsys):
    argv = ["transcribe", DATA / "fox_16k.wav", "--model_path", dirs[1], *FAST]
    assert main(*argv, "--keyword", "word " * 2000) == 2
    err = capsys.readouterr().err
    assert "--keyword: the prompt (" in err and "leaves no room for 1 s of audio" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transcribe", "x.wav", "--segmentation", "silero"], "invalid choice: 'silero'"),
        (["transcribe", "x.wav", "--max_new_tokens", "1e9"], "must be a positive integer"),
        (["eval", "--manifest", "m", "--output", "r", "--compile"], "--compile is not an eval"),
        (["transcribe", "x.wav", "--compile_m", "x"], "unrecognized arguments: --compile_m"),
    ],
)
def test_argparse_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(*argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_internal_error_exits_3_with_its_traceback_in_a_log(dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(*args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(dataset, "plan_batches", broken)
    argv = ["transcribe", DATA / "fox_16k.wav", "--model_path", dirs[1], *FAST]
    assert main(*argv, "--output_dir", tmp_path / "out") == 3
    err = capsys.readouterr().err
    assert err.startswith("granite-fms: internal error: ZeroDivisionError: a bug (traceback in ")
    assert err.count("\n") == 1 and "Traceback" not in err
    (log,) = tmp_path.glob("granite-fms-*.log")
    assert "Traceback" in log.read_text() and "ZeroDivisionError: a bug" in log.read_text()


def test_an_interrupted_eval_does_not_promise_a_resume(
    dirs, manifest, tmp_path, capsys, monkeypatch
):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "plan_batches", interrupt)
    argv = ["eval", "--manifest", manifest, "--model_path", dirs[1], *FAST]
    assert main(*argv, "--output", tmp_path / "r.json") == 130
    err = capsys.readouterr().err
    assert "eval does not resume: no report was written" in err and "--output to" not in err


def test_builtin_default_variant(tmp_path):
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", DATA / "short_16k.wav", "--variant", "tiny", *FAST]
    assert main(*argv, "--output", out, "--output_format", "jsonl") == 0
    (row,) = read_rows(out)
    assert len(row["segments"]) == 1 and len(row["segments"][0]["tokens"]) <= 3
    assert row["settings"]["model"] == "variant tiny"


def _torchrun_cli(argv: list) -> None:
    """`granite-fms ARGV` in 2 processes under torchrun (gloo); it must exit 0."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*run, "-m", "granite_fms_cli", *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_give_the_rows_of_one(manifest, tmp_path):
    # The built-in default: FMS's get_model would shard it over a process group (tensor
    # parallel), so this also checks that each rank holds a whole model.
    argv = ["transcribe", manifest, "--variant", "tiny", *FAST]
    argv += ["--output_format", "jsonl", "--batch_size", "2"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(*argv, "--output", one) == 0
    _torchrun_cli([*argv, "--output", two])
    rows = read_rows(two)
    assert {r["timing"]["rank"] for r in rows} == {0, 1}
    assert len(rows) == 4 and untimed(rows) == untimed(read_rows(one))
    assert [r["audio_filepath"] for r in rows] == [r["audio_filepath"] for r in read_rows(one)]


def test_eval_harness(dirs, manifest, tmp_path):
    argv = ["eval", "--model_path", dirs[1], *FAST, "--batch_size", "2"]
    report_path = tmp_path / "first.json"
    code = main(
        *argv, "--manifest", manifest, "--output", report_path,
        "--modes", "eager", "compiled", "--compile_backend", "eager",
    )  # fmt: skip
    assert code == 0
    report = json.loads(report_path.read_text())
    assert set(report["modes"]) == {"eager", "compiled"}
    for m in report["modes"].values():
        assert m["rtfx"] > 0 and m["tokens_per_s"] > 0 and m["items"] == 4
    assert report["modes"]["compiled"]["warmup_s"] > 0
    assert report["same_text"] == "4 of 4"
    assert report["settings"]["max_new_tokens"] == 3 and report["settings"]["batch_size"] == 2
    assert report["provenance"]["git"]["commit"] and "diff_sha256" in report["provenance"]["git"]
    assert "| eager |" in report_path.with_suffix(".md").read_text()
    hypotheses = {i["audio_filepath"]: i["hypotheses"]["eager"] for i in report["items"]}

    # References equal to the model's own outputs: WER 0; one word changed: what jiwer says.
    normalise = evaluation.normalise
    hyps = [normalise(h) for h in hypotheses.values()]
    changed = next(i for i, h in enumerate(hyps) if h)
    one_word = list(hyps)
    one_word[changed] = " ".join(["changed", *hyps[changed].split()[1:]])
    for name, refs in (("same", list(hypotheses.values())), ("one_word", one_word)):
        path = tmp_path / f"{name}.jsonl"
        rows = [
            {"audio_filepath": str(manifest.parent / a), "text": ref}
            for a, ref in zip(hypotheses, refs, strict=True)
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        out = tmp_path / f"{name}.json"
        assert main(*argv, "--manifest", path, "--output", out, "--modes", "eager") == 0
        eager = json.loads(out.read_text())["modes"]["eager"]
        refs = [normalise(r) for r in refs]
        assert eager["wer"] == pytest.approx(jiwer.wer(refs, hyps))
        assert eager["cer"] == pytest.approx(jiwer.cer(refs, hyps))
        if name == "same":
            assert eager["wer"] == 0 and eager["cer"] == 0
        else:
            assert eager["substitutions"] == 1 and eager["insertions"] == eager["deletions"] == 0
            assert eager["wer"] == pytest.approx(1 / eager["reference_words"])


def test_normaliser():
    assert evaluation.normalise("  The QUICK, brown fox -- don't!  ") == "the quick brown fox dont"
    assert evaluation.error_rates(["Hello, world."], ["hello world"])["wer"] == 0


def test_result_store_repairs_what_a_run_left(tmp_path):
    path = tmp_path / "rows.jsonl"
    ok = {"x": 1}
    rows = [
        {"audio_filepath": "a.wav", "pred_text": "first", "settings": ok},
        {"audio_filepath": "b.wav", "error": "could not read", "settings": ok},
        {"audio_filepath": "a.wav", "pred_text": "again", "settings": ok},
        {"audio_filepath": "c.wav", "pred_text": "c", "settings": ok},
    ]
    lines = [json.dumps(r) for r in rows]
    path.write_text(
        "\n".join(lines[:2] + ["not json", *lines[2:]]) + '\n{"audio_filepath": "d.wav"'
    )
    with ResultStore(path, ok) as store:
        assert set(store.load()) == {"a.wav", "c.wav"}
        assert read_rows(path) == [rows[0], rows[3]]
        store.append([{"audio_filepath": "d.wav", "pred_text": "d", "settings": ok}])
        assert set(store.load()) == {"a.wav", "c.wav", "d.wav"}
        store.finish(["d.wav", "c.wav"])
        assert [r["audio_filepath"] for r in read_rows(path)] == ["d.wav", "c.wav", "a.wav"]
    assert ResultStore(tmp_path / "missing.jsonl", ok).load() == {}
    old = tmp_path / "old.jsonl"
    old.write_text('{"audio_filepath": "a.wav", "text": "from before settings"}\n')
    with pytest.raises(ValueError, match="1 rows without recorded settings"):
        ResultStore(old, ok).load()


def test_distributed_tensor_parallel_gives_the_rows_of_one(dirs, manifest, tmp_path):
    """`--distributed`: the LLM sharded over 2 ranks (TP), every rank runs every clip, rank 0
    writes; the rows equal one process's."""
    argv = ["transcribe", manifest, "--model_path", dirs[1], *FAST]
    argv += ["--output_format", "jsonl", "--batch_size", "2"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(*argv, "--output", one) == 0
    _torchrun_cli([*argv, "--output", two, "--distributed"])
    rows = read_rows(two)
    assert {r["timing"]["rank"] for r in rows} == {0}
    assert len(rows) == 4 and untimed(rows) == untimed(read_rows(one))


def test_quantize_and_compile_flags(dirs, manifest, tmp_path):
    argv = ["transcribe", manifest, "--model_path", dirs[1], *FAST, "--output_format", "jsonl"]
    argv += ["--output", tmp_path / "q.jsonl", "--quantize", "int8"]
    argv += ["--compile", "--compile_backend", "eager"]
    assert main(*argv) == 0
    assert len(read_rows(tmp_path / "q.jsonl")) == 4
