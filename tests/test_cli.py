"""The `granite-fms` command: every output format, resume, unreadable clips, exit codes,
torchrun with 2 processes, and eval's WER harness.

Runs call `cli.main(argv)` in this process (the entry point `granite-fms` is that function),
except the torchrun test, which starts two real processes. Budgets are a few tokens: the text
of a random model says nothing, the rows and files around it do.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest
import soundfile as sf

from granite_fms.app import cli, evaluation
from granite_fms.app.dataset import ResultStore
from helpers import DATA, RATE, long_recording

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parent.parent / "src"
FAST = ["--max_new_tokens", "3", "--device_type", "cpu"]


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
    """Four fixture clips by relative path, without durations for two of them."""
    root = tmp_path_factory.mktemp("manifest")
    names = ["fox_16k.wav", "short_16k.wav", "long_16k.wav", "short_22k.wav"]
    for name in names:
        shutil.copy(DATA / name, root / name)
    rows = [{"audio_filepath": n, "text": "hello world"} for n in names]
    rows[0]["duration"], rows[1]["duration"] = 2.4, 1.21875
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def untimed(rows: list[dict]) -> dict[str, dict]:
    return {r["audio_filepath"]: {k: v for k, v in r.items() if k != "timing"} for r in rows}


def test_transcribe_a_folder_writes_every_format(dirs, clips, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        ["transcribe", str(clips), "--model_path", str(dirs[1]), "--output_format", "all"]
        + ["--output_dir", str(out), *FAST]
    )
    assert code == 0
    rows = read_rows(out / "transcribe.jsonl")
    assert sorted(Path(r["audio_filepath"]).name for r in rows) == [
        "fox.wav",
        "stereo.flac",
        "talk.wav",
    ]
    for row in rows:
        stem = Path(row["audio_filepath"]).stem
        assert {p.name for p in out.glob(f"{stem}.*")} == {
            f"{stem}.{f}" for f in ("txt", "json", "srt", "vtt", "tsv")
        }
        assert json.loads((out / f"{stem}.json").read_text())["segments"] == row["segments"]
        assert (out / f"{stem}.srt").read_text().count(" --> ") == len(row["segments"])
        assert row["timing"]["wall_s"] > 0 and row["task"] == "transcribe"
    talk = next(r for r in rows if r["audio_filepath"].endswith("talk.wav"))
    assert talk["duration"] > 60 and len(talk["segments"]) == 3
    assert talk["segments"][-1]["end"] == talk["duration"]
    assert "RTFx" in capsys.readouterr().err


def test_help_documents_every_flag():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == {"transcribe", "translate", "eval", "serve"}
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    flags = {s for a in subparsers["transcribe"]._actions for s in a.option_strings}
    assert {"--model_path", "--device_type", "--default_dtype", "--compile", "--compile_mode"} <= (
        flags
    )


def test_interrupted_manifest_run_resumes_without_duplicates(dirs, manifest, tmp_path, monkeypatch):
    argv = ["transcribe", str(manifest), "--model_path", str(dirs[1]), *FAST]
    argv += ["--output_format", "jsonl", "--batch_size", "1"]
    reference = tmp_path / "reference.jsonl"
    assert cli.main([*argv, "--output", str(reference)]) == 0

    out = tmp_path / "rows.jsonl"
    append = ResultStore.append
    calls = []

    def stop_after_two_batches(self, rows):
        append(self, rows)
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultStore, "append", stop_after_two_batches)
    assert cli.main([*argv, "--output", str(out)]) == 130
    monkeypatch.undo()
    first = read_rows(out)
    assert len(first) == 2
    with out.open("a") as f:  # a write cut short
        f.write('{"audio_filepath": "short_22k.wav", "text": "w1 w')

    assert cli.main([*argv, "--output", str(out)]) == 0
    rows = read_rows(out)
    assert [r["audio_filepath"] for r in rows[:2]] == [r["audio_filepath"] for r in first]
    assert len(rows) == 4 and len({r["audio_filepath"] for r in rows}) == 4
    assert untimed(rows) == untimed(read_rows(reference))
    assert cli.main([*argv, "--output", str(out)]) == 0  # nothing left: nothing appended
    assert len(read_rows(out)) == 4


def test_an_unreadable_clip_gets_an_error_row_and_the_run_goes_on(dirs, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "fox_16k.wav", folder / "fox.wav")
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav file")
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", str(folder), "--model_path", str(dirs[1]), *FAST, "--output", str(out)]
    assert cli.main([*argv, "--output_format", "txt", "--output_dir", str(tmp_path)]) == 1
    rows = {Path(r["audio_filepath"]).name: r for r in read_rows(out)}
    assert "error" in rows["broken.wav"] and "broken.wav" in rows["broken.wav"]["error"]
    assert "error" not in rows["fox.wav"] and (tmp_path / "fox.txt").is_file()
    assert f"failed: {folder / 'broken.wav'}" in capsys.readouterr().err
    # A rerun retries the failed clip only, and keeps one row per clip.
    assert cli.main(argv) == 1
    assert sorted(Path(r["audio_filepath"]).name for r in read_rows(out)) == [
        "broken.wav",
        "fox.wav",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transcribe", "no/such/dir", "--model_path", "{ckpt}"], "input not found"),
        (["transcribe", "{clip}"], "pass --model_path DIR"),
        (["transcribe", "{clip}", "--model_path", "{bare}"], "no tokenizer files"),
        (["transcribe", "{clip}", "--variant", "huge"], "is not one of"),
        (["transcribe", "{clip}", "--model_path", "{ckpt}", "--chunk_length", "0"], "at least 1"),
        (["eval", "--manifest", "{clip}", "--model_path", "{ckpt}", "--output", "r.json"], ""),
    ],
)
def test_bad_arguments_exit_2(dirs, argv, message, capsys):
    values = dict(ckpt=dirs[1], bare=dirs[0], clip=DATA / "fox_16k.wav")
    assert cli.main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("granite-fms: error: ") and message in err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        cli.main(["transcribe", "x.wav", "--segmentation", "silero"])
    assert e.value.code == 2


def test_builtin_default_variant(tmp_path):
    out = tmp_path / "rows.jsonl"
    argv = ["transcribe", str(DATA / "short_16k.wav"), "--variant", "tiny", *FAST]
    assert cli.main([*argv, "--output", str(out), "--output_format", "jsonl"]) == 0
    (row,) = read_rows(out)
    assert len(row["segments"]) == 1 and len(row["segments"][0]["tokens"]) <= 3


def _torchrun_cli(argv: list[str]) -> None:
    """`granite-fms ARGV` in 2 processes under torchrun (gloo); it must exit 0."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*run, "-m", "granite_fms.app.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_give_the_rows_of_one(manifest, tmp_path):
    # The built-in default: FMS's get_model would shard it over a process group (tensor
    # parallel), so this also checks that each rank holds a whole model.
    argv = ["transcribe", str(manifest), "--variant", "tiny", *FAST]
    argv += ["--output_format", "jsonl", "--batch_size", "2"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert cli.main([*argv, "--output", str(one)]) == 0
    _torchrun_cli([*argv, "--output", str(two)])
    rows = read_rows(two)
    assert {r["timing"]["rank"] for r in rows} == {0, 1}
    assert len(rows) == 4 and untimed(rows) == untimed(read_rows(one))


def test_eval_harness(dirs, manifest, tmp_path):
    argv = ["eval", "--model_path", str(dirs[1]), *FAST, "--batch_size", "2"]
    report_path = tmp_path / "first.json"
    code = cli.main(
        [*argv, "--manifest", str(manifest), "--output", str(report_path)]
        + ["--modes", "eager", "compiled", "--compile_backend", "eager"]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    assert set(report["modes"]) == {"eager", "compiled"}
    for m in report["modes"].values():
        assert m["rtfx"] > 0 and m["tokens_per_s"] > 0 and m["items"] == 4
    assert report["modes"]["compiled"]["warmup_s"] > 0
    assert report["same_text"] == "4 of 4"
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
        code = cli.main([*argv, "--manifest", str(path), "--output", str(out), "--modes", "eager"])
        assert code == 0
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
    rows = [
        {"audio_filepath": "a.wav", "text": "first"},
        {"audio_filepath": "b.wav", "error": "could not read"},
        {"audio_filepath": "a.wav", "text": "again"},
        {"audio_filepath": "c.wav", "text": "c"},
    ]
    lines = [json.dumps(r) for r in rows]
    path.write_text(
        "\n".join(lines[:2] + ["not json", *lines[2:]]) + '\n{"audio_filepath": "d.wav"'
    )
    store = ResultStore(path)
    assert store.load() == {"a.wav", "c.wav"}
    assert read_rows(path) == [rows[0], rows[3]]
    store.append([{"audio_filepath": "d.wav", "text": "d"}])
    assert store.load() == {"a.wav", "c.wav", "d.wav"}
    assert ResultStore(tmp_path / "missing.jsonl").load() == set()


def test_bad_manifests_and_clashing_names_exit_2(dirs, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "a.wav"}\n{"text": "no path"}\n')
    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text('{"audio_filepath": "a.wav"}\n')
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        shutil.copy(DATA / "short_16k.wav", tmp_path / sub / "same.wav")
    model = ["--model_path", str(dirs[1])]
    cases = [
        (["transcribe", str(bad), *model], f"{bad}:2: needs a string 'audio_filepath'"),
        (["transcribe", str(tmp_path / "x"), str(tmp_path / "y"), *model], "would both write"),
        (["eval", "--manifest", str(unscored), "--output", "r.json", *model], "without a refer"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err


def test_distributed_tensor_parallel_gives_the_rows_of_one(dirs, manifest, tmp_path):
    """`--distributed`: the LLM sharded over 2 ranks (TP), every rank runs every clip, rank 0
    writes; the rows equal one process's. Also --quantize and --compile_cache are accepted."""
    argv = ["transcribe", str(manifest), "--model_path", str(dirs[1]), *FAST]
    argv += ["--output_format", "jsonl", "--batch_size", "2"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert cli.main([*argv, "--output", str(one)]) == 0
    _torchrun_cli([*argv, "--output", str(two), "--distributed"])
    rows = read_rows(two)
    assert {r["timing"]["rank"] for r in rows} == {0}
    assert len(rows) == 4 and untimed(rows) == untimed(read_rows(one))


def test_quantize_and_compile_cache_flags(dirs, manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "before"))  # restored after
    argv = ["transcribe", str(manifest), "--model_path", str(dirs[1]), *FAST]
    argv += [
        "--output_format",
        "jsonl",
        "--output",
        str(tmp_path / "q.jsonl"),
        "--quantize",
        "int8",
    ]
    argv += ["--compile", "--compile_backend", "eager", "--compile_cache", str(tmp_path / "cc")]
    assert cli.main(argv) == 0
    assert len(read_rows(tmp_path / "q.jsonl")) == 4
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cc").resolve())
