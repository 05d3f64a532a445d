"""The HTTP routes: each parses its request, delegates to the endpoint's handler and maps the result.

``open_routes`` answer without an API key (liveness and the playground page); every route of ``api``
requires one when keys are set, the API schema (``/docs``, ``/openapi.json``) included.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import APIRouter, Depends
from fastapi import Request as HttpRequest
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from aigc.serve.handlers import Handlers
from aigc.serve.responses import ApiError, ChatCompletion, Completion, ImagesResponse, ModelCard, ModelList
from aigc.serve.schemas import ChatRequest, CompletionRequest, ImageRequest, SpeechRequest

CLIENT_GONE = 499  # never seen by the client; for logs (nginx's "client closed request")


def handlers(request: HttpRequest) -> Handlers:
    return request.app.state.handlers


def authorize(request: HttpRequest) -> None:
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise ApiError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'", "authentication_error",
                       code="invalid_api_key")


class EventStream(StreamingResponse):
    """Server-sent events; the event generator is closed however the response ends, so a client that goes away
    cancels its generation at once."""

    def __init__(self, events: AsyncIterator[bytes]):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                           "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def answer(result):
    """A handler's result as a response: a model as JSON, events as a stream, nothing when the client went away."""
    if result is None:
        return Response(status_code=CLIENT_GONE)
    if isinstance(result, AsyncIterator):
        return EventStream(result)
    return result


open_routes = APIRouter()
api = APIRouter(dependencies=[Depends(authorize)])


@open_routes.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@open_routes.get("/", response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    return HTMLResponse(resources.files("aigc.serve").joinpath("playground.html").read_text(encoding="utf-8"))


@api.get("/ready")
async def ready(request: HttpRequest) -> JSONResponse:
    state = request.app.state
    if state.draining or not state.ready:
        raise ApiError(503, "draining" if state.draining else "loading", "unavailable", headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "models": list(handlers(request).served.models)})


@api.get("/metrics")
async def metrics(request: HttpRequest) -> Response:
    body, content_type = handlers(request).served.metrics.render()
    return Response(body, media_type=content_type)


@api.get("/openapi.json", include_in_schema=False)
async def openapi(request: HttpRequest) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@api.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="aigc")


@api.get("/v1/models", response_model=ModelList)
async def list_models(request: HttpRequest):
    return handlers(request).models.list()


@api.get("/v1/models/{model_id}", response_model=ModelCard)
async def get_model(model_id: str, request: HttpRequest):
    return handlers(request).models.get(model_id)


@api.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, request: HttpRequest):
    return answer(await handlers(request).completions(body, request.is_disconnected))


@api.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatRequest, request: HttpRequest):
    return answer(await handlers(request).chat(body, request.is_disconnected))


@api.post("/v1/images/generations", response_model=ImagesResponse)
async def images(body: ImageRequest, request: HttpRequest):
    return answer(await handlers(request).images(body, request.is_disconnected))


@api.post("/v1/audio/speech", response_class=Response,
          responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}}, "description": "the audio"}})
async def speech(body: SpeechRequest, request: HttpRequest):
    return answer(await handlers(request).speech(body, request.is_disconnected))
