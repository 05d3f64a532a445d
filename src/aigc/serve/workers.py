"""What the server runs for each model, and the choices that belong to the model rather than to HTTP.

A :class:`ServedModel` is one run behind the API: its generator, the worker that owns it (the
continuous-batching :class:`~aigc.serve.scheduler.Scheduler` for a GPT, a :class:`TranslationWorker`
for a seq2seq run, an :class:`ImageWorker` for an image run), the run's own sampling defaults, and the
model-specific rules: how a chat becomes a prompt, how many tokens a request may ask for, which image
sizes it can answer. One subclass per kind of model; the HTTP layer only calls these methods.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from aigc.config import GenerateConfig
from aigc.errors import AigcError
from aigc.chat_template import ChatTemplateError
from aigc.generate.beam import beam_params
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.tasks.pairs.translator import Translator
from aigc.serve.settings import ServeSettings
from aigc.tasks.images.generator import ImageGenerator
from aigc.tasks.speech.generator import SpeechGenerator, Utterance
from aigc.serve.scheduler import Busy, Event, QueueWorker, Request, Scheduler
from aigc.serve.schemas import Message


class InvalidRequest(AigcError):
    """A request this model cannot serve as asked (answered 400, ``param`` names the field)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class TranslationWorker(QueueWorker):
    """Encoder-decoder runs, one request at a time on one thread, in order, as ``aigc generate`` translates: with
    the run's beam search (``generate.beams`` > 1) a request's ``n`` choices are its ``n`` best hypotheses,
    otherwise its source is decoded ``n`` times (greedy or sampled)."""

    thread_name = "aigc-translate"

    def __init__(self, generator: Translator, settings: GenerateConfig, max_waiting: int = 256):
        super().__init__(max_waiting)
        self.generator, self.settings, self.active = generator, settings, None

    @property
    def running(self) -> int:
        return int(self.active is not None)

    def _loop(self) -> None:
        eot = self.generator.eot
        while True:
            with self._lock:
                while not self._stopping and not self.waiting:
                    self._lock.wait()
                if self._stopping:
                    return
                request = self.active = self.waiting.popleft()
            try:
                if request.cancelled:
                    self.cancelled += request.n
                    continue
                beam = beam_params(self.settings, request.params.max_new_tokens, n_best=request.n)
                if beam is None:
                    results = self.generator.translate_ids([request.prompt + [eot]] * request.n, request.params)
                    choices = [hypotheses[0] for hypotheses in results]
                else:
                    choices = self.generator.translate_ids([request.prompt + [eot]], request.params, beam)[0]
                for index, choice in enumerate(choices):
                    tokens = choice.tokens
                    request.completion_tokens += len(tokens)
                    finish = "length" if len(tokens) >= request.params.max_new_tokens else "stop"
                    request.sink(Event(index, text=self.generator.decode_target(tokens), finish_reason=finish))
            except Exception as err:
                for index in range(request.n):
                    request.sink(Event(index, error=f"translation failed: {err}"))
            finally:
                self.active = None


class ImageWorker:
    """Image runs: one drawing at a time (a lock), at most ``max_waiting`` queued behind it, with the counters
    the metrics read. Drawings run on the server's thread pool, so a queued one holds a pool thread."""

    def __init__(self, generator: ImageGenerator, max_waiting: int = 256):
        self.generator, self.max_waiting = generator, max_waiting
        self.draining, self.running, self.queued, self.cancelled = False, 0, 0, 0
        self._lock, self._count = threading.Lock(), threading.Lock()

    def start(self) -> None:
        """Nothing runs in the background: requests draw on the server's thread pool."""

    def stop(self) -> None:
        """Nothing to stop."""

    def draw(self, prompt: str, n: int, params, guidance: float) -> list:
        with self._count:
            if self.draining:
                raise Busy("the server is shutting down; retry on another replica", draining=True, retry_after=5)
            if self.queued >= self.max_waiting:
                raise Busy(f"the queue is full ({self.queued} requests waiting); retry later")
            self.queued += 1
        with self._lock:
            with self._count:
                self.queued -= 1
                self.running += 1
            try:
                return self.generator.generate([prompt], n, params, guidance)[0]
            finally:
                with self._count:
                    self.running -= 1


