"""`create_app(settings)`: the FastAPI gateway.  Nothing is built at import time.

Layers: an ASGI guard (request id, body-size cap, per-route metrics) -> thin routers
(server/routes.py, parts injected by server/deps.py) -> `Gateway.run` (bounded admission queue,
worker threads, deadline) -> a task readout (server/vqa.py, ground.py, retrieve.py, verify.py; wired
in server/service.py) -> `Inference` (server/inference.py) -> a `Backend`.  Errors map to HTTP in
server/errors.py only.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server import schemas as s
from server.errors import (
    BackendUnavailableError,
    DeadlineExceededError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    install_error_handlers,
)
from server.loading import Components, load_components
from server.metrics import Metrics
from server.models import ModelVersions, admin_key
from server.region_cache import RegionCache
from server.service import Service
from server.settings import Settings

log = logging.getLogger("server")
T = TypeVar("T")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PROBES = ("/healthz", "/readyz")  # answered even when the open-request cap is reached


class Gateway:
    """Admission control around the readouts: at most `max_queue` requests admitted, `workers` running.

    A request over the queue bound is refused at once (429 + Retry-After) rather than left to wait;
    an admitted one that is not answered within the deadline gets 504 (its queued work is cancelled
    when it has not started; a running model call finishes in the background and frees its slot).
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="twelve-worker")
        self._admitted = 0
        self._lock = threading.Lock()
        self.accepting = True

    def _release(self, _future: object) -> None:
        with self._lock:
            self._admitted -= 1
        self.metrics.in_flight.dec()

    async def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if not self.accepting:
                self.metrics.rejected.labels("shutting_down").inc()
                raise BackendUnavailableError(
                    "server shutting down; retry on another replica or later",
                    retry_after=self.settings.retry_after_s,
                )
            if self._admitted >= self.settings.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise OverloadedError(
                    f"server busy: {self._admitted} requests queued; retry later",
                    retry_after=self.settings.retry_after_s,
                )
            self._admitted += 1
        self.metrics.in_flight.inc()
        ctx = contextvars.copy_context()
        future = self._executor.submit(ctx.run, fn)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.deadline_s)
        except TimeoutError:
            future.cancel()
            self.metrics.rejected.labels("deadline").inc()
            raise DeadlineExceededError(
                f"no answer within the {self.settings.deadline_s:g} s deadline"
            ) from None

    @property
    def admitted(self) -> int:
        return self._admitted

    def open(self) -> None:
        """Accept work (again: an app can be started after a shutdown, as test clients do)."""
        if self._executor._shutdown:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.workers, thread_name_prefix="twelve-worker"
            )
        self.accepting = True

    def begin_shutdown(self) -> None:
        """Readiness goes false and new work is refused (503); admitted work still runs."""
        self.accepting = False

    def close(self) -> None:
        self.begin_shutdown()
        self._executor.shutdown(wait=True, cancel_futures=True)


