"""The OpenAI-compatible HTTP API (FastAPI): routes, streaming, errors, auth, limits and metrics.

Every generation request becomes one :class:`~aigc.serve.scheduler.Request` per prompt, submitted to
the model's worker; the worker thread's events are moved onto the event loop with
``call_soon_threadsafe`` and turned into OpenAI-shaped JSON, or into server-sent events when
``stream`` is set. Errors always use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources

from fastapi import Depends, FastAPI, HTTPException, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aigc.errors import AigcError
from aigc.generate.sampling import SamplingParams
from aigc.images.pixels import upscale
from aigc.serve.metrics import Metrics
from aigc.serve.scheduler import Busy, Event, Request
from aigc.serve.schemas import IGNORED, REJECTED, ChatRequest, CompletionRequest, ImageRequest, Message, SamplingFields
from aigc.serve.workers import ServedModel

log = logging.getLogger("aigc.serve")
CHAT_STOP = "\nUser:"


@dataclass
class ServeSettings:
    """Limits and security of one server (``aigc serve --help`` documents each)."""

    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_000_000
    max_n: int = 8
    max_tokens: int | None = None  # per request; default: the model's context
    timeout_s: float = 600.0
    ping_interval_s: float = 5.0


class ApiError(Exception):
    """An error answered in OpenAI's envelope."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def png_base64(image) -> str:
    """(H, W, 3) uint8 -> base64 of its PNG file."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def render_chat(messages: list[Message]) -> str:
    """The plain default chat template: one "Role: text" line per message, then "Assistant:"."""
    lines = [f"{'System' if m.role in ('system', 'developer') else m.role.capitalize()}: {m.text}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None


class BodyLimit:
    """ASGI middleware: 413 when a request body is larger than ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = error_response(413, f"the request body is larger than {self.limit:,} bytes", code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_large(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # FastAPI passes HTTPException through while reading the body
                raise HTTPException(413, f"the request body is larger than {self.limit:,} bytes")
            return message

        return await self.app(scope, counted, send)


def create_app(models: list[ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``models`` (their workers must be started by the caller)."""
    settings = settings or ServeSettings()
    by_id = {m.id: m for m in models}
    metrics = Metrics(models)
    app = FastAPI(title="aigc", version="1", docs_url="/docs", redoc_url=None)
    app.state.draining = False
    app.state.ready = True
    app.state.metrics = metrics
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Request-Id"])

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")  # added last, so outermost: every response gets an id, 413s included
    async def request_id(request: HttpRequest, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-Id"] = rid
        return response


    @app.exception_handler(ApiError)
    async def on_api_error(_: HttpRequest, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.type, err.param, err.code, err.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: HttpRequest, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}",
                                  code="invalid_json")
        location = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(location) or None
        message = first.get("msg", "invalid request")
        return error_response(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: HttpRequest, err: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(err.status_code, str(err.detail), type_, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def on_crash(_: HttpRequest, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {err}", "server_error")

    def authorize(request: HttpRequest) -> None:
        if not settings.api_keys:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not any(hmac.compare_digest(given.encode(), key.encode()) for key in settings.api_keys):
            raise ApiError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                           "authentication_error", code="invalid_api_key")

    def served(name: str | None, param: str = "model") -> ServedModel:
        if name in by_id:
            return by_id[name]
        raise ApiError(404, f"the model '{name}' does not exist; GET /v1/models lists {', '.join(by_id)}",
                       "not_found_error", param, "model_not_found")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", dependencies=[Depends(authorize)])
    async def ready() -> JSONResponse:
        if app.state.draining or not app.state.ready:
            return error_response(503, "draining" if app.state.draining else "loading", "unavailable",
                                  headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "models": list(by_id)})

    @app.get("/metrics", dependencies=[Depends(authorize)])
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(resources.files("aigc.serve").joinpath("playground.html").read_text(encoding="utf-8"))

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict:
        return {"object": "list", "data": [
            {"id": m.id, "object": "model", "created": m.created, "owned_by": "aigc", "kind": m.kind, "context": m.context}
            for m in models]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(authorize)])
    async def get_model(model_id: str) -> dict:
        m = served(model_id)
        return {"id": m.id, "object": "model", "created": m.created, "owned_by": "aigc", "kind": m.kind, "context": m.context}

    def text_model(name: str) -> ServedModel:
        model = served(name)
        if model.kind == "image":
            raise ApiError(400, f"'{model.id}' is an image model; use POST /v1/images/generations", param="model",
                           code="not_a_text_model")
        return model

    def check_fields(body: SamplingFields) -> None:
        for name in body.unknown_fields():
            if name in REJECTED and (body.model_extra or {}).get(name) not in (None, False, "", [], {}):
                raise ApiError(400, f"'{name}' ({REJECTED[name]}) is not supported by this server", param=name,
                               code="unsupported_parameter")
            log.warning("ignoring unsupported field '%s'%s", name, "" if name in IGNORED else " (unknown)")
        if body.n > settings.max_n:
            raise ApiError(400, f"n={body.n} is above this server's limit of {settings.max_n}", param="n")

    def sampling(body: SamplingFields, model: ServedModel, prompt_tokens: int, max_tokens: int | None,
                 logprobs: bool, stops: list[str]) -> SamplingParams:
        room = model.context - prompt_tokens
        if room < 1:
            raise ApiError(400, f"the prompt is {prompt_tokens} tokens; this model's context is {model.context}",
                           param="messages" if isinstance(body, ChatRequest) else "prompt", code="context_length_exceeded")
        limit = min(settings.max_tokens or model.context, model.context)
        wanted = max_tokens if max_tokens is not None else min(room, limit)
        if wanted > limit:
            raise ApiError(400, f"max_tokens={wanted} is above this server's limit of {limit}", param="max_tokens")
        if wanted > room and model.kind == "gpt":
            raise ApiError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({wanted}) is more than this model's "
                                f"context of {model.context} tokens; lower max_tokens or shorten the prompt",
                           param="max_tokens", code="context_length_exceeded")
        try:
            return SamplingParams(
                max_new_tokens=wanted, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                min_p=body.min_p, repetition_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty, seed=body.seed, stop=tuple(stops), logprobs=logprobs,
                ignore_eos=body.ignore_eos, truncate_prompt=False)
        except AigcError as err:
            raise ApiError(400, str(err)) from err

    def encode(model: ServedModel, text: str, param: str) -> list[int]:
        if not text:
            raise ApiError(400, f"{param} is empty; give some text", param=param)
        return model.generator.tokenizer.encode(text, add_special_tokens=False).ids

    async def run(model: ServedModel, prompts: list[list[int]], params: SamplingParams, n: int, top_logprobs: int,
                  ) -> tuple[list[Request], asyncio.Queue]:
        """Submit one request per prompt; their events (tagged with the choice index) arrive on the queue."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def sink_for(offset: int) -> Callable[[Event], None]:
            def sink(event: Event) -> None:
                event.index += offset
                loop.call_soon_threadsafe(queue.put_nowait, event)
            return sink

        requests = [Request(ids, params, sink_for(i * n), n, top_logprobs, settings.timeout_s)
                    for i, ids in enumerate(prompts)]
        submitted = []
        try:
            for request in requests:
                model.worker.submit(request)
                submitted.append(request)
        except Busy as err:
            for request in submitted:
                model.worker.cancel(request)
            status = 503 if err.draining else 429
            raise ApiError(status, str(err), "unavailable" if err.draining else "rate_limit_error",
                           code="server_draining" if err.draining else "queue_full",
                           headers={"Retry-After": str(err.retry_after)}) from err
        except AigcError as err:
            raise ApiError(400, str(err)) from err
        metrics.started(model.id, sum(map(len, prompts)))
        return requests, queue

    async def events(model: ServedModel, requests: list[Request], queue: asyncio.Queue, choices: int,
                     ping: bool = False) -> AsyncIterator[Event | None]:
        """Events until every choice finished; None when ``ping`` and nothing came for a while."""
        open_, started, last = choices, time.monotonic(), None
        try:
            while open_:
                try:
                    event = await asyncio.wait_for(queue.get(), settings.ping_interval_s) if ping else await queue.get()
                except asyncio.TimeoutError:
                    yield None
                    continue
                now = time.monotonic()
                if event.token is not None or event.text:
                    metrics.token(model.id, now - started if last is None else None, None if last is None else now - last)
                    last = now
                if event.finish_reason or event.error:
                    open_ -= 1
                    metrics.finished(model.id, event.finish_reason or "error")
                yield event
        finally:
            for request in requests:
                if open_:
                    model.worker.cancel(request)
            metrics.completed(model.id, time.monotonic() - started, sum(r.completion_tokens for r in requests))

    def token_text(model: ServedModel, token: int) -> str:
        return model.generator.decode([token])

    def usage(prompts: list[list[int]], requests: list[Request]) -> dict:
        prompt = sum(map(len, prompts))
        completion = sum(r.completion_tokens for r in requests)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def collect(model, requests, queue, choices: int) -> list[Choice]:
        results = [Choice() for _ in range(choices)]
        async for event in events(model, requests, queue, choices):
            if event.error:
                raise ApiError(504 if event.timed_out else 500, event.error, "timeout" if event.timed_out else "server_error")
            choice = results[event.index]
            choice.text.append(event.text)
            if event.token is not None and event.logprob is not None:
                choice.tokens.append(event.token)
                choice.logprobs.append(event.logprob)
                choice.top.append(event.top_logprobs or [])
            choice.finish_reason = event.finish_reason or choice.finish_reason
        return results

    def completion_logprobs(model: ServedModel, tokens, logprobs, tops, offset: int) -> dict:
        texts = [token_text(model, t) for t in tokens]
        offsets, at = [], offset
        for text in texts:
            offsets.append(at)
            at += len(text)
        return {"tokens": texts, "token_logprobs": list(logprobs), "text_offset": offsets,
                "top_logprobs": [{token_text(model, t): lp for t, lp in top} for top in tops]}

    def chat_logprobs(model: ServedModel, tokens, logprobs, tops) -> dict:
        def entry(t: int, lp: float) -> dict:
            text = token_text(model, t)
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
        return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in top]}
                            for t, lp, top in zip(tokens, logprobs, tops)]}

    def sse(payload: dict | str) -> bytes:
        return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    async def stream_events(model, requests, queue, choices: int) -> AsyncIterator[Event | bytes]:
        """A stream's events; keep-alive pings and errors come already as SSE bytes (an error chunk, then on)."""
        async for event in events(model, requests, queue, choices, ping=True):
            if event is None:
                yield b": ping\n\n"
            elif event.error:
                yield sse({"error": {"message": event.error, "type": "server_error", "param": None, "code": None}})
            else:
                yield event

    def streaming(body_iter: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(body_iter, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest):
        model = text_model(body.model)
        check_fields(body)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        prompts = [encode(model, text, "prompt") for text in texts]
        want_logprobs = body.logprobs is not None
        params = sampling(body, model, max(map(len, prompts)), body.max_tokens, want_logprobs, body.stop)
        requests, queue = await run(model, prompts, params, body.n, body.logprobs or 0)
        rid, created, choices = f"cmpl-{uuid.uuid4().hex}", int(time.time()), len(prompts) * body.n
        head = {"id": rid, "object": "text_completion", "created": created, "model": model.id}
        if not body.stream:
            results = await collect(model, requests, queue, choices)
            return {**head, "choices": [
                {"index": i, "text": "".join(c.text), "finish_reason": c.finish_reason,
                 "logprobs": completion_logprobs(model, c.tokens, c.logprobs, c.top, 0) if want_logprobs else None}
                for i, c in enumerate(results)], "usage": usage(prompts, requests)}

        async def stream() -> AsyncIterator[bytes]:
            offsets = [0] * choices
            async for event in stream_events(model, requests, queue, choices):
                if isinstance(event, bytes):
                    yield event
                    continue
                logprobs = None
                if want_logprobs and event.token is not None:
                    logprobs = completion_logprobs(model, [event.token], [event.logprob],
                                                   [event.top_logprobs or []], offsets[event.index])
                offsets[event.index] += len(event.text)
                if event.text or logprobs or event.finish_reason:
                    yield sse({**head, "choices": [{"index": event.index, "text": event.text, "logprobs": logprobs,
                                                    "finish_reason": event.finish_reason}]})
            if body.stream_options and body.stream_options.include_usage:
                yield sse({**head, "choices": [], "usage": usage(prompts, requests)})
            yield sse("[DONE]")

        return streaming(stream())

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat(body: ChatRequest):
        model = text_model(body.model)
        check_fields(body)
        if model.kind == "seq2seq":  # a translation model translates the last user message
            text = next((m.text for m in reversed(body.messages) if m.role == "user"), "")
            stops = body.stop
        else:
            text, stops = render_chat(body.messages), [*body.stop, CHAT_STOP]
        prompt = encode(model, text, "messages")
        params = sampling(body, model, len(prompt), body.max_completion_tokens or body.max_tokens, body.logprobs, stops)
        requests, queue = await run(model, [prompt], params, body.n, body.top_logprobs or 0 if body.logprobs else 0)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion", "created": created, "model": model.id}
        if not body.stream:
            results = await collect(model, requests, queue, body.n)
            return {**head, "choices": [
                {"index": i, "message": {"role": "assistant", "content": "".join(c.text)},
                 "logprobs": chat_logprobs(model, c.tokens, c.logprobs, c.top) if body.logprobs else None,
                 "finish_reason": c.finish_reason} for i, c in enumerate(results)], "usage": usage([prompt], requests)}

        chunk_head = {**head, "object": "chat.completion.chunk"}

        async def stream() -> AsyncIterator[bytes]:
            for i in range(body.n):
                yield sse({**chunk_head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}]})
            async for event in stream_events(model, requests, queue, body.n):
                if isinstance(event, bytes):
                    yield event
                    continue
                logprobs = None
                if body.logprobs and event.token is not None:
                    logprobs = chat_logprobs(model, [event.token], [event.logprob], [event.top_logprobs or []])
                if event.text or logprobs:
                    yield sse({**chunk_head, "choices": [{"index": event.index, "delta": {"content": event.text},
                                                          "logprobs": logprobs, "finish_reason": None}]})
                if event.finish_reason:
                    yield sse({**chunk_head, "choices": [{"index": event.index, "delta": {}, "logprobs": None,
                                                          "finish_reason": event.finish_reason}]})
            if body.stream_options and body.stream_options.include_usage:
                yield sse({**chunk_head, "choices": [], "usage": usage([prompt], requests)})
            yield sse("[DONE]")

        return streaming(stream())

    @app.post("/v1/images/generations", dependencies=[Depends(authorize)])
    async def images(body: ImageRequest):
        image_models = [m for m in models if m.kind == "image"]
        name = body.model or (image_models[0].id if len(image_models) == 1 else None)
        if name is None:
            raise ApiError(400, "name the image model in 'model'" if image_models else "no image model is served",
                           param="model", code="model_not_found" if not image_models else None)
        model = served(name)
        if model.kind != "image":
            raise ApiError(400, f"'{model.id}' is a {model.kind} model, not an image model", param="model",
                           code="not_an_image_model")
        if body.n > settings.max_n:
            raise ApiError(400, f"n={body.n} is above this server's limit of {settings.max_n}", param="n")
        native = model.generator.side
        scale = 1
        if body.size is not None:
            match = re.fullmatch(r"(\d+)x(\d+)", body.size)
            width = int(match.group(1)) if match and match.group(1) == match.group(2) else 0
            if not width or width % native or width > 1024:
                raise ApiError(400, f"size must be square and a multiple of this model's {native}x{native} up to 1024, "
                                    f"e.g. '{native}x{native}' or '{native * 8}x{native * 8}'", param="size")
            scale = width // native
        if not body.prompt.strip():
            raise ApiError(400, "prompt is empty; describe the image", param="prompt")
        params = SamplingParams(temperature=1.0, seed=body.seed)
        try:
            drawn = await asyncio.to_thread(model.worker.draw, body.prompt, body.n, params, body.guidance)
        except Busy as err:
            raise ApiError(503, str(err), "unavailable", code="server_draining", headers={"Retry-After": "5"}) from err
        return {"created": int(time.time()), "data": [{"b64_json": png_base64(upscale(image, scale))} for image in drawn]}

    return app
