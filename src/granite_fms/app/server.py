"""An OpenAI-compatible transcription server: FastAPI on uvicorn, one model worker that batches.

    granite-fms serve --model_path granite-speech-3.3-2b --compile    # http://127.0.0.1:8000
    run(pipe, ServeOptions(max_batch_size=8), model="granite-speech-3.3-2b")

Endpoints, in OpenAI's shapes:

* POST /v1/audio/transcriptions, /v1/audio/translations: multipart `file`, `model`,
  `language` (transcriptions: the spoken language, recorded in verbose_json; translations: the
  target language, default English), `prompt` (transcriptions: comma-separated keywords to
  bias towards, as the model cards do), `response_format` (json, text, srt, vtt,
  verbose_json) and `temperature` (0 only: decoding is greedy);
* GET /v1/models, GET /health, GET /metrics (Prometheus text format).

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 a bad field or
undecodable audio, 401 a missing or wrong API key, 404 another model, 413 a file or audio over
the limits, 503 a full queue (with Retry-After). Every request gets an `X-Request-Id` and one
log line. SIGTERM or Ctrl-C stops taking connections, answers the requests in flight, then
exits.
"""

import asyncio
import io
import logging
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import soundfile as sf
import torch
import uvicorn
from fastapi import FastAPI, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request as HttpRequest

from granite_fms.app import writers
from granite_fms.app.batching import BatchStats, Done, Job, ModelWorker, QueueFull
from granite_fms.app.dataset import Request
from granite_fms.audio.longform import LongFormOptions
from granite_fms.pipeline import SpeechPipeline

logger = logging.getLogger(__name__)

MB = 1_000_000
FORM_SLACK = 64 * 1024  # multipart headers and the other fields, beside the file
AUDIO_PATHS = {"/v1/audio/transcriptions": "transcribe", "/v1/audio/translations": "translate"}
PATHS = (*AUDIO_PATHS, "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches requests and what it accepts."""

    max_batch_size: int = 8  # requests decoded together (and windows per generation call)
    batch_window_ms: float = 20.0  # how long the oldest waiting request waits for others
    max_file_mb: float = 25.0  # largest upload (OpenAI's limit), in 10^6 bytes
    max_audio_s: float = 600.0  # longest audio, in seconds
    max_queue: int = 64  # requests waiting for the model; beyond it, 503
    api_key: str | None = None  # if set, every request must send `Authorization: Bearer KEY`

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("max_file_mb", "max_audio_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.batch_window_ms >= 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")


class AudioForm(BaseModel):
    """The multipart fields of both audio endpoints; any other field is refused."""

    model_config = ConfigDict(extra="forbid")

    file: UploadFile
    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: float = 0.0


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str = "",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, self.status, headers=self.headers)


# ----- metrics and the request log ----------------------------------------------------------