@dataclass
class SpeechJob:
    """One ``/v1/audio/speech`` request for the :class:`SpeechWorker`: what to say and how; ``finished`` is called
    on the worker's thread once ``wave`` (or ``error``) is set."""

    utterance: Utterance
    params: SamplingParams
    guidance: float
    finished: Callable[[SpeechJob], None]
    wave: np.ndarray | None = None  # (N,) float32 at 16 kHz
    error: str | None = None
    cancelled: bool = False

    def batch_key(self) -> tuple | None:
        """Jobs with equal keys are drawn in one batch; a seeded job (None) is drawn alone, so its seed alone
        decides its audio."""
        return None if self.params.seed is not None else (self.params, self.guidance)


class SpeechWorker(QueueWorker):
    """Speech runs on one thread: the jobs waiting when a batch starts that sample alike are drawn together, up
    to ``max_batch`` clips (every clip has the same number of audio tokens, so a batch starts and ends together;
    jobs that arrive meanwhile make the next one). Griffin-Lim then turns each clip into sound, off the GPT."""

    thread_name = "aigc-speech"

    def __init__(self, generator: SpeechGenerator, max_batch: int = 32, max_waiting: int = 256):
        super().__init__(max_waiting)
        self.generator, self.max_batch, self.active = generator, max_batch, 0

    @property
    def running(self) -> int:
        return self.active

    def _batch(self) -> list[SpeechJob]:
        """The next batch from the queue (called under the lock): the first job and those that sample like it."""
        first = self.waiting.popleft()
        batch, key, size = [first], first.batch_key(), first.utterance.n
        if key is not None:
            for job in list(self.waiting):
                if job.batch_key() == key and size + job.utterance.n <= self.max_batch:
                    self.waiting.remove(job)
                    batch.append(job)
                    size += job.utterance.n
        return batch

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self.waiting:
                    self._lock.wait()
                if self._stopping:
                    return
                batch = [job for job in self._batch() if not job.cancelled]
                self.active = len(batch)
            try:
                if batch:
                    codes = self.generator.codes([job.utterance for job in batch], batch[0].params, batch[0].guidance)
                    for job, clip in zip(batch, codes):
                        job.wave = self.generator.waves([clip], [job.utterance.speed])[0]
                        job.finished(job)
            except Exception as err:  # a failed batch fails its own jobs, never the worker
                for job in batch:
                    if job.wave is None:
                        job.error = f"speech generation failed: {err}"
                        job.finished(job)
            finally:
                self.active = 0


@dataclass
class ServedModel:
    """One run behind the API: its id, generator, worker and the run's ``generate`` defaults."""

    kind: ClassVar[str]  # the label in /v1/models
    api: ClassVar[str]  # the API family it answers; a run's task names it (aigc.tasks.base.Task.api)
    id: str
    generator: TextGenerator | Translator | ImageGenerator
    worker: Scheduler | TranslationWorker | ImageWorker
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


class TextModel(ServedModel):
    """A model that writes text: completions and chat completions."""

    def encode(self, text: str, param: str) -> list[int]:
        if not text:
            raise InvalidRequest(f"{param} is empty; give some text", param)
        return self.generator.tokenizer.encode(text, add_special_tokens=False).ids

    def token_text(self, token: int) -> str:
        return self.generator.decode([token])

    def chat_prompt(self, messages: list[Message]) -> tuple[str, list[str]]:
        """The text to continue for a chat, and stop strings to add to the request's."""
        raise NotImplementedError

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
        return cls(model_id, generator, Scheduler(generator, settings.max_batch, settings.max_waiting), defaults)

    @property
    def context(self) -> int:
        """Tokens one sequence holds: the model's context, or less where the engine's slots hold less (llama.cpp's
        share of its key/value memory)."""
        return min(self.generator.engine.block_size, self.worker.batch.capacity)

    def chat_prompt(self, messages: list[Message]) -> tuple[str, list[str]]:
        """The run's chat template (an imported model's own, else aigc's plain "Role: text" lines then
        "Assistant:", stopping at a new user line; :mod:`aigc.chat_template`)."""
        try:
            return self.generator.chat_prompt([{"role": m.role, "content": m.text} for m in messages])
        except ChatTemplateError as err:
            raise InvalidRequest(str(err), "messages", "invalid_chat") from None

    def new_tokens(self, prompt_tokens: int, requested: int | None, server_cap: int | None, default: int,
                   param: str = "prompt") -> int:
        wanted = super().new_tokens(prompt_tokens, requested, server_cap, default, param)
        if prompt_tokens + wanted > self.context:
            raise InvalidRequest(f"the prompt ({prompt_tokens} tokens) plus max_tokens ({wanted}) is more than this "
                                 f"model's context of {self.context} tokens; lower max_tokens or shorten the prompt",
                                 "max_tokens", "context_length_exceeded")
        return wanted

    def check_queue(self, requests: list[Request]) -> None:
        super().check_queue(requests)
        cost, limit = sum(r.cost for r in requests), self.worker.max_waiting_tokens
        if cost > limit:
            raise InvalidRequest(f"the prompts and their max_tokens come to {cost:,} tokens, more than the {limit:,} "
                                 "this server queues; send fewer at a time", "prompt")


