"""Granite Speech 5.0 in the product: `SpeechPipeline.from_pretrained` gives a `CTCPipeline`,
long-form windows and CTC-timed segments, options that do not apply refused, and the
`granite-fms` command on a 5.0 checkpoint and on the built-in `tiny-ctc` variant."""

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
import transformers

import granite_fms_cli
from granite_fms.audio.features import load_audio
from granite_fms.inference.compile import CompileConfig
from granite_fms.pipeline import SpeechPipeline
from granite_fms.pipeline5 import CTCPipeline
from helpers import DATA, RATE, SENTENCES, long_recording

pytestmark = pytest.mark.usefixtures("one_thread")


def main(*argv) -> int:
    return granite_fms_cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def pipe(ckpt5) -> CTCPipeline:
    return SpeechPipeline.from_pretrained(ckpt5)


@pytest.fixture(scope="module")
def talk() -> torch.Tensor:
    return long_recording()[0]


def test_from_pretrained_gives_a_ctc_pipeline_with_hf_text(pipe, pair5, ckpt5):
    """Each clip's text is what HF's generate and its tokenizer give for it alone."""
    hf, _ = pair5
    assert isinstance(pipe, CTCPipeline) and pipe.tokenizer is not None
    fe = transformers.GraniteSpeech5FeatureExtractor()
    paths = [DATA / name for name in SENTENCES]
    texts = pipe.transcribe(paths)
    for path, text in zip(paths, texts, strict=True):
        inputs = fe(load_audio(path).numpy(), sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            ids = hf.generate(**inputs)
        assert text == pipe.tokenizer.batch_decode(ids, skip_special_tokens=True)[0]
    assert all(texts)


def test_long_form_windows_and_segment_times(pipe, talk):
    """A 67 s recording in 10 s windows: one padded batch or one window at a time, the same
    segments; each segment lies in its window, timed by CTC frames (80 ms here)."""
    result = pipe.transcribe(talk, chunk_length=10.0, return_segments=True)[0]
    one_by_one = pipe.transcribe(talk, chunk_length=10.0, return_segments=True, batch_size=1)[0]
    assert result == one_by_one
    segments = result["segments"]
    assert len(segments) == 7 and result["text"] == " ".join(s["text"] for s in segments)
    windows = [(i * talk.numel() // 7 / RATE, (i + 1) * talk.numel() // 7 / RATE) for i in range(7)]
    for segment, (start, end) in zip(segments, windows, strict=True):
        assert start <= segment["start"] < segment["end"] <= end
        assert round((segment["start"] - start) / pipe.frame_seconds, 6).is_integer()
    vad = pipe.transcribe(talk, chunk_length=10.0, segmentation="vad", return_segments=True)[0]
    gap = long_recording()[1]
    assert not any(gap[0] + 0.5 < s["start"] < gap[1] - 0.5 for s in vad["segments"])


def test_compiled_pipeline_gives_the_same_segments(ckpt5, talk):
    pipe = SpeechPipeline.from_pretrained(ckpt5, compile=CompileConfig(backend="eager"))
    assert pipe.decoder.compiled
    clips = [talk[: 12 * RATE], talk[: 3 * RATE]]
    compiled = pipe.transcribe(clips, return_segments=True)
    assert not pipe.eager().decoder.compiled
    assert compiled == pipe.transcribe(clips, return_segments=True)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(cache="granite.compiled"), "compiling with cache"),
        (dict(quantize="int8"), "compiling with quantize"),
        (dict(regional=True, symbolic=False), "compiling with regional, symbolic=False"),
    ],
)
def test_compile_options_that_do_not_apply_are_errors(pipe, options, match):
    with pytest.raises(ValueError, match=match):
        pipe.compile(**options)
    assert not pipe.decoder.compiled


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, a: p.transcribe(a, num_beams=4), "num_beams=4"),
        (lambda p, a: p.transcribe(a, keywords=["granite"]), "keywords"),
        (lambda p, a: p.transcribe(a, max_new_tokens=50), "max_new_tokens"),
        (lambda p, a: p.translate(a, "French"), "translation"),
        (lambda p, a: p.transcribe(a[:1000]), r"audio\[0\]: audio too short"),
    ],
)
def test_options_that_do_not_apply_are_errors(pipe, talk, call, match):
    with pytest.raises(ValueError, match=match):
        call(pipe, talk[: 2 * RATE])