class Guard:
    """Pure ASGI middleware: request id in and out, open-request cap (503 + Retry-After), body cap
    (413 before reading it all), body timeout (408 for slow senders), metrics."""

    def __init__(self, app: Any, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_open = settings.max_open_requests
        self.body_timeout = settings.body_timeout_s
        self.retry_after = settings.retry_after_s
        self.metrics = metrics
        self.open = 0  # requests inside this middleware now (one event loop: no lock needed)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if state.get("model_version") is not None:  # set by server/deps.py
                    extra.append((b"x-model-version", str(state["model_version"]).encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if self.open >= self.max_open and scope.get("path") not in _PROBES:
            self.metrics.rejected.labels("too_many_open").inc()
            message = f"server busy: {self.open} requests open; retry later"
            await _send_json(send_wrapper, 503, message, None, request_id, self.retry_after)
            self._observe(scope, state, status_holder["status"], start)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status = 413 if length.isdigit() else 400
            message = (
                f"body: {length} bytes is over the {self.max_body}-byte limit"
                if status == 413
                else "content-length: not a non-negative integer"
            )
            await _send_json(send_wrapper, status, message, "body", request_id)
            self._observe(scope, state, status_holder["status"], start)
            return
        seen, body_done = 0, False
        body_deadline = time.monotonic() + self.body_timeout

        async def receive_capped() -> dict:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() waits for a disconnect: no deadline then
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, body_deadline - time.monotonic()))
            except TimeoutError:
                raise RequestTimeoutError(
                    f"body: not received within {self.body_timeout:g} s", "body"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_body:
                    raise PayloadTooLargeError(f"body: over the {self.max_body}-byte limit", "body")
            return message

        self.open += 1
        try:
            await self.app(scope, receive_capped, send_wrapper)
        finally:
            self.open -= 1
            self._observe(scope, state, status_holder["status"], start)

    def _observe(self, scope: dict, state: dict, status: int, start: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "other"
        task = state.get("task", "-")
        self.metrics.requests.labels(path, task, str(status)).inc()
        self.metrics.latency.labels(path, task).observe(time.perf_counter() - start)


async def _send_json(
    send: Callable,
    status: int,
    message: str,
    field: str | None,
    request_id: str,
    retry_after: int | None = None,
) -> None:
    body = json.dumps(
        {"error": {"code": status, "message": message, "field": field, "request_id": request_id}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


REQUEST_MODELS = (
    s.ImagesRequest,
    s.VQARequest,
    s.GroundRequest,
    s.RetrieveRequest,
    s.VerifyRequest,
    s.GalleryRequest,
)


def _openapi(app: FastAPI) -> Callable[[], dict]:
    """OpenAPI with the request models as components (routes parse JSON or multipart themselves)."""

    def build() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in REQUEST_MODELS:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    return build


def extractor_key(extractor: object) -> str:
    """The region cache's key for this extractor's detector (weights and preset), "" when it has none
    to digest (stand-ins in tests)."""
    detector = getattr(extractor, "detector", None)
    if detector is None or not hasattr(detector, "state_dict"):
        return ""
    from regions.weights import detector_key

    return detector_key(detector)


def model_versions(settings: Settings, service: Service, components: Components) -> ModelVersions:
    """The version switch over `service`: possible when it serves a version of a repository (local or
    Triton backend started from `settings`), not for a torch checkpoint or hand-built components."""
    from server.loading import build_backend, read_answers
    from server.settings import BackendKind

    repository = settings.model_repository
    if components.version is None or repository is None or settings.backend is BackendKind.TORCH:
        return ModelVersions(settings, service)

    def build(version: int):
        return build_backend(settings, version), read_answers(None, repository, version)

    control = None
    if settings.backend is BackendKind.TRITON:
        from export.versions import control_key
        from server.triton_backend import TritonBackend

        key = control_key(repository)
        control = TritonBackend(settings.triton_url, timeout_s=settings.deadline_s, control_key=key)
    return ModelVersions(settings, service, repository, build, control)


def create_app(settings: Settings | None = None, components: Components | None = None) -> FastAPI:
    """Build the gateway.  `components` (backend, extractor, tokenizer, answers) default to `settings`'."""
    from server.routes import admin_router, api_router, page_router

    settings = settings or Settings()
    metrics = Metrics()
    components = components or load_components(settings)
    cache = RegionCache(
        settings.cache_entries,
        settings.cache_dir,
        settings.pixel_cache_entries,
        detector=extractor_key(components.extractor),
    )
    service = Service(
        settings,
        components.backend,
        components.extractor,
        components.tokenizer,
        components.answers,
        metrics,
        cache,
        version=components.version,
    )
    models = model_versions(settings, service, components)
    gateway = Gateway(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gateway.open()
        models.current.galleries.open()
        yield
        # Readiness goes false first, then in-flight work drains (uvicorn stops accepting before this).
        gateway.close()
        models.current.galleries.close()  # the gallery builder stops before the backend closes
        models.close()
        models.current.backend.close()
        cache.close()

    app = FastAPI(
        title="twelve-in-one",
        version="1",
        description="The 12-in-1 multi-task ViLBERT: VQA, grounding, retrieval and verification over HTTP.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.gateway = gateway
    app.state.models = models  # models.current: the Service of the version served now
    app.state.admin_key = admin_key(settings)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(page_router())
    app.include_router(api_router(settings))
    app.include_router(admin_router())
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    return app
