"""OpenAI-compatible embedding server: FastAPI routes, OpenAI-shaped errors, API key, body limit, metrics.

Status codes: 400 a request that fits the schema but cannot be served (empty input, too many or too long
inputs, bad dimensions, a body that is not JSON), 401 missing or wrong API key, 404 unknown model or route,
413 body too large, 422 a body that does not fit the schema (wrong types, unknown fields, bad
encoding_format), 429 queue full, 500 anything else (logged here; the client gets no traceback).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import sys
import time
from contextlib import asynccontextmanager

import anyio
import numpy as np
import torch
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from ..matryoshka import describe, is_trained_width, trained_widths, truncate_dims
from .batcher import Batcher, QueueFull
from .engine import Engine, InputTooLong
from .metrics import Metrics
from .schemas import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    ServeSettings,
    Usage,
)

log = logging.getLogger(__name__)
_ROUTES = {"/v1/embeddings", "/v1/models", "/health", "/metrics"}
DIMENSIONS_HEADER = "x-poolattn-dimensions"  # on responses to a request with `dimensions`: trained | untrained
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
          503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=_TYPES.get(status, "invalid_request_error"),
                                         param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class Guard:
    """Pure ASGI middleware (no task groups, so errors raised in `receive` reach the exception handlers as they
    are): 413 for a body over `max_body` bytes, by Content-Length or as it streams in, in OpenAI's error shape
    (Starlette's own limiter answers a declared oversize in plain text); request counts and latency metrics."""

    def __init__(self, app, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    def _too_large(self, size: int) -> HTTPException:
        return HTTPException(413, f"request body of {size} bytes is larger than the limit of {self.max_body} bytes")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, seen = time.perf_counter(), 500, 0

        async def counted_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._too_large(seen)
            return message

        try:
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body:
                err = self._too_large(int(declared))
                await error_response(413, err.detail, code="body_too_large")(scope, receive, counted_send)
            else:
                await self.app(scope, limited_receive, counted_send)
        finally:
            route = scope["path"] if scope["path"] in _ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


def _inputs(req: EmbeddingRequest, settings: ServeSettings, engine: Engine) -> list[str] | list[list[int]]:
    """The request's inputs as a list; every bad-value case becomes a 400 that names the input."""
    raw = req.input
    inputs = [raw] if isinstance(raw, str) else [raw] if raw and isinstance(raw[0], int) else list(raw)
    if not inputs:
        raise APIError(400, "input is empty: send a string, a list of strings or token-id arrays", "input")
    if len(inputs) > settings.max_inputs:
        raise APIError(400, f"input has {len(inputs)} items, more than the limit of {settings.max_inputs} per "
                            "request", "input")
    for i, x in enumerate(inputs):
        if len(x) == 0:
            raise APIError(400, f"input[{i}] is empty ({'an empty string' if isinstance(x, str) else 'no tokens'})",
                           "input")
        if not isinstance(x, str) and not all(0 <= t < engine.vocab_size for t in x):
            raise APIError(400, f"input[{i}] has token ids outside the vocabulary (0..{engine.vocab_size - 1})",
                           "input")
    if not isinstance(inputs[0], str) and req.instruction:
        raise APIError(400, "instruction cannot be combined with token-id input: tokenize the formatted text",
                       "instruction")
    if req.dimensions is not None and not 1 <= req.dimensions <= engine.dim:
        raise APIError(400, f"dimensions must be between 1 and {engine.dim}, got {req.dimensions}", "dimensions")
    return inputs


async def _until_done_or_gone(request: Request, future: asyncio.Future) -> np.ndarray | None:
    """The vectors, or None when the client disconnected first (its queued inputs are then dropped)."""
    async def gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not future.done():
        future.cancel()
        return None
    return future.result()


def _encode_vectors(vectors: np.ndarray, fmt: str) -> list[list[float]] | list[str]:
    if fmt == "base64":  # little-endian float32, as the openai client decodes it
        return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    return vectors.tolist()


def create_app(model, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving `model` (an EmbeddingModel); its lifespan starts and drains the batching worker."""
    settings = settings or ServeSettings()
    engine = Engine(model, settings.max_input_tokens)
    metrics = Metrics()
    created = int(time.time())
    untrained_seen: set[int] = set()  # widths asked for that the model was not trained at (each logged once)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The inference thread gives up the GIL inside every torch op and needs it back between ops (hundreds per
        # forward); while the event loop parses and answers requests it waits up to the switch interval each time
        # (CPython's default 5 ms). A shorter interval hands the GIL back sooner; restored on shutdown.
        switch = sys.getswitchinterval()
        if settings.gil_switch_ms is not None:
            sys.setswitchinterval(settings.gil_switch_ms / 1000)
        batch_tokens, max_batch_size = settings.batch_limits(torch.device(engine.model.device).type)
        log.info("serving %r: %s", settings.model_name, describe(engine.model.config, engine.dim))
        app.state.batcher = Batcher(engine.encode, engine.dim, batch_tokens=batch_tokens,
                                    max_batch_size=max_batch_size, max_queue=settings.max_queue,
                                    wait_s=settings.batch_wait_ms / 1000, metrics=metrics).start()
        try:
            yield
        finally:  # uvicorn has let requests in flight finish by now
            await anyio.to_thread.run_sync(app.state.batcher.close)
            sys.setswitchinterval(switch)

    app = FastAPI(title="poolattn embeddings", lifespan=lifespan,
                  responses={s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 422, 429)})
    app.state.settings, app.state.metrics = settings, metrics

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not secrets.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def _api_error(request, err: APIError):
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {first.get('msg')}", code="invalid_json")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc[:1] + [f"[{p}]" if p.isdigit() else p for p in loc[1:]]).replace(".[", "[") or None
        kinds = "; ".join(sorted({f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
                                  for e in err.errors()}))
        return error_response(422, f"invalid request: {kinds}", field, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def _http_error(request, err: HTTPException):
        message = f"no route {request.method} {request.url.path}" if err.status_code == 404 else err.detail
        return error_response(err.status_code, str(message), headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request, err: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal server error", code="internal_error")

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, dependencies=[Depends(check_key)])
    async def embeddings(req: EmbeddingRequest, request: Request):
        if req.model != settings.model_name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves {settings.model_name!r}",
                           "model", "model_not_found")
        inputs = _inputs(req, settings, engine)
        instruction = settings.instruction if req.instruction is None else req.instruction
        truncate = settings.truncate if req.truncate is None else req.truncate
        try:
            ids = await anyio.to_thread.run_sync(engine.token_ids, inputs, instruction or None, truncate)
        except InputTooLong as err:
            raise APIError(400, str(err), "input", "context_length_exceeded") from None
        try:
            future = request.app.state.batcher.submit(ids, [len(x) for x, _ in ids])
        except QueueFull as err:
            raise APIError(429, str(err), code="queue_full") from None
        vectors = await _until_done_or_gone(request, future)
        if vectors is None:
            return Response(status_code=499)  # nobody is listening; counted in the metrics only
        vectors = truncate_dims(vectors, req.dimensions)
        headers = {}
        if req.dimensions is not None:  # a trained width, or a plain truncation: said on every such response
            trained = is_trained_width(engine.model.config, engine.dim, req.dimensions)
            headers[DIMENSIONS_HEADER] = "trained" if trained else "untrained"
            if not trained and req.dimensions not in untrained_seen:
                untrained_seen.add(req.dimensions)
                log.warning("dimensions=%d is not a width %r was trained at (%s): answered by plain truncation; "
                            "response header %s: untrained", req.dimensions, settings.model_name,
                            ", ".join(map(str, trained_widths(engine.model.config, engine.dim) or [engine.dim])),
                            DIMENSIONS_HEADER)
        n_tokens = sum(len(x) for x, _ in ids)
        data = [Embedding(index=i, embedding=e) for i, e in enumerate(_encode_vectors(vectors, req.encoding_format))]
        body = EmbeddingResponse(data=data, model=settings.model_name,
                                 usage=Usage(prompt_tokens=n_tokens, total_tokens=n_tokens))
        # Serialised by pydantic-core (Rust) straight to bytes: FastAPI's own path (validate against
        # response_model again, jsonable_encoder, json.dumps) holds the GIL for milliseconds per response, and
        # every millisecond the event loop holds it the inference thread waits between two torch ops.
        return Response(body.model_dump_json(), media_type="application/json", headers=headers)

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(check_key)])
    async def models():
        return ModelList(data=[ModelCard(id=settings.model_name, created=created, dimensions=engine.dim,
                                         matryoshka_dimensions=trained_widths(engine.model.config, engine.dim))])

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "queued_inputs": app.state.batcher.outstanding}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, metrics=metrics, max_body=settings.max_body_bytes)
    return app