class Monitor:
    """Prometheus metrics (in a registry of its own) and the one log line per request."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        counter, gauge = partial(Counter, registry=r), partial(Gauge, registry=r)
        seconds = partial(Histogram, registry=r, buckets=LATENCY_BUCKETS)
        sizes = partial(Histogram, registry=r, buckets=SIZE_BUCKETS)
        self.requests = counter("granite_fms_requests", "Requests answered", ["endpoint", "status"])
        self.audio = counter("granite_fms_audio_seconds", "Seconds of audio decoded", ["task"])
        self.latency = seconds(
            "granite_fms_request_seconds", "Time from request to response", ["endpoint"]
        )
        self.queue_wait = seconds(
            "granite_fms_queue_wait_seconds", "Time a request waited for its batch"
        )
        self.batch_size = sizes("granite_fms_batch_size", "Requests per batch")
        self.batch_windows = sizes(
            "granite_fms_batch_windows", "Audio windows per batch (long audio is cut into windows)"
        )
        self.batch_seconds = seconds("granite_fms_batch_seconds", "Model time per batch")
        self.queue_depth = gauge("granite_fms_queue_depth", "Requests waiting for a batch")
        self.in_batch = gauge(
            "granite_fms_batch_in_progress", "Requests in the batch being decoded"
        )

    def watch(self, worker: ModelWorker) -> None:
        self.queue_depth.set_function(lambda: worker.queued)
        self.in_batch.set_function(lambda: worker.decoding)

    def observe_batch(self, batch: BatchStats) -> None:
        self.batch_size.observe(batch.requests)
        self.batch_windows.observe(batch.windows)
        self.batch_seconds.observe(batch.seconds)

    def record(self, path: str, state: dict[str, Any], status: int, seconds: float) -> None:
        """Count one answered request and log its line: id, audio seconds, batch, latency."""
        endpoint = path if path in PATHS else "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        done: Done | None = state.get("done")
        audio = state.get("audio_s")
        if done is not None and status == 200:
            self.audio.labels(AUDIO_PATHS[path]).inc(audio)
            self.queue_wait.observe(done.queue_s)
        parts = [f"request {state.get('request_id', '-')}", path, str(status)]
        if audio is not None:
            parts.append(f"audio {audio:.2f} s")
        if done is not None:
            parts.append(f"batch of {done.batch_size}")
        parts.append(f"{1e3 * seconds:.0f} ms")
        if state.get("error"):
            parts.append(state["error"])
        logger.info(", ".join(parts))


class Gate:
    """ASGI middleware around every request: its id, the API key and body-size checks before
    the body is read, then `Monitor.record` once it is answered."""

    def __init__(self, app, options: ServeOptions, monitor: Monitor):
        self.app, self.options, self.monitor = app, options, monitor

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id = uuid.uuid4().hex[:12]
        rid = request_id.encode()
        start, status = time.perf_counter(), 499  # nginx's "client closed request"

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        try:
            refused = self._refusal(scope)
            if refused is None:
                await self.app(scope, receive, send_with_id)
            else:
                state["error"] = refused.message
                await refused.response()(scope, receive, send_with_id)
        except Exception:  # Starlette's ServerErrorMiddleware, outside, answers 500
            status = 500
            raise
        finally:
            self.monitor.record(scope["path"], state, status, time.perf_counter() - start)

    def _refusal(self, scope) -> ApiError | None:
        headers = dict(scope["headers"])
        key = self.options.api_key
        if key is not None:
            sent = headers.get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(sent.encode(), f"Bearer {key}".encode()):
                return ApiError(
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )
        length = headers.get(b"content-length", b"")
        limit = self.options.max_file_mb * MB + FORM_SLACK
        if scope["path"] in AUDIO_PATHS and length.isdigit() and int(length) > limit:
            return ApiError(
                413,
                f"the request is {int(length) / MB:.1f} MB, over this server's limit of "
                f"{self.options.max_file_mb:g} MB per file (--max_file_mb)",
                "file",
                "file_too_large",
            )
        return None


# ----- the audio endpoints ------------------------------------------------------------------


class AudioService:
    """What the two audio endpoints do: check the form, decode the upload, queue it, answer."""

    def __init__(self, worker: ModelWorker, options: ServeOptions, model: str):
        self.worker, self.options, self.model = worker, options, model
        self.extractor = worker.pipe.processor.feature_extractor

    async def answer(self, task: str, http: HttpRequest, form: AudioForm) -> Response:
        request = self._request(task, form)
        wave = await self._waveform(form.file)
        http.state.audio_s = duration = wave.numel() / self.extractor.sample_rate
        if duration > self.options.max_audio_s:
            raise ApiError(
                413,
                f"the audio is {duration:.1f} s long, over this server's limit of "
                f"{self.options.max_audio_s:g} s (--max_audio_s)",
                "file",
                "audio_too_long",
            )
        try:
            job = self.worker.submit(request, wave)
        except QueueFull as e:
            retry = {"Retry-After": str(self.worker.retry_after())}
            message = f"the server is busy: {e}; retry later"
            raise ApiError(503, message, code="queue_full", headers=retry) from e
        try:
            done = await _result(job, http)
        except Exception as e:  # the worker logged it
            message = f"decoding failed: {type(e).__name__}: {e}"
            raise ApiError(500, message, code="decoding_failed") from e
        if done is None:
            http.state.error = "the client went away before its result"
            return Response(status_code=499)
        http.state.done = done
        language = request.target_language if task == "translate" else form.language
        return render(done.result, form.response_format, task, language, duration)

    def _request(self, task: str, form: AudioForm) -> Request:
        if form.model != self.model:
            raise ApiError(
                404,
                f"model {form.model!r} is not served here; this server serves {self.model!r}",
                "model",
                "model_not_found",
            )
        if form.temperature != 0:
            raise ApiError(
                400,
                f"temperature must be 0 (decoding is greedy), got {form.temperature:g}",
                "temperature",
            )
        long_form = LongFormOptions(batch_size=self.options.max_batch_size)
        if task == "translate":
            if form.prompt:
                raise ApiError(400, "prompt (keywords) applies to transcriptions only", "prompt")
            language = form.language or "English"
            return Request("translate", target_language=language, long_form=long_form)
        keywords = tuple(k.strip() for k in (form.prompt or "").split(",") if k.strip())
        return Request("transcribe", keywords=keywords, long_form=long_form)

    async def _waveform(self, upload: UploadFile) -> torch.Tensor:
        """The upload as the pipeline reads audio; 413 over the size limit, 400 undecodable."""
        name = Path(upload.filename or "upload").name
        if upload.size is not None and upload.size > self.options.max_file_mb * MB:
            raise ApiError(
                413,
                f"file {name!r} is {upload.size / MB:.1f} MB, over this server's limit of "
                f"{self.options.max_file_mb:g} MB (--max_file_mb)",
                "file",
                "file_too_large",
            )
        data = await upload.read()
        if not data:
            raise ApiError(400, f"file {name!r} is empty", "file", "invalid_audio")
        return await asyncio.to_thread(self._decode, data, name)

    def _decode(self, data: bytes, name: str) -> torch.Tensor:
        with tempfile.TemporaryDirectory(prefix="granite-fms-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                return self.extractor.waveform(path)
            except (ValueError, RuntimeError, OSError, sf.LibsndfileError) as e:
                message = str(e).replace(str(path), name)
                raise ApiError(400, f"file {name!r}: {message}", "file", "invalid_audio") from e


async def _result(job: Job, http: HttpRequest) -> Done | None:
    """The job's result, or None (the job cancelled) if the client disconnects first."""
    result = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnect(http))
    await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    if result.done():
        gone.cancel()
        return result.result()
    result.cancel()  # skipped if its batch has not started; its result dropped if it has
    return None


