"""A fake Replicate: a real HTTP server (starlette + uvicorn in a thread, on a free port) that speaks
the part of Replicate's API the official client uses, so that the real ``replicate`` client can be
pointed at it (``base_url=fake.url``).

Endpoints: ``POST /v1/models/{owner}/{name}/predictions`` (official models), ``POST /v1/predictions``
(by version), ``GET /v1/predictions/{id}``, ``POST /v1/predictions/{id}/cancel``, with
``Prefer: wait[=N]``; output files are served by the fake itself under ``/files/``.

Behaviour is set per test through ``fake.behaviour`` (a ``FakeBehaviour``): how long a prediction
takes, whether it stays running until ``release()``, a failure (``"NSFW content detected"``), 429/5xx
answers to the first requests, a 422 for invalid input, the size of the output image. Every request
is recorded (``fake.requests``), so tests can assert what the client sent, or that nothing was sent.
"""

from __future__ import annotations

import asyncio
import functools
import io
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen_testing.net import free_port

DEFAULT_TOKEN = "r8_fake_token_for_tests"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


@dataclass
class FakeBehaviour:
    #: Seconds a prediction runs before it ends.
    delay_seconds: float = 0.0
    #: Predictions stay "processing" until ``FakeReplicate.release()`` (or a cancel).
    hold: bool = False
    #: When set, predictions end "failed" with this error (e.g. "NSFW content detected …").
    fail_error: str | None = None
    #: Answers to the next create requests, one per request: (HTTP status, Retry-After header or None).
    create_failures: list[tuple[int, str | None]] = field(default_factory=list)
    #: Same for GET /v1/predictions/{id}.
    get_failures: list[tuple[int, str | None]] = field(default_factory=list)
    #: When set, creates answer 422 with this detail (input validation).
    reject_input: str | None = None
    #: Size of the output image; by default the requested width/height or 1024 on the long side of the ratio.
    output_size: tuple[int, int] | None = None
    output_format: str = "png"
    #: Output as a list of URLs (FLUX) rather than one URL (nano-banana).
    output_as_list: bool = False
    #: Seconds a create's answer takes to arrive after its ``Prefer: wait`` (a slow network or a busy
    #: Replicate).
    create_latency_seconds: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def input(self) -> dict[str, Any]:
        return dict(self.body.get("input", {})) if isinstance(self.body, dict) else {}


@dataclass
class _Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    created: float
    behaviour: FakeBehaviour
    status: str = "starting"
    released: bool = False

    def advance(self, now: float) -> None:
        if self.status in TERMINAL:
            return
        if self.behaviour.hold and not self.released:
            self.status = "processing"
        elif now - self.created >= self.behaviour.delay_seconds:
            self.status = "failed" if self.behaviour.fail_error else "succeeded"
        else:
            self.status = "processing"


def output_size(behaviour: FakeBehaviour, payload: dict[str, Any]) -> tuple[int, int]:
    if behaviour.output_size:
        return behaviour.output_size
    if "width" in payload and "height" in payload:
        return int(payload["width"]), int(payload["height"])
    ratio = str(payload.get("aspect_ratio", "1:1"))
    try:
        w, h = (int(part) for part in ratio.split(":"))
    except ValueError:
        w, h = 1, 1
    scale = 1024 / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


