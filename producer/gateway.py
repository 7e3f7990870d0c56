"""The HTTP gateway: OpenAI's embeddings API and an async jobs API over AsyncEmbeddingClient.

    python -m producer serve [--host 127.0.0.1] [--port 8000]
    uvicorn producer.gateway:create_app --factory

A thin layer: every decision (lanes, chunking, cache, errors) is the client's; the gateway adds
what HTTP needs: OpenAI's shapes, API keys, request size limits, token counts with the fleet's own
tokenizer, health and readiness, metrics.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import numpy as np
import redis
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract import keys
from contract.codec import Matrix
from contract.fleet_registry import BuildAdvert
from contract.jobs import JobState, describe_positions
from contract.lanes import Lane
from contract.redis_connection import as_text, explain, mask_url
from contract.settings import FleetSettings
from producer.api_keys import authorized, load_keys
from producer.async_client import AsyncEmbeddingClient
from producer.errors import (
    EmbedFleetError,
    FleetUnavailableError,
    InvalidTextError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    JobTimeoutError,
    JobTooLargeError,
    ResultIncompleteError,
)
from producer.gateway_metrics import GatewayMetrics
from producer.openai_api import (
    EmbeddingItem,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    ErrorResponse,
    JobRequest,
    JobResponse,
    Usage,
)
from producer.token_counter import TokenCounter

log = logging.getLogger(__name__)

NPY_MEDIA = "application/x-npy"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"})
STATUS_OF: dict[type[EmbedFleetError], tuple[int, str]] = {
    InvalidTextError: (400, "invalid_request_error"),
    JobTooLargeError: (413, "invalid_request_error"),
    JobNotFoundError: (404, "not_found_error"),
    JobLostError: (410, "not_found_error"),
    JobFailedError: (422, "job_failed_error"),
    ResultIncompleteError: (422, "job_failed_error"),
    JobTimeoutError: (504, "timeout_error"),
    FleetUnavailableError: (503, "service_unavailable_error"),
}


class GatewayError(Exception):
    """An error to answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code


