"""One handler per endpoint: the logic between a parsed request and a typed response.

A handler checks the request against the served model and the server's limits, turns it into
:class:`~aigc.generate.sampling.SamplingParams` (the request schema's one mapping), submits one worker
:class:`~aigc.serve.scheduler.Request` per prompt through a :class:`Generation`, and builds the
response: a model from :mod:`aigc.serve.responses`, or server-sent events when ``stream`` is set. It
knows nothing of routes or status codes beyond the errors it raises (:class:`ApiError`,
:class:`~aigc.serve.workers.InvalidRequest`, :class:`~aigc.serve.scheduler.Busy`).

A :class:`Generation` moves the worker thread's events onto the event loop (``call_soon_threadsafe``).
It cancels its worker requests when the client goes away: a stream when the server stops sending it,
a plain request when a poll of the connection finds it closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from fastapi.responses import Response
from pydantic import BaseModel

from aigc.errors import AigcError
from aigc.generate.grammar import GrammarError
from aigc.generate.sampling import SamplingParams
from aigc.serve.metrics import Metrics
from aigc.serve.responses import (ApiError, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                                  ChatLogprobs, ChatMessage, Completion, CompletionChoice, CompletionChunk,
                                  CompletionChunkChoice, CompletionLogprobs, Delta, ErrorBody, ErrorEnvelope,
                                  FunctionCall, ImageData, ImagesResponse, ModelCard, ModelList, TokenLogprob,
                                  ToolCallOut, TopLogprob, Usage, sse)
from aigc.serve.scheduler import Busy, Event, Request
from aigc.serve.schemas import (IGNORED, NO_OP, REJECTED, ChatRequest, CompletionRequest, ImageRequest, SamplingFields,
                                SpeechRequest)
from aigc.serve.settings import ServeSettings
from aigc.serve.tools import ToolCall, ToolUse
from aigc.serve.workers import InvalidRequest, ServedModel, TextModel

log = logging.getLogger("aigc.serve")
DISCONNECT_POLL_S = 0.1  # how often a plain (not streamed) request checks that its client is still there
Disconnected = Callable[[], Awaitable[bool]]


@dataclass
class Served:
    """What every handler shares: the models by id, the settings, the metrics, and the generations in flight."""

    models: dict[str, ServedModel]
    settings: ServeSettings
    metrics: Metrics
    live: set[Generation] = field(default_factory=set)  # changed on the event loop, read by the drain thread too
    lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, name: str | None) -> ServedModel:
        if name in self.models:
            return self.models[name]
        raise ApiError(404, f"the model '{name}' does not exist; GET /v1/models lists {', '.join(self.models)}",
                       "not_found_error", "model", "model_not_found")

    def text_model(self, name: str) -> TextModel:
        model = self.model(name)
        if not isinstance(model, TextModel):
            raise InvalidRequest(f"'{model.id}' is a {model.kind} model; use POST {model.route}", "model",
                                 "not_a_text_model")
        return model

    def model_of(self, name: str | None, api: str, noun: str, code: str) -> ServedModel:
        """The served model ``name`` if it answers ``api``; without a name, the only one that does."""
        of_kind = [m for m in self.models.values() if m.api == api]
        name = name or (of_kind[0].id if len(of_kind) == 1 else None)
        if name is None:
            raise InvalidRequest(f"name the {noun} model in 'model'" if of_kind else f"no {noun} model is served",
                                 "model", None if of_kind else "model_not_found")
        model = self.model(name)
        if model.api != api:
            raise InvalidRequest(f"'{model.id}' is a {model.kind} model, not a {noun} model", "model", code)
        return model

    def abort_all(self, message: str) -> int:
        """Fail every generation in flight with ``message`` (answered 503); callable from any thread."""
        with self.lock:
            live = list(self.live)
        for generation in live:
            generation.abort(message)
        return len(live)


@dataclass
class Choice:
    """One choice of a plain (not streamed) answer, gathered from its events."""

    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None


class Generation:
    """The worker requests of one HTTP request (one per prompt, each with ``n`` choices) and their events."""

    def __init__(self, served: Served, model: TextModel, prompts: list[list[int]], params: SamplingParams, n: int,
                 top_logprobs: int, prompt_logprobs: int | None = None, score_only: bool = False):
        self.served, self.model, self.prompts, self.choices = served, model, prompts, len(prompts) * n
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        self.requests = [Request(ids, params, self._sink(i * n), n, top_logprobs, served.settings.timeout_s,
                                 prompt_logprobs, score_only) for i, ids in enumerate(prompts)]
        self.aborted = False
        self.failure: str | None = None  # how the choices still open end once one failed: "timeout" or "error"

    def _sink(self, offset: int) -> Callable[[Event], None]:
        def sink(event: Event) -> None:  # on the worker's thread
            event.index += offset
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
            except RuntimeError:  # the event loop is closed: the server has stopped, nobody listens
                pass
        return sink

    def submit(self) -> None:
        """Queue every request, or none (raises Busy or InvalidRequest)."""
        self.model.check_queue(self.requests)
        submitted = []
        try:
            for request in self.requests:
                self.model.worker.submit(request)
                submitted.append(request)
        except Busy:
            for request in submitted:
                self.model.worker.cancel(request)
            raise
        except AigcError as err:
            for request in submitted:
                self.model.worker.cancel(request)
            raise InvalidRequest(str(err)) from err
        with self.served.lock:
            self.served.live.add(self)
        self.served.metrics.started(self.model.id, sum(map(len, self.prompts)))

    def abort(self, message: str) -> None:
        """End every open choice with an error (the server is shutting down); callable from any thread."""
        def on_loop() -> None:
            self.aborted, self.failure = True, "error"
            for request in self.requests:
                self.model.worker.cancel(request)
            for index in range(self.choices):  # choices that already ended ignore it
                self.queue.put_nowait(Event(index, error=message))
        try:
            self.loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # the event loop is closed
            pass

    def usage(self) -> Usage:
        return Usage.of(sum(map(len, self.prompts)), sum(r.completion_tokens for r in self.requests))

    async def events(self, ping: bool = False, disconnected: Disconnected | None = None) -> AsyncIterator[Event | None]:
        """Events until every choice has ended; None when ``ping`` and nothing came for ``ping_interval_s``.

        With ``disconnected``, the connection is polled while waiting and the events stop when it closed. However
        they stop, choices still open are cancelled in the worker and counted: ``cancelled`` (the client went
        away), or as the failure that ended another choice (``timeout``, ``error``).
        """
        model, metrics = self.model, self.served.metrics
        open_, started, last = set(range(self.choices)), time.monotonic(), None
        wait = self.served.settings.ping_interval_s if ping else DISCONNECT_POLL_S if disconnected else None
        polled = started
        try:
            while open_:
                try:
                    event = await asyncio.wait_for(self.queue.get(), wait)
                except asyncio.TimeoutError:
                    event = None
                if disconnected is not None and time.monotonic() - polled >= DISCONNECT_POLL_S:
                    polled = time.monotonic()
                    if await disconnected():
                        return
                if event is None:
                    if ping:
                        yield None
                    continue
                if event.index not in open_:  # a late event of a choice that already ended (after an abort)
                    continue
                now = time.monotonic()
                if event.token is not None or event.text:
                    metrics.token(model.id, now - started if last is None else None, None if last is None else now - last)
                    last = now
                if event.error:
                    self.failure = "timeout" if event.timed_out else "error"
                if event.finish_reason or event.error:
                    open_.discard(event.index)
                    metrics.finished(model.id, self.failure if event.error else event.finish_reason)
                yield event
        finally:
            if open_:
                for request in self.requests:
                    model.worker.cancel(request)
                metrics.finished(model.id, self.failure or "cancelled", len(open_))
            with self.served.lock:
                self.served.live.discard(self)
            metrics.completed(model.id, time.monotonic() - started, sum(r.completion_tokens for r in self.requests))

    async def collect(self, disconnected: Disconnected) -> list[Choice] | None:
        """Every choice, whole; None when the client went away first. An error event raises."""
        results = [Choice() for _ in range(self.choices)]
        async with aclosing(self.events(disconnected=disconnected)) as events:
            async for event in events:
                if event.error and self.aborted:
                    raise ApiError(503, event.error, "unavailable", code="server_draining", headers={"Retry-After": "5"})
                if event.error:
                    raise ApiError(504 if event.timed_out else 500, event.error,
                                   "timeout" if event.timed_out else "server_error")
                choice = results[event.index]
                choice.text.append(event.text)
                if event.token is not None and event.logprob is not None:
                    choice.tokens.append(event.token)
                    choice.logprobs.append(event.logprob)
                    choice.top.append(event.top_logprobs or [])
                choice.finish_reason = event.finish_reason or choice.finish_reason
        return None if any(c.finish_reason is None for c in results) else results

    async def stream(self, opening: list[BaseModel], chunks: Callable[[Event], list[BaseModel]],
                     closing: BaseModel | None) -> AsyncIterator[bytes]:
        """The server-sent events of a stream: ``opening``, the ``chunks`` of each event (keep-alive pings while
        quiet; an error as an error chunk), ``closing`` (with the usage, built at the end), then ``[DONE]``."""
        for chunk in opening:
            yield sse(chunk)
        async with aclosing(self.events(ping=True)) as events:
            async for event in events:
                if event is None:
                    yield b": ping\n\n"
                elif event.error:
                    yield sse(ErrorEnvelope(error=ErrorBody(message=event.error, type="server_error", param=None,
                                                            code=None)))
                else:
                    for chunk in chunks(event):
                        yield sse(chunk)
        if closing is not None:
            closing.usage = self.usage()
            yield sse(closing)
        yield sse("[DONE]")


def check_fields(body: SamplingFields, max_n: int) -> None:
    """Refuse fields whose meaning the server would silently change, log the ignored ones, bound ``n``."""
    for name in body.unknown_fields():
        if name in REJECTED:
            if (body.model_extra or {}).get(name) not in NO_OP:
                raise InvalidRequest(f"'{name}' ({REJECTED[name]}) is not supported by this server", name,
                                     "unsupported_parameter")
            continue  # a value that asks for nothing: served as asked
        log.warning("ignoring unsupported field %r%s", name, "" if name in IGNORED else " (unknown)")
    if body.n > max_n:
        raise InvalidRequest(f"n={body.n} is above this server's limit of {max_n}", "n")


def sampling(body: SamplingFields, model: TextModel, max_new_tokens: int, extra_stops: list[str],
             logprobs: bool, echo: bool = False, tool_use: ToolUse | None = None) -> SamplingParams:
    """The request's params, checked against what ``model`` can honour (a grammar compiled once); a required
    tool call shapes the reply with its own grammar."""
    asked = None
    try:
        params = body.sampling_params(model.defaults, max_new_tokens, extra_stops, logprobs)
        asked = body.grammar()
        if tool_use is not None and (calls := tool_use.grammar()) is not None:
            if asked is not None:
                raise InvalidRequest(f"a required tool call and {asked[1]} cannot both shape the reply", "tool_choice")
            params, asked = replace(params, grammar=calls), (calls, "tools")
        model.check_request(params, echo)
    except GrammarError as err:
        raise InvalidRequest(str(err), asked[1] if asked else None, "invalid_grammar") from err
    except InvalidRequest:
        raise
    except AigcError as err:
        raise InvalidRequest(str(err)) from err
    return params


def completion_logprobs(model: TextModel, tokens, logprobs, tops, offset: int) -> CompletionLogprobs:
    """Legacy completions' logprobs of ``tokens`` whose text starts at ``offset``; a None log-probability (an
    echoed prompt's first token) has None alternatives too."""
    texts = [model.token_text(t) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return CompletionLogprobs(tokens=texts, token_logprobs=list(logprobs), text_offset=offsets,
                              top_logprobs=[None if lp is None else {model.token_text(t): v for t, v in top}
                                            for lp, top in zip(logprobs, tops)])


def echoed_logprobs(model: TextModel, request: Request) -> CompletionLogprobs:
    """The logprobs of an echoed prompt: its first token has none (nothing predicts it), each other its score."""
    scores = request.prompt_scores or []
    return completion_logprobs(model, request.prompt, [None, *(s.logprob for s in scores)],
                               [[], *(s.top for s in scores)], 0)


def joined(first: CompletionLogprobs, then: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(**{name: getattr(first, name) + getattr(then, name)
                                 for name in CompletionLogprobs.model_fields})


def chat_logprobs(model: TextModel, tokens, logprobs, tops) -> ChatLogprobs:
    def entry(t: int, lp: float) -> dict:
        text = model.token_text(t)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return ChatLogprobs(content=[TokenLogprob(**entry(t, lp), top_logprobs=[TopLogprob(**entry(a, b)) for a, b in top])
                                 for t, lp, top in zip(tokens, logprobs, tops)])


def tool_calls_out(calls: list[ToolCall], indexed: bool = False) -> list[ToolCallOut] | None:
    """Calls as a reply's ``tool_calls`` (None for none); ``indexed`` for a stream's delta."""
    return [ToolCallOut(index=i if indexed else None, id=call.id, function=FunctionCall(name=call.name,
                                                                                       arguments=call.arguments))
            for i, call in enumerate(calls)] or None


class CompletionsHandler:
    """POST /v1/completions: continue each prompt ``n`` times."""

    def __init__(self, served: Served):
        self.served = served

    async def __call__(self, body: CompletionRequest, disconnected: Disconnected,
                       ) -> Completion | AsyncIterator[bytes] | None:
        model = self.served.text_model(body.model)
        check_fields(body, self.served.settings.max_n)
        score_only = body.max_tokens == 0
        if score_only and not body.echo:
            raise InvalidRequest("max_tokens=0 generates nothing; set echo (with logprobs) to score the prompt",
                                 "max_tokens")
        if body.echo and body.stream:
            raise InvalidRequest("echo is not supported with stream; send the request without stream", "echo")
        model.check_prompt_count(len(body.prompts))
        prompts = await asyncio.to_thread(lambda: [model.prompt_ids(prompt) for prompt in body.prompts])
        want_logprobs = body.logprobs is not None
        if score_only:  # nothing is generated (params need a token limit: one): the prompts must fit the context
            wanted = 1
            if (longest := max(map(len, prompts))) > model.context:
                raise InvalidRequest(f"the prompt is {longest} tokens; this model's context is {model.context}",
                                     "prompt", "context_length_exceeded")
        else:
            wanted = model.new_tokens(max(map(len, prompts)), body.max_tokens, self.served.settings.max_tokens,
                                      model.defaults.max_new_tokens, "prompt")
        # off the event loop: a grammar's first use reads the vocabulary, and a large schema takes a while to compile
        params = await asyncio.to_thread(sampling, body, model, wanted, [], want_logprobs, body.echo)
        generation = Generation(self.served, model, prompts, params, body.n, body.logprobs or 0,
                                body.logprobs if body.echo and want_logprobs else None, score_only)
        generation.submit()
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model.id}
        if body.stream:
            offsets = [0] * generation.choices

            def chunks(event: Event) -> list[CompletionChunk]:
                logprobs = None
                if want_logprobs and event.token is not None:
                    logprobs = completion_logprobs(model, [event.token], [event.logprob], [event.top_logprobs or []],
                                                   offsets[event.index])
                offsets[event.index] += len(event.text)
                if not (event.text or logprobs or event.finish_reason):
                    return []
                return [CompletionChunk(**head, choices=[CompletionChunkChoice(
                    index=event.index, text=event.text, logprobs=logprobs, finish_reason=event.finish_reason)])]

            usage = body.stream_options and body.stream_options.include_usage
            return generation.stream([], chunks, CompletionChunk(**head, choices=[]) if usage else None)
        results = await generation.collect(disconnected)
        if results is None:
            return None
        echoed = [model.generator.decode(ids) if body.echo else "" for ids in prompts]
        choices = []
        for i, c in enumerate(results):
            request, prompt_text = generation.requests[i // body.n], echoed[i // body.n]
            logprobs = None
            if want_logprobs:
                logprobs = completion_logprobs(model, c.tokens, c.logprobs, c.top, len(prompt_text))
                if body.echo:
                    logprobs = joined(echoed_logprobs(model, request), logprobs)
            choices.append(CompletionChoice(index=i, text=prompt_text + "".join(c.text), finish_reason=c.finish_reason,
                                            logprobs=logprobs))
        return Completion(**head, usage=generation.usage(), choices=choices)


class ChatHandler:
    """POST /v1/chat/completions: the served model turns the messages into a prompt and answers ``n`` times.

    With ``tools`` a reply may be calls (:mod:`aigc.serve.tools`): it is read as a whole, so a stream then holds
    each choice's text and sends its words and calls when it ends."""

    def __init__(self, served: Served):
        self.served = served

    async def __call__(self, body: ChatRequest, disconnected: Disconnected,
                       ) -> ChatCompletion | AsyncIterator[bytes] | None:
        model = self.served.text_model(body.model)
        check_fields(body, self.served.settings.max_n)
        tool_use = ToolUse.of(body, model.chat_template)
        text, stops = model.chat_prompt(body.messages, tool_use.template_tools if tool_use else None)
        prompt = await asyncio.to_thread(model.encode, text, "messages")
        wanted = model.new_tokens(len(prompt), body.max_completion_tokens or body.max_tokens,
                                  self.served.settings.max_tokens, model.defaults.max_new_tokens, "messages")
        params = await asyncio.to_thread(sampling, body, model, wanted, stops, body.logprobs, tool_use=tool_use)
        generation = Generation(self.served, model, [prompt], params, body.n,
                                body.top_logprobs or 0 if body.logprobs else 0)
        generation.submit()
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model.id}
        if body.stream:
            def chunk(choice: ChatChunkChoice) -> ChatCompletionChunk:
                return ChatCompletionChunk(**head, choices=[choice])

            held = [""] * body.n  # with tools: each choice's text, read when it ends

            def chunks(event: Event) -> list[ChatCompletionChunk]:
                logprobs = None
                if body.logprobs and event.token is not None:
                    logprobs = chat_logprobs(model, [event.token], [event.logprob], [event.top_logprobs or []])
                out, finish = [], event.finish_reason
                if tool_use is not None:
                    held[event.index] += event.text
                    if finish:
                        words, calls = tool_use.parse(held[event.index])
                        out.append(chunk(ChatChunkChoice(index=event.index, delta=Delta(
                            content=words, tool_calls=tool_calls_out(calls, indexed=True)))))
                        finish = "tool_calls" if calls else finish
                elif event.text or logprobs:
                    out.append(chunk(ChatChunkChoice(index=event.index, delta=Delta(content=event.text), logprobs=logprobs)))
                if finish:
                    out.append(chunk(ChatChunkChoice(index=event.index, delta=Delta(), finish_reason=finish)))
                return out

            opening = [chunk(ChatChunkChoice(index=i, delta=Delta(role="assistant", content=""))) for i in range(body.n)]
            usage = body.stream_options and body.stream_options.include_usage
            return generation.stream(opening, chunks, ChatCompletionChunk(**head, choices=[]) if usage else None)
        results = await generation.collect(disconnected)
        if results is None:
            return None
        choices = []
        for i, c in enumerate(results):
            words, calls = tool_use.parse("".join(c.text)) if tool_use else ("".join(c.text), [])
            choices.append(ChatChoice(
                index=i, message=ChatMessage(content=words, tool_calls=tool_calls_out(calls)),
                finish_reason="tool_calls" if calls else c.finish_reason,
                logprobs=chat_logprobs(model, c.tokens, c.logprobs, c.top) if body.logprobs else None))
        return ChatCompletion(**head, usage=generation.usage(), choices=choices)


async def drawn(served: Served, model: ServedModel, submit: Callable[[Callable[[Any], None]], Any],
                disconnected: Disconnected) -> Any:
    """Queue a job on a model's own worker (images, speech) and wait for it without holding a thread: the job,
    or None when the client went away first. As text requests are: counted in the metrics, refused while
    draining (at ``submit``), cancelled when the client goes away (a queued job is then never drawn), ended with
    a 504 past ``--timeout``, and a failed job is a 500 of its own."""
    loop, started = asyncio.get_running_loop(), time.monotonic()
    done: asyncio.Future = loop.create_future()
    job = submit(lambda job: loop.call_soon_threadsafe(lambda: done.done() or done.set_result(job)))
    served.metrics.started(model.id, 0)
    reason = "cancelled"
    try:
        while not done.done():
            try:
                await asyncio.wait_for(asyncio.shield(done), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await disconnected():
                    return None
                if time.monotonic() - started > served.settings.timeout_s:
                    reason = "timeout"
                    raise ApiError(504, f"the request passed its deadline of {served.settings.timeout_s:g} s",
                                   "timeout") from None
        reason = "error" if job.error is not None else "stop"
    finally:
        job.cancelled = True  # a job still queued is skipped; one drawing finishes, unread
        served.metrics.finished(model.id, reason)
        served.metrics.completed(model.id, time.monotonic() - started, 0)
    if job.error is not None:
        raise ApiError(500, job.error, "server_error")
    return job


class ImagesHandler:
    """POST /v1/images/generations: ``n`` images of the prompt, as base64 PNG, at the size asked."""

    def __init__(self, served: Served):
        self.served = served

    async def __call__(self, body: ImageRequest, disconnected: Disconnected) -> ImagesResponse | None:
        model = self.served.model_of(body.model, "images", "image", "not_an_image_model")
        if body.n > self.served.settings.max_n:
            raise InvalidRequest(f"n={body.n} is above this server's limit of {self.served.settings.max_n}", "n")
        scale = model.image_scale(body.size)
        if not body.prompt.strip():
            raise InvalidRequest("prompt is empty; describe the image", "prompt")
        try:
            params, guidance = body.sampling_params(model.defaults)
        except AigcError as err:
            raise InvalidRequest(str(err)) from err
        job = await drawn(self.served, model, lambda finished: model.submit(body.prompt, body.n, params, guidance,
                                                                              finished), disconnected)
        if job is None:
            return None
        pngs = await asyncio.to_thread(model.pngs, job.images, scale)
        return ImagesResponse(created=int(time.time()), data=[ImageData(b64_json=png) for png in pngs])


class SpeechHandler:
    """POST /v1/audio/speech: the input said in the voice asked, as WAV (16 kHz) or raw PCM (24 kHz, as OpenAI's)."""

    def __init__(self, served: Served):
        self.served = served

    async def __call__(self, body: SpeechRequest, disconnected: Disconnected) -> Response | None:
        model = self.served.model_of(body.model, "speech", "speech", "not_a_speech_model")
        utterance = model.utterance(body.input, body.voice, body.speed)  # too long, for instance: 400 before queueing
        try:
            params, guidance = body.sampling_params(model.defaults)
        except AigcError as err:
            raise InvalidRequest(str(err), "input") from err
        job = await drawn(self.served, model, lambda finished: model.submit(utterance, params, guidance, finished),
                          disconnected)
        if job is None:
            return None
        audio, media_type = await asyncio.to_thread(model.encode, job.wave, body.response_format)
        return Response(audio, media_type=media_type)


class ModelsHandler:
    """GET /v1/models and /v1/models/{id}: each served run, its kind, context and sampling defaults."""

    def __init__(self, served: Served):
        self.served = served

    @staticmethod
    def card(model: ServedModel) -> ModelCard:
        return ModelCard(id=model.id, created=model.created, kind=model.kind, context=model.context,
                         defaults=model.defaults.model_dump(mode="json"), voices=model.voices)

    def list(self) -> ModelList:
        return ModelList(data=[self.card(m) for m in self.served.models.values()])

    def get(self, model_id: str) -> ModelCard:
        return self.card(self.served.model(model_id))


@dataclass
class Handlers:
    """Every endpoint's handler, built once per app."""

    served: Served
    completions: CompletionsHandler = field(init=False)
    chat: ChatHandler = field(init=False)
    images: ImagesHandler = field(init=False)
    speech: SpeechHandler = field(init=False)
    models: ModelsHandler = field(init=False)

    def __post_init__(self) -> None:
        self.completions, self.chat = CompletionsHandler(self.served), ChatHandler(self.served)
        self.images, self.models = ImagesHandler(self.served), ModelsHandler(self.served)
        self.speech = SpeechHandler(self.served)