def test_distributed_is_refused(ckpt5):
    with pytest.raises(ValueError, match="Granite Speech 5.0 has none"):
        SpeechPipeline.from_pretrained(ckpt5, distributed_strategy="tp")


# ----- the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips5")
    shutil.copy(DATA / "fox_16k.wav", root / "fox.wav")
    shutil.copy(DATA / "short_22k.wav", root / "short.wav")
    sf.write(root / "talk.wav", long_recording()[0].numpy(), RATE)
    return root


def test_cli_transcribes_a_folder_into_every_format(ckpt5, clips, tmp_path):
    out = tmp_path / "out"
    argv = ["transcribe", clips, "--model_path", ckpt5, "--device_type", "cpu"]
    assert main(*argv, "--output_format", "all", "--output_dir", out, "--no-verbose") == 0
    rows = [json.loads(line) for line in (out / "transcribe.jsonl").read_text().splitlines()]
    assert sorted(Path(r["audio_filepath"]).name for r in rows) == [
        "fox.wav",
        "short.wav",
        "talk.wav",
    ]
    for row in rows:
        stem = Path(row["audio_filepath"]).stem
        assert {p.suffix for p in out.glob(f"{stem}.*")} == {
            ".txt",
            ".json",
            ".srt",
            ".vtt",
            ".tsv",
        }
        assert (out / f"{stem}.srt").read_text().count(" --> ") == len(row["segments"])
    talk = next(r for r in rows if r["audio_filepath"].endswith("talk.wav"))
    assert len(talk["segments"]) == 3 and talk["segments"][-1]["end"] <= talk["duration"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--num_beams", "2"], "num_beams=2"),
        (["--keyword", "granite"], "keywords"),
        (["--max_new_tokens", "8"], "max_new_tokens"),
        (["--quantize", "int8"], "--quantize"),
        (["--compile_regional"], "--compile: Granite Speech 5.0 (CTC) does not support"),
    ],
)
def test_cli_refuses_options_that_do_not_apply(ckpt5, clips, tmp_path, capsys, extra, match):
    argv = ["transcribe", clips / "fox.wav", "--model_path", ckpt5, "--output_dir", tmp_path]
    assert main(*argv, *extra) == 2
    assert match in capsys.readouterr().err


def test_cli_translate_is_refused(ckpt5, clips, tmp_path, capsys):
    argv = ["translate", clips / "fox.wav", "--model_path", ckpt5, "--output_dir", tmp_path]
    assert main(*argv, "--target_language", "French") == 2
    assert "translation" in capsys.readouterr().err


def test_cli_refuses_distributed_and_serve_before_loading(ckpt5, clips, tmp_path, capsys):
    argv = ["transcribe", clips / "fox.wav", "--model_path", ckpt5, "--output_dir", tmp_path]
    assert main(*argv, "--distributed") == 2
    assert "Granite Speech 5.0 has none" in capsys.readouterr().err
    assert main("serve", "--variant", "tiny-ctc") == 2
    assert "not served yet" in capsys.readouterr().err


def test_cli_eval_on_the_built_in_tiny_ctc_variant(tmp_path):
    report_path = tmp_path / "eval.json"
    argv = ["eval", "--variant", "tiny-ctc", "--device_type", "cpu", "--batch_size", "2"]
    argv += ["--manifest", DATA / "manifest.jsonl", "--output", report_path]
    assert main(*argv, "--modes", "eager", "compiled", "--compile_backend", "eager") == 0
    report = json.loads(report_path.read_text())
    assert report["random_weights"] and report["same_text"] == "5 of 5"
    for mode in report["modes"].values():
        assert mode["rtfx"] > 0 and mode["items"] == 5 and mode["wer"] is not None