def error_response(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


class Gateway:
    """The state behind the routes: one asyncio client, the API keys, token counters per artifact."""

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics(settings)
        self.client = AsyncEmbeddingClient(settings, on_submit=self.metrics.submitted)
        self.keys = load_keys(settings.api_keys, settings.api_keys_file)
        self._counters: dict[str, TokenCounter] = {}

    async def model_build(self, model: str) -> BuildAdvert:
        build = await self.client.build()
        if model not in (self.settings.model_name, build.name):
            raise GatewayError(
                404,
                f"the model {model!r} does not exist here: this fleet serves {self.settings.model_name!r}"
                f" ({build.name})",
                param="model",
                code="model_not_found",
            )
        return build

    async def counter(self, build: BuildAdvert) -> TokenCounter:
        """The build's tokenizer as its workers publish it: usage and truncation are counted with it."""
        if build.artifact not in self._counters:
            raw = await self.client.redis.get(keys.tokenizer_key(build.artifact))
            if raw is None:
                raise GatewayError(
                    503,
                    "no worker has published the tokenizer yet: retry in a few seconds",
                    kind="service_unavailable_error",
                )
            self._counters[build.artifact] = TokenCounter.for_build(
                build, as_text(raw), self.settings.max_text_chars
            )
        return self._counters[build.artifact]

    async def texts_of(self, request: EmbeddingRequest, counter: TokenCounter) -> list[str]:
        """The inputs as texts: token ids are decoded with the model's own tokenizer."""
        given = request.input
        if isinstance(given, str):
            return [given]
        if not given:
            raise GatewayError(400, "input must not be empty", param="input")
        if all(isinstance(item, str) for item in given):
            return [str(item) for item in given]
        if all(isinstance(item, int) for item in given):
            return [counter.decode(cast(list[int], given))]
        return [
            counter.decode(list(item), index) for index, item in enumerate(given) if isinstance(item, list)
        ]

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        build = await self.model_build(request.model)
        if request.dimensions is not None and request.dimensions != build.dims:
            raise GatewayError(
                400,
                f"{request.model} was not trained for other output sizes: it returns {build.dims} "
                "dimensions; leave `dimensions` out",
                param="dimensions",
            )
        counter = await self.counter(build)
        texts = await self.texts_of(request, counter)
        count = await asyncio.to_thread(counter.count, texts)
        if not request.truncate and any(count.truncated):
            over = [index for index, flag in enumerate(count.truncated) if flag]
            raise GatewayError(
                400,
                f"inputs {describe_positions(over)} are longer than the {build.max_tokens} tokens "
                f"{request.model} reads; send them with truncate=true to embed their start",
                param="input",
                code="context_length_exceeded",
            )
        vectors = await self.client.embed(texts, timeout=self.settings.gateway_timeout_s)
        data = [
            EmbeddingItem(index=i, embedding=_encode(row, request.encoding_format), truncated=cut)
            for i, (row, cut) in enumerate(zip(vectors, count.truncated, strict=True))
        ]
        return EmbeddingResponse(
            data=data,
            model=request.model,
            usage=Usage(prompt_tokens=count.total, total_tokens=count.total),
        )

    async def result(self, job_id: str, as_npy: bool) -> Response:
        job = await self.client.job(job_id)
        record = await job.status()
        if record.state is JobState.QUEUED:
            raise GatewayError(
                409,
                f"job {job_id} is still running ({record.done}/{record.total}): follow "
                f"/v1/jobs/{job_id}/events or poll /v1/jobs/{job_id}",
                code="job_running",
            )
        vectors = await job.result()
        if as_npy:
            return Response(_npy(vectors), media_type=NPY_MEDIA)
        data = [
            EmbeddingItem(index=i, embedding=_encode(row, "float")).model_dump()
            for i, row in enumerate(vectors)
        ]
        return JSONResponse({"object": "list", "data": data, "model": record.model})

    async def ready(self) -> tuple[bool, list[str]]:
        reasons: list[str] = []
        try:
            await self.client.redis.ping()
        except redis.RedisError as exc:
            reasons.append(f"cache Redis at {mask_url(self.settings.cache_url)} unreachable: {exc}")
        try:
            await asyncio.to_thread(_ping_broker, self.client)
        except Exception as exc:
            reasons.append(f"broker at {mask_url(self.settings.broker_url)} unreachable: {exc}")
        if not reasons:
            try:
                await self.client.build()
            except EmbedFleetError as exc:
                reasons.append(str(exc))
        return not reasons, reasons


def _ping_broker(client: AsyncEmbeddingClient) -> None:
    with client.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)


