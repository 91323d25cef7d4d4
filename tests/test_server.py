"""`granite-fms serve` in a subprocess on loopback, called with the official `openai` client and
with plain httpx: every response format, 16 concurrent requests each equal to its result alone
in fewer batches than requests, every error with its status and message while the server
keeps serving, a client that goes away mid-batch, a full queue, and SIGTERM with requests in
flight.

Two servers start together when the module does: `main`, on a tiny checkpoint written by
transformers (`dirs`: its untied head gives greedy outputs that differ from clip to clip and
end with an EOS, so an equal result says something), and `tiny`, the built-in `--variant tiny`
(random weights: every request decodes its whole 200-token budget, slowly enough to catch one
in flight).
"""

import dataclasses
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

import granite_fms_cli
from granite_fms.app import writers
from granite_fms.app.batching import ModelWorker
from granite_fms.app.server import ServeOptions
from granite_fms.pipeline import SpeechPipeline
from helpers import DATA, RATE, long_recording

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parent.parent / "src"
KEY = "test-key"
CLIPS = ("fox_16k.wav", "short_16k.wav", "long_16k.wav", "short_22k.wav", "fox_stereo.flac")
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SETTINGS = (("transcribe", ""), ("transcribe", "fox, dog"), ("translate", ""))
PATH = {"transcribe": "/v1/audio/transcriptions", "translate": "/v1/audio/translations"}


class Server:
    """`granite-fms serve ARGS` in a subprocess on a free loopback port, its log in a file."""

    def __init__(self, args: list[str], log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        env["OMP_NUM_THREADS"] = "1"  # as the tests' own torch (one_thread): the same kernels
        command = [sys.executable, "-m", "granite_fms_cli", "serve", "--device_type", "cpu"]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [*command, *args, "--port", str(self.port)], stdout=out, stderr=out, env=env
            )
        self.headers = {"Authorization": f"Bearer {KEY}"} if KEY in args else {}
        self._ready = False

    def ready(self) -> "Server":
        deadline = time.monotonic() + 180
        while not self._ready:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{self.log.read_text()}")
            try:
                self._ready = self.get("/health").status_code == 200
            except httpx.TransportError:
                time.sleep(0.2)
        return self

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=10)

    def post(self, path: str, data=None, files=None, headers=None, timeout=120.0):
        headers = self.headers if headers is None else headers
        return httpx.post(self.url + path, data=data, files=files, headers=headers, timeout=timeout)

    def metric(self, name: str, **labels: str) -> float:
        text = self.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def servers(dirs, tmp_path_factory):
    """Both servers, started at once (most of a start is imports)."""
    logs = tmp_path_factory.mktemp("server_logs")
    main = Server(
        # fmt: off
        [
            "--model_path",
            str(dirs[1]),
            "--api-key",
            KEY,
            "--max_batch_size",
            "16",
            "--batch_window_ms",
            "300",
            "--max_file_mb",
            "2",
            "--max_audio_s",
            "60",
        ],
        # fmt: on
        logs / "main.log",
    )
    tiny = Server(
        # fmt: off
        [
            "--variant",
            "tiny",
            "--max_batch_size",
            "1",
            "--max_queue",
            "1",
            "--batch_window_ms",
            "0",
        ],
        # fmt: on
        logs / "tiny.log",
    )
    yield {"main": main, "tiny": tiny}
    main.stop()
    tiny.stop()


@pytest.fixture(scope="module")
def main(servers) -> Server:
    return servers["main"].ready()


