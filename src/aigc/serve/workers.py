"""What the server runs for each model, and the choices that belong to the model rather than to HTTP.

A :class:`ServedModel` is one run behind the API: its generator, the worker that owns it, the run's own
sampling defaults, and the model-specific rules: how a chat becomes a prompt, how many tokens a request may
ask for. Each kind of run hands the server its subclass (:meth:`aigc.tasks.base.Task.served_model`): the
decoder-only GPT's :class:`CompletionModel` here (text and chat runs, on the continuous-batching
:class:`~aigc.serve.scheduler.Scheduler`), the others in their own packages (``aigc.tasks.<kind>.served``).
The HTTP layer only calls these methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aigc.chat_template import ChatTemplate, ChatTemplateError
from aigc.config import GenerateConfig
from aigc.errors import AigcError
from aigc.generate.prefix_cache import PrefixCache
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.serve.scheduler import Request, Scheduler
from aigc.serve.schemas import Message
from aigc.serve.settings import ServeSettings


class InvalidRequest(AigcError):
    """A request this model cannot serve as asked (answered 400, ``param`` names the field)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class ServedModel:
    """One run behind the API: its id, generator, worker and the run's ``generate`` defaults."""

    kind: ClassVar[str]  # the label in /v1/models
    api: ClassVar[str]  # the API family it answers: "completions", "translations", "images" or "speech"
    route: ClassVar[str]  # the endpoint of that family, named in the 400 a request to another one gets
    id: str
    generator: Any  # the run's generator (aigc.tasks.load_generator)
    worker: Any  # what runs the generator: a scheduler, a queue or a lock
    defaults: GenerateConfig
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def create(cls, model_id: str, generator, defaults: GenerateConfig, settings: ServeSettings) -> ServedModel:
        """The served model with the worker that will run its generator."""
        raise NotImplementedError

    @property
    def context(self) -> int:
        """Tokens the model reads at once."""
        return self.generator.engine.block_size

    @property
    def voices(self) -> list[str]:
        """The voices it speaks in (none but for speech models)."""
        return []

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """The prompt prefixes it keeps for later prompts (a GPT on the torch backend)."""
        return None