async def _disconnect(http: HttpRequest) -> None:
    """Returns when the client closes the connection (the body is read already)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


def render(
    result: dict[str, Any], fmt: str, task: str, language: str | None, duration: float
) -> Response:
    """One result in a `response_format`; srt and vtt as `granite_fms.app.writers` writes them."""
    if fmt == "json":
        return JSONResponse({"text": result["text"]})
    if fmt == "verbose_json":
        segments = [{**s, "temperature": 0.0} for s in result["segments"]]
        body = dict(task=task, language=language, duration=duration, text=result["text"])
        return JSONResponse({**body, "segments": segments, "warnings": result["warnings"]})
    if fmt == "text":
        return PlainTextResponse(result["text"])
    out = io.StringIO()
    writers.WRITERS[fmt](result, out)
    return PlainTextResponse(out.getvalue(), media_type="text/vtt" if fmt == "vtt" else None)


# ----- the app ------------------------------------------------------------------------------


def create_app(worker: ModelWorker, monitor: Monitor, options: ServeOptions, model: str) -> FastAPI:
    """The ASGI app around a started worker; closing the app drains and stops the worker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # uvicorn gets here after the requests in flight are answered.
        await asyncio.to_thread(worker.close)
        logger.info("all requests answered; the model worker has stopped")

    app = FastAPI(title="granite-fms", lifespan=lifespan)
    app.add_middleware(Gate, options=options, monitor=monitor)
    service = AudioService(worker, options, model)
    created = int(time.time())
    _add_error_handlers(app)

    def audio_endpoint(task: str) -> Callable:
        async def endpoint(http: HttpRequest, form: Annotated[AudioForm, Form()]) -> Response:
            return await service.answer(task, http, form)

        return endpoint

    for path, task in AUDIO_PATHS.items():
        app.post(path)(audio_endpoint(task))

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model, "object": "model", "created": created, "owned_by": "granite-fms"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "queued": worker.queued, "decoding": worker.decoding}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(http: HttpRequest, error: ApiError) -> JSONResponse:
        http.state.error = error.message
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def bad_form(http: HttpRequest, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in error.errors()]
        fields = ", ".join(AudioForm.model_fields)
        message = "; ".join(text for _, text in problems) + f" (the form takes {fields})"
        return await api_error(http, ApiError(400, message, problems[0][0], "invalid_field"))


def _problem(error: dict) -> tuple[str, str]:
    """(field, what is wrong with it) of one pydantic error."""
    name = str(error["loc"][-1]) if error.get("loc") else "body"
    if error["type"] == "extra_forbidden":
        return name, f"{name}: unknown field"
    if error["type"] == "missing":
        return name, f"{name}: required"
    return name, f"{name}: {error['msg']}"


def run(
    pipe: SpeechPipeline,
    options: ServeOptions,
    *,
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    warmup: bool = False,
) -> None:
    """Serve `pipe` until SIGTERM or Ctrl-C; with `warmup` (a compiled pipeline), its shapes
    for every batch size up to `max_batch_size` are compiled before the port opens."""
    monitor = Monitor()
    worker = ModelWorker(
        pipe,
        options.max_batch_size,
        options.batch_window_ms / 1e3,
        options.max_queue,
        observe=monitor.observe_batch,
    )
    monitor.watch(worker)
    if host not in ("127.0.0.1", "localhost", "::1") and options.api_key is None:
        logger.warning("listening on %s without --api-key: anyone who reaches it can use it", host)
    try:
        if warmup:
            logger.info("compiling batch sizes 1-%d before the port opens", options.max_batch_size)
        worker.start(warmup=warmup)
        logging.getLogger("uvicorn.error").setLevel(logging.INFO)
        app = create_app(worker, monitor, options, model)
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
        uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it drained on again
        logger.info("interrupted")


__all__ = ["AudioForm", "ServeOptions", "create_app", "render", "run"]
