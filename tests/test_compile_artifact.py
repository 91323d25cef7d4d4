"""Compile once, ship the result: `granite-fms compile` writes one artifact, a fresh process
loads it (`SpeechPipeline.compile(cache=...)`) and neither traces nor compiles; an artifact made for
another setup is a warning and a compile, a file that is not one a clear error."""

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import granite_fms_cli
from granite_fms.inference.compile import ARTIFACT_FORMAT, CompileConfig, environment
from granite_fms.pipeline import SpeechPipeline
from helpers import DATA

ROOT = Path(__file__).resolve().parent.parent
# A fresh process: loads the artifact into an empty Inductor cache, transcribes compiled and
# eagerly, and reports Dynamo's and Inductor's counters and the kernel libraries it built.
LOAD = """
import json, sys
from pathlib import Path
import torch
from granite_fms.pipeline import SpeechPipeline
from torch._dynamo.utils import counters
from torch._inductor.runtime.cache_dir_utils import cache_dir
model, artifact, clip = sys.argv[1:]
pipe = SpeechPipeline.from_pretrained(model)
eager = pipe.transcribe(clip, max_new_tokens=4)
before = set(Path(cache_dir()).glob("??/*.so"))
pipe.compile(cache=artifact)
loaded = set(Path(cache_dir()).glob("??/*.so")) - before
compiled = pipe.transcribe(clip, max_new_tokens=4)
built = set(Path(cache_dir()).glob("??/*.so")) - before - loaded
print(json.dumps({"eager": eager, "compiled": compiled, "graphs": pipe.generator.compiles,
                  "inductor": dict(counters["inductor"]), "loaded": len(loaded),
                  "built": len(built), "dynamo_cache": dict(counters["dynamo_cache"]),
                  "traced": counters["stats"]["unique_graphs"],
                  "from_artifact": [n for n, r in pipe.generator.regions.items() if r.loaded]}))
"""


def _env(cache: Path) -> dict:
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONPATH=path)


def test_artifact_round_trip_in_a_fresh_process(dirs, tmp_path):
    """`granite-fms compile` (its own process, Inductor), then a fresh process with an empty
    Inductor cache: every region that compiled loads Dynamo's output, nothing is traced or
    compiled, no kernel built, eager's text."""
    model, artifact = str(dirs[1]), tmp_path / "granite.compiled"
    compile_cmd = [sys.executable, "-m", "granite_fms_cli", "compile", "--model_path", model]
    compile_cmd += ["--output", str(artifact), "--batch_sizes", "1", "--audio_seconds", "1.2"]
    compile_cmd += ["--max_new_tokens", "4", "--device_type", "cpu"]
    done = subprocess.run(
        compile_cmd, env=_env(tmp_path / "a"), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiling encode" in done.stderr and "graphs compiled, saved in" in done.stderr
    with zipfile.ZipFile(artifact) as archive:
        header = json.loads(archive.read("header.json"))
    assert header["format"] == ARTIFACT_FORMAT
    assert header["environment"]["torch"] == torch.__version__
    assert header["kernel_files"] > 0 and header["artifacts"]["inductor"] >= 3

    load = [sys.executable, "-c", LOAD, model, str(artifact), str(DATA / "short_16k.wav")]
    done = subprocess.run(load, env=_env(tmp_path / "b"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["compiled"] == out["eager"]
    assert out["from_artifact"] == ["encode", "prefill", "decode"]  # greedy: no reorder
    assert out["dynamo_cache"].get("dynamo_cache_hit") == 3
    assert out["traced"] == sum(out["graphs"].values()) == 0
    assert out["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert out["loaded"] > 0 and out["built"] == 0


def _artifact(path: Path, **changes) -> Path:
    """An artifact file whose header is this process's, changed; its cache is empty."""
    header = {"format": ARTIFACT_FORMAT, "environment": environment(torch.device("cpu"))}
    for key, value in changes.items():
        header[key] = value
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("header.json", json.dumps(header))
        archive.writestr("mega_cache.bin", b"")
    return path


def test_artifact_for_another_setup_warns_and_compiles(pair_33, tmp_path, caplog):
    _, fm = pair_33
    other = dict(environment(torch.device("cpu")), torch="2.0.0", device="cuda NVIDIA H200")
    artifact = _artifact(tmp_path / "old.compiled", environment=other)
    pipe, wave = SpeechPipeline(fm), torch.randn(8000)
    prompt = [1, fm.config.audio_token_index]
    eager = pipe.generate_ids(wave, prompt_ids=prompt, max_new_tokens=4)
    with caplog.at_level(logging.WARNING, logger="granite_fms.inference.compile"):
        pipe.compile(backend="eager", cache=artifact)
    message = caplog.text
    assert f"compile artifact {artifact} skipped" in message
    assert f"torch '2.0.0', here '{torch.__version__}'" in message
    assert "device 'cuda NVIDIA H200'" in message and "compiling instead" in message
    assert pipe.generate_ids(wave, prompt_ids=prompt, max_new_tokens=4) == eager
    assert sum(pipe.generator.compiles.values()) == 3


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a zip file", "is not a granite-fms compile artifact"),
        (None, "is not a 'granite-fms compiled artifact 2' \\(format: 'something else'\\)"),
    ],
)
def test_a_file_that_is_no_artifact_is_a_clear_error(pair_33, tmp_path, content, match):
    _, fm = pair_33
    path = tmp_path / "bad.compiled"
    if content is None:
        _artifact(path, format="something else")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        SpeechPipeline(fm).compile(backend="eager", cache=path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SpeechPipeline(fm).compile(backend="eager", cache=tmp_path / "missing.compiled")


def test_cli_names_a_bad_compile_cache(dirs, tmp_path, capsys):
    bad = tmp_path / "bad.compiled"
    bad.write_text("{}")
    argv = ["transcribe", str(DATA / "short_16k.wav"), "--model_path", str(dirs[1])]
    assert (
        granite_fms_cli.main([*argv, "--compile_cache", str(bad), "--output_dir", str(tmp_path)])
        == 2
    )
    assert (
        f"--compile_cache: {bad} is not a granite-fms compile artifact" in capsys.readouterr().err
    )


def test_compile_config_is_checked(pair_33):
    with pytest.raises(ValueError, match="mode must be None or one of"):
        CompileConfig(mode="fast")
    with pytest.raises(ValueError, match="quantize must be None or one of"):
        CompileConfig(quantize="int4")
    with pytest.raises(TypeError, match="symbolic must be a bool"):
        CompileConfig(symbolic="yes")
    with pytest.raises(TypeError, match="CompileConfig or its fields"):
        SpeechPipeline(pair_33[1]).compile(CompileConfig(), backend="eager")
    assert CompileConfig(cache="a.compiled").cache == Path("a.compiled")
