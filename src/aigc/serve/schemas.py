"""Request bodies of the OpenAI-compatible API (pydantic), with the limits and checks the server applies.

Field names and types follow OpenAI's API reference. ``top_k``, ``min_p``, ``repetition_penalty`` and
``ignore_eos`` are extensions (as in vLLM). Sampling fields have no default of their own: a field the
client leaves out takes the served run's ``generate`` setting (:meth:`SamplingFields.sampling_params`,
the one mapping to :class:`SamplingParams`). Fields the server does not implement are either ignored
with a logged warning (``IGNORED``: they do not change what the model writes) or rejected with a 400
(``REJECTED``: ignoring them would silently change the meaning of the request), unless they hold a value
that asks for nothing (``NO_OP``: ``tool_choice: "none"``, ``response_format: {"type": "text"}``, an empty
list, ...). Completions take prompts as text or as token ids (``[1, 2, 3]`` or ``[[1, 2], [3]]``, as
OpenAI's legacy API and lm-evaluation-harness send them).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aigc.config import GenerateConfig, MinP, NewTokens, Penalty, RepetitionPenalty, Temperature, TopK, TopP
from aigc.errors import GenerationError
from aigc.generate.grammar import Grammar
from aigc.generate.sampling import SamplingParams, sampling_params
from aigc.tasks.guidance import Guidance, GuidedGenerate

IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "modalities", "prediction", "audio",
           "reasoning_effort", "web_search_options", "safety_identifier", "prompt_cache_key"}
REJECTED = {"suffix": "suffix", "logit_bias": "logit_bias", "functions": "function calls (send tools)",
            "function_call": "function calls (send tool_choice)", "best_of": "best_of"}
NO_OP = (None, False, "", [], {}, "none", {"type": "text"})  # values of a REJECTED field that ask for nothing
MAX_STOPS = 16  # stop strings per request (OpenAI takes 4; code tasks of lm-evaluation-harness send more)
SEED_LIMIT = 2**63  # seeds are 0 <= seed < 2**63, so seed + choice index still fits torch's 64-bit seed
# The fields that become SamplingParams fields of the same name when the client sends them; an explicit null
# means "the run's default", except for top_k, where null means "no top-k".
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty")
NULL_IS_A_VALUE = ("top_k",)
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(value: str) -> str:
    """``value`` unless it holds a lone surrogate (JSON can carry "\\ud800"; no tokenizer or UTF-8 encoder can)."""
    if _SURROGATE.search(value):
        raise ValueError("the text has a lone surrogate (an unpaired \\ud800-\\udfff escape); send valid Unicode")
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = "response"
    json_schema: dict[str, Any] | bool = Field(True, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: plain text, any JSON object, or JSON that fits a schema."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema: {name, schema}")
        return self


class StructuredOutputs(BaseModel):
    """The extension for what OpenAI's API has no field for, as vLLM's ``structured_outputs``: one of a JSON
    schema, a regex, a list of choices or a Lark grammar."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | bool | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        if sum(v is not None for v in (self.json_, self.regex, self.choice, self.grammar)) != 1:
            raise ValueError("give exactly one of json, regex, choice and grammar")
        return self

    def grammar_of(self) -> Grammar:
        if self.json_ is not None:
            return Grammar.json_schema(self.json_)
        if self.regex is not None:
            return Grammar("regex", self.regex)
        if self.choice is not None:
            return Grammar.choice(self.choice)
        return Grammar("lark", self.grammar)


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: NewTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=64)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return valid_text(value)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return [valid_text(s) for s in stops]

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    def grammar(self) -> tuple[Grammar, str] | None:
        """What the output must match, and the field that asked for it (None: free text)."""
        if self.response_format is not None and self.response_format.type != "text":
            if self.structured_outputs is not None:
                raise GenerationError("give response_format or structured_outputs, not both")
            schema = self.response_format.json_schema
            return Grammar.json_schema(schema.json_schema if schema else {"type": "object"}), "response_format"
        if self.structured_outputs is not None:
            return self.structured_outputs.grammar_of(), "structured_outputs"
        return None

    def sampling_params(self, defaults: GenerateConfig, max_new_tokens: int, extra_stops: list[str] = (),
                        logprobs: bool = False) -> SamplingParams:
        """The run's ``defaults`` overridden by every sampling field the client sent (raises GenerationError)."""
        sent = self.model_fields_set
        given = {name: getattr(self, name) for name in SAMPLING_FIELDS
                 if name in sent and (getattr(self, name) is not None or name in NULL_IS_A_VALUE)}
        stops = self.stop if "stop" in sent else defaults.stop
        grammar = self.grammar()
        return sampling_params(defaults, **given, max_new_tokens=max_new_tokens, stop=(*stops, *extra_stops),
                               seed=self.seed, logprobs=logprobs, ignore_eos=self.ignore_eos, truncate_prompt=False,
                               stop_token_ids=tuple(self.stop_token_ids), grammar=grammar[0] if grammar else None)


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(SamplingFields):
    """``echo`` returns each prompt before its completion, and with ``logprobs`` scores the prompt's tokens too
    (the first has none); ``max_tokens: 0`` with ``echo`` scores the prompt and generates nothing."""

    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str] | TokenIds | list[TokenIds]) -> str | list[str] | TokenIds | list[TokenIds]:
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise ValueError("the prompt list is empty")
        for text in [value] if isinstance(value, str) else value:
            if isinstance(text, str):
                valid_text(text)
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text, or token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(BaseModel):
    """A function the model may call (OpenAI's ``tools`` entry); its parameters are a JSON schema."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionSpec


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


class CalledFunction(BaseModel):
    name: str
    arguments: str  # JSON, as OpenAI sends it


class CalledTool(BaseModel):
    """A call an assistant made earlier in the conversation."""

    model_config = ConfigDict(extra="ignore")
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[CalledTool] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message answers this call

    @field_validator("content")
    @classmethod
    def _content(cls, value: str | list[TextPart] | None) -> str | list[TextPart] | None:
        for text in [value] if isinstance(value, str) else [part.text for part in value or []]:
            valid_text(text)
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates read it: calls' arguments as objects (``apply_chat_template``'s form)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text, "tool_call_id": self.tool_call_id}
        if self.tool_calls:
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": {
                "name": call.function.name, "arguments": _json_or_text(call.function.arguments)}}
                for call in self.tool_calls]
        return message


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class GuidedFields(BaseModel):
    """The extensions of the image and speech bodies: ``seed``, ``guidance`` (classifier-free guidance) and
    ``temperature``; left out, the last two take the run's ``generate`` settings."""

    model_config = ConfigDict(extra="allow")
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    guidance: Guidance | None = None
    temperature: Temperature | None = None

    def sampling_params(self, defaults: GuidedGenerate) -> tuple[SamplingParams, float]:
        """The run's ``defaults`` with the request's seed and, when sent, temperature; and the guidance scale."""
        given = {"temperature": self.temperature} if self.temperature is not None else {}
        guidance = self.guidance if self.guidance is not None else defaults.guidance
        return sampling_params(defaults, **given, seed=self.seed), guidance


class ImageRequest(GuidedFields):
    """OpenAI's image generation body, with :class:`GuidedFields`' extensions."""

    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json"] = "b64_json"

    @field_validator("prompt", "model", "size")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return value if value is None else valid_text(value)


class SpeechRequest(GuidedFields):
    """OpenAI's text-to-speech body (``model``, ``input``, ``voice``, ``response_format``, ``speed``), with
    :class:`GuidedFields`' extensions; left out, ``voice`` and ``speed`` are the run's defaults."""

    input: str = Field(max_length=4096)
    model: str | None = None
    voice: str | None = None
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float | None = Field(None, ge=0.25, le=4.0)

    @field_validator("input", "model", "voice")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return value if value is None else valid_text(value)