def _encode(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode()
    return [float(value) for value in row]


class BodySizeLimit:
    """Refuses a request body over EMBED_MAX_REQUEST_BYTES (declared or streamed) with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise GatewayError(413, self._message(), param="body", code="request_too_large")
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return (
            f"request body over {self.max_bytes:,} bytes (EMBED_MAX_REQUEST_BYTES): split it or use /v1/jobs"
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, self._message(), "invalid_request_error", "body", "request_too_large")(
            scope, receive, send
        )


def create_app(settings: FleetSettings | None = None) -> FastAPI:
    """The ASGI app (a factory, for `uvicorn --factory`)."""
    settings = settings or FleetSettings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not gateway.keys:
            log.warning("no EMBED_API_KEYS or EMBED_API_KEYS_FILE: the gateway serves without authentication")
        yield
        await gateway.client.aclose()

    app = FastAPI(title="embedfleet gateway", version="1", lifespan=lifespan)
    app.state.gateway = gateway
    _add_handlers(app)
    _add_routes(app, gateway)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.kind, exc.param, exc.code)

    @app.exception_handler(EmbedFleetError)
    async def fleet_error(_: Request, exc: EmbedFleetError) -> JSONResponse:
        status, kind = next(
            (pair for cls, pair in STATUS_OF.items() if isinstance(exc, cls)), (500, "server_error")
        )
        return error_response(status, str(exc), kind)

    @app.exception_handler(redis.RedisError)
    async def redis_error(_: Request, exc: redis.RedisError) -> JSONResponse:
        return error_response(
            503, f"the fleet's Redis is unavailable: {explain(exc)}", "service_unavailable_error"
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error_response(
            400, f"{where or 'body'}: {first.get('msg')}", "invalid_request_error", where or None
        )

    @app.middleware("http")
    async def keys_and_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        gateway: Gateway = request.app.state.gateway
        if request.url.path not in OPEN_PATHS and not authorized(
            request.headers.get("authorization"), gateway.keys
        ):
            return error_response(
                401,
                "missing or invalid API key: send `Authorization: Bearer <key>`",
                "invalid_request_error",
                code="invalid_api_key",
            )
        with gateway.metrics.request(request.url.path) as observe:
            try:
                response = await call_next(request)
            except GatewayError as exc:
                response = error_response(exc.status, str(exc), exc.kind, exc.param, exc.code)
            observe(response.status_code)
            return response


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 410, 413, 422, 503, 504)
}


def _add_routes(app: FastAPI, gateway: Gateway) -> None:
    _add_embedding_routes(app, gateway)
    _add_job_routes(app, gateway)
    _add_operation_routes(app, gateway)


def _add_embedding_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
    async def embeddings(request: EmbeddingRequest) -> EmbeddingResponse:
        return await gateway.embeddings(request)


def _add_job_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/v1/jobs", response_model=JobResponse, status_code=202, responses=ERRORS)
    async def submit(request: JobRequest, response: Response) -> JobResponse:
        if request.model is not None:
            await gateway.model_build(request.model)
        texts = [request.input] if isinstance(request.input, str) else request.input
        job = await gateway.client.submit(
            texts, priority=Lane(request.priority) if request.priority else None
        )
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobResponse.of(await job.status())

    @app.get("/v1/jobs/{job_id}", response_model=JobResponse, responses=ERRORS)
    async def status(job_id: str) -> JobResponse:
        return JobResponse.of(await (await gateway.client.job(job_id)).status())

    @app.delete("/v1/jobs/{job_id}", response_model=JobResponse, responses=ERRORS)
    async def cancel(job_id: str) -> JobResponse:
        return JobResponse.of(await gateway.client.cancel(job_id))

    @app.get(
        "/v1/jobs/{job_id}/result",
        responses={**ERRORS, 200: {"content": {NPY_MEDIA: {}, "application/json": {}}}},
    )
    async def result(job_id: str, request: Request, format: str | None = None) -> Response:
        return await gateway.result(job_id, format == "npy" or NPY_MEDIA in request.headers.get("accept", ""))

    @app.get("/v1/jobs/{job_id}/events", responses=ERRORS)
    async def events(job_id: str) -> StreamingResponse:
        await gateway.client.job(job_id)  # 404 now, not inside the stream
        return StreamingResponse(_progress_events(gateway, job_id), media_type="text/event-stream")


def _add_operation_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, reasons = await gateway.ready()
        body = {"status": "ready" if ready else "unready", "reasons": reasons}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, media = await gateway.metrics.render()
        return Response(body, media_type=media)


def _npy(vectors: Matrix) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vectors, dtype=np.float32))
    return buffer.getvalue()


async def _progress_events(gateway: Gateway, job_id: str) -> AsyncIterator[str]:
    """Server-sent events: `progress` each time the job moves, then `done` with its final record."""
    client = gateway.client
    pubsub = client.redis.pubsub(ignore_subscribe_messages=True)
    last: tuple[int, int] | None = None
    try:
        await pubsub.subscribe(keys.job_channel(job_id))
        while True:
            record = await (await client.job(job_id)).status()
            state = JobResponse.of(record).model_dump()
            if record.state.finished:
                yield f"event: done\ndata: {json.dumps(state)}\n\n"
                return
            if (record.done, record.failed) != last:
                last = (record.done, record.failed)
                yield f"event: progress\ndata: {json.dumps(state)}\n\n"
            await pubsub.get_message(timeout=gateway.settings.wait_poll_s)
    finally:
        await pubsub.aclose()