@pytest.fixture(scope="module")
def model(main) -> str:
    return main.get("/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """About 48 s of speech: two 30-s windows."""
    path = tmp_path_factory.mktemp("long") / "talk.wav"
    sf.write(path, long_recording(repeats=2)[0].numpy(), RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def alone(dirs, recording) -> dict:
    """(clip, task, keywords) -> the pipeline's result for that clip alone, in this process."""
    pipe = SpeechPipeline.from_pretrained(dirs[1])
    out = {}
    for clip in (*(DATA / c for c in CLIPS), recording):
        out[clip, "transcribe", ""] = pipe.transcribe(clip, return_segments=True)[0]
        out[clip, "transcribe", "fox, dog"] = pipe.transcribe(
            clip, return_segments=True, keywords=["fox", "dog"]
        )[0]
        out[clip, "translate", ""] = pipe.translate(clip, "French", return_segments=True)[0]
    return out


def form(model: str, **fields) -> dict:
    return {"model": model, "response_format": "verbose_json", **fields}


def upload(path: Path) -> dict:
    return {"file": (path.name, path.read_bytes())}


def same(got: dict, expected: dict) -> None:
    assert got["text"] == expected["text"]
    assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in expected["segments"]]
    assert [(s["start"], s["end"]) for s in got["segments"]] == [
        (s["start"], s["end"]) for s in expected["segments"]
    ]


# ----- the OpenAI client, every format --------------------------------------------------------


def test_models_and_health(main, model):
    assert model == "full"  # the checkpoint directory's name
    assert main.get("/health").json()["status"] == "ok"
    assert main.openai().models.list().data[0].id == model


def test_openai_client_every_format(main, model, alone):
    client, fox = main.openai(), DATA / "fox_16k.wav"
    expected = alone[fox, "transcribe", ""]
    assert expected["text"]  # words, so the comparisons below compare something
    out = {
        fmt: client.audio.transcriptions.create(
            model=model, file=fox.open("rb"), response_format=fmt, language="en"
        )
        for fmt in FORMATS
    }
    verbose = out["verbose_json"].model_dump()
    same(verbose, expected)
    assert verbose["duration"] == pytest.approx(2.4) and verbose["language"] == "en"
    assert out["json"].text == out["text"] == expected["text"]
    for fmt in ("srt", "vtt"):
        file = io.StringIO()
        writers.WRITERS[fmt](expected, file)
        assert out[fmt] == file.getvalue()
    assert out["srt"].startswith("1\n00:00:00,000 --> 00:00:02,400\n")
    assert out["vtt"].startswith("WEBVTT\n\n00:00.000 --> 00:02.400\n")


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client's translations
def test_openai_client_keywords_and_translation(main, model, alone):
    client, clip = main.openai(), DATA / "long_16k.wav"
    keywords = client.audio.transcriptions.create(
        model=model, file=clip.open("rb"), prompt="fox, dog", response_format="verbose_json"
    )
    same(keywords.model_dump(), alone[clip, "transcribe", "fox, dog"])
    translation = client.audio.translations.create(
        model=model,
        file=clip.open("rb"),
        response_format="verbose_json",
        extra_body={"language": "French"},
    )
    same(translation.model_dump(), alone[clip, "translate", ""])
    assert translation.model_dump()["task"] == "translate"
    text = client.audio.translations.create(
        model=model, file=clip.open("rb"), response_format="text", extra_body={"language": "French"}
    )
    assert text == alone[clip, "translate", ""]["text"]


# ----- batching -------------------------------------------------------------------------------


def test_concurrent_requests_each_equal_alone_in_fewer_batches(main, model, alone, recording):
    """16 requests at once: five clips in three settings (batched apart) and a long one."""
    cases = [(DATA / c, task, kw) for c in CLIPS for task, kw in SETTINGS]
    cases.append((recording, "transcribe", ""))
    assert len(cases) == 16
    batches, requests = (
        main.metric("granite_fms_batch_size_count"),
        main.metric("granite_fms_batch_size_sum"),
    )
    start = threading.Barrier(len(cases))

    def call(case):
        clip, task, keywords = case
        fields = form(model, **({"prompt": keywords} if keywords else {}))
        if task == "translate":
            fields["language"] = "French"
        files = upload(clip)
        start.wait()
        return main.post(PATH[task], fields, files)

    with ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(call, cases))
    for case, response in zip(cases, responses, strict=True):
        assert response.status_code == 200, response.text
        same(response.json(), alone[case])
    assert len({r.json()["text"] for r in responses}) > 3  # the outputs differ
    assert len(responses[-1].json()["segments"]) == 2  # the long one was cut into windows
    formed = main.metric("granite_fms_batch_size_count") - batches
    assert main.metric("granite_fms_batch_size_sum") - requests == 16
    assert 3 <= formed < 16, f"{formed} batches for 16 requests"


