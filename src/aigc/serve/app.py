"""The OpenAI-compatible HTTP API (FastAPI): the application, its middleware and its error envelope.

Routes live in :mod:`aigc.serve.routes`, the logic of each endpoint in :mod:`aigc.serve.handlers`,
request and response bodies in :mod:`aigc.serve.schemas` and :mod:`aigc.serve.responses`. Errors always
use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, HTTPException
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aigc.serve.handlers import Handlers, Served
from aigc.serve.metrics import Metrics
from aigc.serve.responses import ApiError
from aigc.serve.routes import api, open_routes
from aigc.serve.scheduler import Busy
from aigc.serve.settings import ServeSettings
from aigc.serve.workers import InvalidRequest, ServedModel

log = logging.getLogger("aigc.serve")


def create_app(models: list[ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``models`` (their workers must be started by the caller)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="aigc", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.draining, app.state.ready, app.state.settings = False, True, settings
    app.state.handlers = Handlers(Served({m.id: m for m in models}, settings, Metrics(models)))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Request-Id"])
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestId)  # added last, so outermost: every response gets an id, 413s included
    for error, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(error, handler)
    app.include_router(open_routes)
    app.include_router(api)
    return app


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body.model_dump(), status_code=err.status, headers=err.headers)


async def on_api_error(_: HttpRequest, err: ApiError) -> JSONResponse:
    return error_response(err)


async def on_invalid_request(_: HttpRequest, err: InvalidRequest) -> JSONResponse:
    return error_response(ApiError(400, str(err), param=err.param, code=err.code))


async def on_busy(_: HttpRequest, err: Busy) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)}
    if err.draining:
        return error_response(ApiError(503, str(err), "unavailable", code="server_draining", headers=headers))
    return error_response(ApiError(429, str(err), "rate_limit_error", code="queue_full", headers=headers))


async def on_invalid(_: HttpRequest, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    if first.get("type") == "json_invalid":
        return error_response(ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}",
                                       code="invalid_json"))
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = first.get("msg", "invalid request")
    return error_response(ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value"))


async def on_http(_: HttpRequest, err: StarletteHTTPException) -> JSONResponse:
    type_ = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    return error_response(ApiError(err.status_code, str(err.detail), type_, headers=getattr(err, "headers", None)))


async def on_crash(_: HttpRequest, err: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return error_response(ApiError(500, f"internal error: {err}", "server_error"))


ERROR_HANDLERS = {ApiError: on_api_error, InvalidRequest: on_invalid_request, Busy: on_busy,
                  RequestValidationError: on_invalid, StarletteHTTPException: on_http, Exception: on_crash}


class RequestId:
    """ASGI middleware: every response carries ``X-Request-Id`` (the client's own, if it sent one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = dict(scope.get("headers") or []).get(b"x-request-id") or uuid.uuid4().hex.encode()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimit:
    """ASGI middleware: 413 when a request body is larger than ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        message = f"the request body is larger than {self.limit:,} bytes"
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await error_response(ApiError(413, message, code="body_too_large"))(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI passes HTTPException through while reading the body
                raise HTTPException(413, f"the request body is larger than {self.limit:,} bytes")
            return message

        return await self.app(scope, counted, send)