class TranslationModel(TextModel):
    """An encoder-decoder: the source fills the encoder, the translation has a context of its own."""

    kind, api = "seq2seq", "translations"

    @classmethod
    def create(cls, model_id: str, generator: Translator, defaults: GenerateConfig,
               settings: ServeSettings) -> TranslationModel:
        return cls(model_id, generator, TranslationWorker(generator, defaults, settings.max_waiting), defaults)

    def chat_prompt(self, messages: list[Message]) -> tuple[str, list[str]]:
        """A translation model translates the last user message."""
        return next((m.text for m in reversed(messages) if m.role == "user"), ""), []

    def check_queue(self, requests: list[Request]) -> None:
        """Also refuse (400) more choices than the run's beam search keeps hypotheses."""
        super().check_queue(requests)
        beams = self.defaults.beams
        if beams > 1 and any(r.n > beams for r in requests):
            raise InvalidRequest(f"n is at most {beams} for this model: its choices are the best hypotheses of its "
                                 f"beam search (generate.beams={beams})", "n")


class ImageModel(ServedModel):
    """A caption-prefix image model: square images of ``generator.side`` pixels, upscaled on request."""

    kind, api = "image", "images"
    LARGEST = 1024

    @classmethod
    def create(cls, model_id: str, generator: ImageGenerator, defaults: GenerateConfig,
               settings: ServeSettings) -> ImageModel:
        return cls(model_id, generator, ImageWorker(generator, settings.max_waiting), defaults)

    def image_scale(self, size: str | None) -> int:
        """The integer upscale that turns the model's native images into ``size`` ("WxH"; None = native)."""
        native = self.generator.side
        if size is None:
            return 1
        match = re.fullmatch(r"(\d+)x(\d+)", size)
        width = int(match.group(1)) if match and match.group(1) == match.group(2) else 0
        if not width or width % native or width > self.LARGEST:
            raise InvalidRequest(f"size must be square and a multiple of this model's {native}x{native} up to "
                                 f"{self.LARGEST}, e.g. '{native}x{native}' or '{native * 8}x{native * 8}'", "size")
        return width // native


class SpeechModel(ServedModel):
    """A caption-prefix speech model: a clip of the run's fixed length (trailing silence cut) in one of its voices."""

    kind, api = "speech", "speech"

    @classmethod
    def create(cls, model_id: str, generator: SpeechGenerator, defaults: GenerateConfig,
               settings: ServeSettings) -> SpeechModel:
        return cls(model_id, generator, SpeechWorker(generator, settings.max_batch, settings.max_waiting), defaults)

    @property
    def voices(self) -> list[str]:
        return list(self.generator.voices)

    def voice(self, voice: str | None) -> str | None:
        """The voice asked for, checked; left out, the run's default (its ``generate.voice``, else its first). A run
        trained without voices has one voice: any name the client sends (OpenAI's require one) is that voice."""
        if not self.generator.voices:
            return None
        try:
            return self.generator.voice(voice or self.defaults.voice)
        except AigcError as err:
            raise InvalidRequest(str(err), "voice", "unknown_voice") from None


SERVED_MODELS = {served.api: served for served in (CompletionModel, TranslationModel, ImageModel, SpeechModel)}