def test_client_that_goes_away_does_not_poison_its_batch(main, model, alone):
    gone_before = main.metric("granite_fms_requests_total", status="499")
    clips = [DATA / c for c in CLIPS[:4]]
    start = threading.Barrier(len(clips))

    def call(i_clip):
        i, clip = i_clip
        files = upload(clip)
        start.wait()
        if i == 0:  # leaves inside the batch window (300 ms)
            with pytest.raises(httpx.ReadTimeout):
                main.post("/v1/audio/transcriptions", form(model), files, timeout=0.15)
            return None
        return main.post("/v1/audio/transcriptions", form(model), files)

    with ThreadPoolExecutor(len(clips)) as pool:
        responses = list(pool.map(call, enumerate(clips)))
    for clip, response in zip(clips[1:], responses[1:], strict=True):
        assert response.status_code == 200, response.text
        same(response.json(), alone[clip, "transcribe", ""])
    deadline = time.monotonic() + 10
    while main.metric("granite_fms_requests_total", status="499") == gone_before:
        assert time.monotonic() < deadline, "the server did not notice the client leave"
        time.sleep(0.1)


# ----- errors ---------------------------------------------------------------------------------


def noise(seconds: float, rate: int) -> bytes:
    out = io.BytesIO()
    wave = 0.1 * np.random.default_rng(0).standard_normal(int(seconds * rate))
    sf.write(out, wave, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def error_cases(model: str) -> list[tuple[str, dict, dict, dict | None, int, str]]:
    """(what, fields, files, headers, status, words in the message)."""
    fox = upload(DATA / "fox_16k.wav")
    wrong_key = {"Authorization": "Bearer nope"}
    big = 2_000_000 + 10_000  # over --max_file_mb 2, but within the form's allowance
    # fmt: off
    return [
        ("no key", form(model), fox, {}, 401, "API key"),
        ("wrong key", form(model), fox, wrong_key, 401, "API key"),
        ("unknown field", form(model, stream="true"), fox, None, 400, "stream: unknown field"),
        ("no file", form(model), {}, None, 400, "file: required"),
        ("bad format", form(model, response_format="xml"), fox, None, 400, "response_format"),
        ("temperature", form(model, temperature="0.7"), fox, None, 400, "temperature must be 0"),
        ("other model", form("whisper-1"), fox, None, 404, "'whisper-1' is not served"),
        ("undecodable", form(model), {"file": ("x.wav", b"RIFF" + bytes(999))}, None, 400,
         "file 'x.wav'"),
        ("empty file", form(model), {"file": ("e.wav", b"")}, None, 400, "file 'e.wav' is empty"),
        ("large request", form(model), {"file": ("b.wav", bytes(3_000_000))}, None, 413,
         "3.0 MB, over this server's limit of 2 MB per file (--max_file_mb)"),
        ("large file", form(model), {"file": ("b.wav", bytes(big))}, None, 413,
         "file 'b.wav' is 2.0 MB, over this server's limit of 2 MB (--max_file_mb)"),
        ("long audio", form(model), {"file": ("l.wav", noise(70, 8000))}, None, 413,
         "70.0 s long, over this server's limit of 60 s (--max_audio_s)"),
    ]
    # fmt: on


def test_each_error_has_its_status_and_message_and_the_server_keeps_serving(main, model, alone):
    for what, fields, files, headers, status, words in error_cases(model):
        response = main.post("/v1/audio/transcriptions", fields, files, headers)
        assert response.status_code == status, (what, response.text)
        error = response.json()["error"]
        assert words in error["message"], (what, error)
        assert response.headers["x-request-id"]
    translation_prompt = form(model, prompt="fox")
    response = main.post("/v1/audio/translations", translation_prompt, upload(DATA / "fox_16k.wav"))
    assert response.status_code == 400 and "transcriptions only" in response.text
    with pytest.raises(openai.NotFoundError, match="is not served"):
        main.openai().audio.transcriptions.create(model="whisper-1", file=b"x")
    good = main.post("/v1/audio/transcriptions", form(model), upload(DATA / "short_16k.wav"))
    same(good.json(), alone[DATA / "short_16k.wav", "transcribe", ""])
    assert main.process.poll() is None
    log = main.log.read_text()
    assert "413, " in log and "401, " in log and "batch of" in log  # one line per request


# ----- the built-in tiny variant: a full queue, then SIGTERM with requests in flight ----------


def test_full_queue_then_sigterm_drains_requests_in_flight(servers):
    tiny = servers["tiny"].ready()
    model = tiny.get("/v1/models").json()["data"][0]["id"]
    assert model == "granite-speech-tiny"
    client = openai.OpenAI(base_url=tiny.url + "/v1", api_key="none", max_retries=0)

    def transcribe():
        return client.audio.transcriptions.create(
            model=model, file=(DATA / "short_16k.wav").open("rb"), response_format="verbose_json"
        )

    def wait_for(key: str) -> None:
        deadline = time.monotonic() + 60
        while tiny.get("/health").json()[key] != 1:
            assert time.monotonic() < deadline, f"no request {key}"
            time.sleep(0.05)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(transcribe)
        wait_for("decoding")
        second = pool.submit(transcribe)
        wait_for("queued")
        busy = tiny.post("/v1/audio/transcriptions", form(model), upload(DATA / "fox_16k.wav"))
        assert busy.status_code == 503 and "busy" in busy.json()["error"]["message"]
        assert int(busy.headers["retry-after"]) >= 1
        tiny.process.send_signal(signal.SIGTERM)
        results = [first.result(timeout=120), second.result(timeout=120)]
    for result in results:  # random weights: the whole budget, no EOS
        assert len(result.segments[0].tokens) == 200 and result.model_dump()["warnings"]
    assert tiny.process.wait(timeout=60) == -signal.SIGTERM
    assert "all requests answered" in tiny.log.read_text()
    with pytest.raises(httpx.ConnectError):
        tiny.get("/health")


# ----- in process -----------------------------------------------------------------------------


def test_cli_defaults_are_serve_options_defaults():
    args = granite_fms_cli.build_parser().parse_args(["serve", "--variant", "tiny"])
    defaults = ServeOptions()
    env_key = os.environ.get("GRANITE_FMS_API_KEY")
    for f in dataclasses.fields(ServeOptions):
        expected = env_key if f.name == "api_key" else getattr(defaults, f.name)
        assert getattr(args, f.name) == expected, f.name
    assert args.host == "127.0.0.1"


class _Pipe:
    """Records where and with what `warmup` ran."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def warmup(self, batch_sizes):
        self.calls.append((threading.current_thread().name, list(batch_sizes)))
        if self.fail:
            raise RuntimeError("no compiler")


def test_warmup_runs_on_the_worker_thread_before_start_returns():
    pipe = _Pipe()
    worker = ModelWorker(pipe, max_batch_size=3, batch_window_s=0.0, max_queue=1)
    worker.start(warmup=True)
    assert pipe.calls == [("model-worker", [1, 2, 3])]
    worker.close()
    with pytest.raises(RuntimeError, match="warm-up failed: no compiler"):
        ModelWorker(_Pipe(fail=True), 1, 0.0, 1).start(warmup=True)
