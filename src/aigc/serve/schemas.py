"""Request bodies of the OpenAI-compatible API (pydantic), with the limits and checks the server applies.

Field names, types and defaults follow OpenAI's API reference. ``top_k``, ``min_p``,
``repetition_penalty`` and ``ignore_eos`` are extensions (as in vLLM). Fields the server does not implement are either
ignored with a logged warning (``IGNORED``: they do not change what the model writes) or rejected
with a 400 (``REJECTED``: ignoring them would silently change the meaning of the request).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "modalities", "prediction", "audio",
           "reasoning_effort", "web_search_options", "safety_identifier", "prompt_cache_key"}
REJECTED = {"echo": "echo", "suffix": "suffix", "logit_bias": "logit_bias", "tools": "tool calls",
            "tool_choice": "tool calls", "functions": "function calls", "function_call": "function calls",
            "response_format": "structured output", "best_of": "best_of"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    top_k: int | None = Field(None, ge=1)
    min_p: float = Field(0.0, ge=0, lt=1)
    repetition_penalty: float = Field(1.0, gt=0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty")
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class ImageRequest(BaseModel):
    """OpenAI's image generation body; ``seed`` and ``guidance`` (classifier-free guidance) are extensions."""

    model_config = ConfigDict(extra="allow")
    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json"] = "b64_json"
    seed: int | None = None
    guidance: float = Field(1.0, ge=0, le=20)