class TextModel(ServedModel):
    """A model that writes text: completions and chat completions."""

    route = "/v1/chat/completions"

    def encode(self, text: str, param: str) -> list[int]:
        if not text:
            raise InvalidRequest(f"{param} is empty; give some text", param)
        return self.generator.tokenizer.encode(text, add_special_tokens=False).ids

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """A completion prompt's token ids: a text encoded, or ids checked against the vocabulary."""
        if isinstance(prompt, str):
            return self.encode(prompt, "prompt")
        vocab = self.generator.engine.vocab_size
        if any(token >= vocab for token in prompt):
            raise InvalidRequest(f"prompt token id {max(prompt)} is not in this model's vocabulary of {vocab} ids",
                                 "prompt")
        return list(prompt)

    def check_request(self, params: SamplingParams, echo: bool) -> None:
        """Refuse (400) what this model cannot honour as asked, rather than ignore it. ``echo``: the prompt comes
        back before the completion (scored, with ``params.logprobs``)."""

    def token_text(self, token: int) -> str:
        return self.generator.decode([token])

    def chat_prompt(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> tuple[str, list[str]]:
        """The text to continue for a chat (offering ``tools``), and stop strings to add to the request's."""
        raise NotImplementedError

    @property
    def chat_template(self) -> ChatTemplate | None:
        """How its chats become prompts (None: it does not continue chats, it answers the last message)."""
        return None

    def new_tokens(self, prompt_tokens: int, requested: int | None, server_cap: int | None, default: int,
                   param: str = "prompt") -> int:
        """How many tokens to generate: ``requested``, else ``default`` within what is left of the context.

        Raises :class:`InvalidRequest` when the prompt fills the context or ``requested`` is over the
        server's cap (``server_cap``, at most the context).
        """
        room = self.context - prompt_tokens
        if room < 1:
            raise InvalidRequest(f"the prompt is {prompt_tokens} tokens; this model's context is {self.context}",
                                 param, "context_length_exceeded")
        limit = min(server_cap or self.context, self.context)
        if requested is None:
            return min(default, room, limit)
        if requested > limit:
            raise InvalidRequest(f"max_tokens={requested} is above this server's limit of {limit}", "max_tokens")
        return requested

    def check_prompt_count(self, count: int) -> None:
        """Refuse (400) more prompts than this model's queue holds: they could never all be queued."""
        if count > self.worker.max_waiting:
            raise InvalidRequest(f"{count} prompts in one request are more than the {self.worker.max_waiting} this "
                                 "server queues; send fewer at a time", "prompt")

    def check_queue(self, requests: list[Request]) -> None:
        """Refuse (400) a set of requests that can never fit this model's queue, however long the client waits."""
        self.check_prompt_count(len(requests))


class CompletionModel(TextModel):
    """A decoder-only GPT: the prompt and the generated tokens share the context."""

    kind, api = "gpt", "completions"

    @classmethod
    def create(cls, model_id: str, generator: TextGenerator, defaults: GenerateConfig,
               settings: ServeSettings) -> CompletionModel:
        worker = Scheduler(generator, settings.max_batch, settings.max_waiting,
                           prefix_cache_bytes=int(settings.prefix_cache_mb * 2**20), prefill_chunk=settings.prefill_chunk)
        return cls(model_id, generator, worker, defaults)

    @property
    def prefix_cache(self) -> PrefixCache | None:
        return self.worker.batch.prefix_cache

    @property
    def context(self) -> int:
        """Tokens one sequence holds: the model's context, or less where the engine's slots hold less (llama.cpp's
        share of its key/value memory)."""
        return min(self.generator.engine.block_size, self.worker.batch.capacity)

    def chat_prompt(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> tuple[str, list[str]]:
        """The run's chat template (an imported model's own, else aigc's plain "Role: text" lines then
        "Assistant:", stopping at a new user line; :mod:`aigc.chat_template`)."""
        try:
            return self.generator.chat_prompt([m.for_template() for m in messages], tools)
        except ChatTemplateError as err:
            raise InvalidRequest(str(err), "messages", "invalid_chat") from None

    @property
    def chat_template(self) -> ChatTemplate:
        return self.generator.chat

    def new_tokens(self, prompt_tokens: int, requested: int | None, server_cap: int | None, default: int,
                   param: str = "prompt") -> int:
        wanted = super().new_tokens(prompt_tokens, requested, server_cap, default, param)
        if prompt_tokens + wanted > self.context:
            raise InvalidRequest(f"the prompt ({prompt_tokens} tokens) plus max_tokens ({wanted}) is more than this "
                                 f"model's context of {self.context} tokens; lower max_tokens or shorten the prompt",
                                 "max_tokens", "context_length_exceeded")
        return wanted

    def check_request(self, params: SamplingParams, echo: bool) -> None:
        """Also compile the request's grammar once (a :class:`~aigc.generate.grammar.GrammarError` names what
        the library refuses)."""
        if echo and params.logprobs and not self.worker.batch.scores_prompts:
            raise InvalidRequest("this server's backend does not score prompts (echo with logprobs); serve the run "
                                 "with --backend torch", "echo")
        if params.grammar is not None:
            self.generator.constraints.check(params.grammar)

    def check_queue(self, requests: list[Request]) -> None:
        super().check_queue(requests)
        cost, limit = sum(r.cost for r in requests), self.worker.max_waiting_tokens
        if cost > limit:
            raise InvalidRequest(f"the prompts and their max_tokens come to {cost:,} tokens, more than the {limit:,} "
                                 "this server queues; send fewer at a time", "prompt")