@functools.lru_cache(maxsize=16)
def render_output(width: int, height: int, fmt: str) -> bytes:
    image = Image.new("RGB", (width, height), (30, 120, 200))
    image.paste((240, 200, 40), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    out = io.BytesIO()
    image.save(out, format={"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}.get(fmt, "PNG"))
    return out.getvalue()


class FakeReplicate:
    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.port = free_port()
        self.behaviour = FakeBehaviour()
        self.requests: list[RecordedRequest] = []
        self._predictions: dict[str, _Prediction] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests look at -------------------------------------------------------------------

    def recorded(self, method: str | None = None, path_prefix: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    @property
    def creates(self) -> list[RecordedRequest]:
        return [r for r in self.recorded("POST") if r.path.endswith("/predictions")]

    @property
    def cancels(self) -> list[RecordedRequest]:
        return [r for r in self.recorded("POST") if r.path.endswith("/cancel")]

    @property
    def api_calls(self) -> list[RecordedRequest]:
        return self.recorded(path_prefix="/v1/")

    def generator_env(self, **extra: str) -> dict[str, str]:
        """Environment of a generator process that uses this fake as Replicate, polling it briskly."""
        return {
            "IMAGEGEN_PROVIDER": "replicate",
            "REPLICATE_API_TOKEN": self.token,
            "IMAGEGEN_REPLICATE_BASE_URL": self.url,
            "IMAGEGEN_REPLICATE_WAIT_SECONDS": "1",
            "IMAGEGEN_REPLICATE_POLL_INTERVAL_SECONDS": "0.1",
            **extra,
        }

    def prediction_status(self, prediction_id: str) -> str:
        with self._lock:
            return self._predictions[prediction_id].status

    def release(self) -> None:
        """Lets held predictions finish."""
        with self._lock:
            for prediction in self._predictions.values():
                prediction.released = True

    def reset(self) -> None:
        with self._lock:
            self.behaviour = FakeBehaviour()
            self.requests.clear()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeReplicate:
        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-replicate", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Replicate did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._closing = True
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> FakeReplicate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP side ------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", self._create_for_model, methods=["POST"]),
                Route("/v1/predictions", self._create_for_version, methods=["POST"]),
                Route("/v1/predictions/{id}", self._get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET"]),
            ]
        )

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = await request.json()
            except ValueError:
                body = raw.decode(errors="replace")
        with self._lock:
            self.requests.append(
                RecordedRequest(request.method, request.url.path, dict(request.headers), body)
            )
        return body

    def _unauthorised(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"title": "Unauthenticated", "detail": "Invalid token", "status": 401}, 401)
        return None

    def _scripted_failure(self, failures: list[tuple[int, str | None]]) -> Response | None:
        with self._lock:
            if not failures:
                return None
            status, retry_after = failures.pop(0)
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        detail = "Request was throttled." if status == 429 else "Internal server error"
        return JSONResponse({"title": detail, "detail": detail, "status": status}, status, headers=headers)

    async def _create_for_model(self, request: Request) -> Response:
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        return await self._create(request, model=model, version="")

    async def _create_for_version(self, request: Request) -> Response:
        return await self._create(request, model="", version="")

    async def _create(self, request: Request, model: str, version: str) -> Response:
        body = await self._record(request)
        denied = self._unauthorised(request) or self._scripted_failure(self.behaviour.create_failures)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return JSONResponse(
                {"title": "Invalid request", "detail": "input is required", "status": 422}, 422
            )
        if self.behaviour.reject_input:
            detail = self.behaviour.reject_input
            return JSONResponse({"title": "Input validation failed", "detail": detail, "status": 422}, 422)
        prediction = _Prediction(
            id=secrets.token_hex(10),
            model=model or "owner/versioned-model",
            version=str(body.get("version") or version or "hidden"),
            input=body["input"],
            created=time.monotonic(),
            behaviour=self.behaviour,
        )
        with self._lock:
            self._predictions[prediction.id] = prediction
        await self._wait(prediction, _prefer_wait(request.headers.get("prefer", "")))
        if prediction.behaviour.create_latency_seconds:
            await asyncio.sleep(prediction.behaviour.create_latency_seconds)
        return JSONResponse(self._json(prediction), 201)

    async def _wait(self, prediction: _Prediction, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            with self._lock:
                now = time.monotonic()
                prediction.advance(now)
                done = prediction.status in TERMINAL
                held = prediction.behaviour.hold and not prediction.released
            if done or self._closing or now >= deadline:
                return
            # Sleep until the prediction is due (a benchmark holds a thousand requests here: a 20 ms
            # poll each would busy the process that also runs the clients); a held one is polled.
            due = deadline if held else min(deadline, prediction.created + prediction.behaviour.delay_seconds)
            await asyncio.sleep(min(max(due - now, 0.001), 0.05 if held else 0.5))

    async def _get(self, request: Request) -> Response:
        await self._record(request)
        denied = self._unauthorised(request) or self._scripted_failure(self.behaviour.get_failures)
        if denied is not None:
            return denied
        with self._lock:
            prediction = self._predictions.get(request.path_params["id"])
            if prediction is not None:
                prediction.advance(time.monotonic())
        if prediction is None:
            return JSONResponse({"title": "Not found", "detail": "Not found", "status": 404}, 404)
        return JSONResponse(self._json(prediction))

    async def _cancel(self, request: Request) -> Response:
        await self._record(request)
        denied = self._unauthorised(request)
        if denied is not None:
            return denied
        with self._lock:
            prediction = self._predictions.get(request.path_params["id"])
            if prediction is not None:
                prediction.advance(time.monotonic())
                if prediction.status not in TERMINAL:
                    prediction.status = "canceled"
        if prediction is None:
            return JSONResponse({"title": "Not found", "detail": "Not found", "status": 404}, 404)
        return JSONResponse(self._json(prediction))

    async def _file(self, request: Request) -> Response:
        await self._record(request)
        prediction_id, _, _ = request.path_params["name"].partition(".")
        with self._lock:
            prediction = self._predictions.get(prediction_id)
        if prediction is None or prediction.status != "succeeded":
            return Response(status_code=404)
        width, height = output_size(prediction.behaviour, prediction.input)
        fmt = prediction.behaviour.output_format
        data = await asyncio.to_thread(render_output, width, height, fmt)
        return Response(data, media_type=f"image/{'jpeg' if fmt == 'jpg' else fmt}")

    def _json(self, prediction: _Prediction) -> dict[str, Any]:
        output: Any = None
        if prediction.status == "succeeded":
            url = f"{self.url}/files/{prediction.id}.{prediction.behaviour.output_format}"
            output = [url] if prediction.behaviour.output_as_list else url
        now = datetime.now(UTC).isoformat()
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "status": prediction.status,
            "input": prediction.input,
            "output": output,
            "error": prediction.behaviour.fail_error if prediction.status == "failed" else None,
            "logs": "",
            "metrics": {"predict_time": 0.1} if prediction.status == "succeeded" else {},
            "created_at": now,
            "started_at": now,
            "completed_at": now if prediction.status in TERMINAL else None,
            "urls": {
                "get": f"{self.url}/v1/predictions/{prediction.id}",
                "cancel": f"{self.url}/v1/predictions/{prediction.id}/cancel",
            },
        }


def _prefer_wait(header: str) -> float:
    """Seconds asked for by ``Prefer: wait`` (60) or ``Prefer: wait=N``; 0 without the header."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return min(60.0, float(value)) if value else 60.0
            except ValueError:
                return 60.0
    return 0.0
