"""Response bodies of the OpenAI-compatible API (pydantic), and the error envelope.

Field names follow the ``openai`` package's own types (``openai.types.Completion``,
``openai.types.chat.ChatCompletion`` / ``ChatCompletionChunk``, ``openai.types.ImagesResponse``); the
fields are declared in the order the server has always written them, and a field is left out of the
JSON only where it always was (``usage`` of a stream chunk that is not the last).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field



def _absent_when_none(value) -> bool:
    return value is None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class CompletionLogprobs(BaseModel):
    """Per token: its text, log-probability, offset in the choice's text and the most likely alternatives; an
    echoed prompt's first token has no log-probability (None) and no alternatives."""

    tokens: list[str]
    token_logprobs: list[float | None]
    text_offset: list[int]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None


class CompletionChunkChoice(BaseModel):  # the same fields as CompletionChoice, in the order streams have used
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(BaseModel):
    """One event of a streamed completion; the last one (with ``stream_options.include_usage``) has ``usage``."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = Field(None, exclude_if=_absent_when_none)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON


class ToolCallOut(BaseModel):
    """A call in a reply; in a stream chunk, ``index`` says which call a delta belongs to."""

    index: int | None = Field(None, exclude_if=_absent_when_none)
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=_absent_when_none)


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=_absent_when_none)
    content: str | None = Field(None, exclude_if=_absent_when_none)
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=_absent_when_none)


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, exclude_if=_absent_when_none)


class ImageData(BaseModel):
    b64_json: str


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class ModelCard(BaseModel):
    """An entry of ``GET /v1/models``: OpenAI's fields, then the model's kind, context, sampling defaults and, for
    a speech model, its voices."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aigc"
    kind: str
    context: int
    defaults: dict[str, Any]  # the run's generate section: the shared settings and its kind's (beams, guidance ...)
    voices: list[str] = []


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error answered in OpenAI's envelope."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    @property
    def body(self) -> ErrorEnvelope:
        return ErrorEnvelope(error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))


def sse(payload: BaseModel | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or ``data: [DONE]``) and a blank line."""
    text = payload if isinstance(payload, str) else json.dumps(payload.model_dump(), ensure_ascii=False)
    return f"data: {text}\n\n".encode()
