"""Continuous batching for the decoder-only GPT: requests join and leave the running batch between steps.

One background thread owns the model. Each turn it admits waiting requests into free slots (prefill
of the prompt, alone, then its keys/values are copied into the shared :class:`SlotBatch`), then runs
one decoding step for every running sequence at once. A sequence leaves as soon as it stops (stop id,
stop string, token limit, full context), is cancelled (the client went away) or passes its deadline,
and its slot is free for the next request in the same turn.

Requests talk to the thread through a ``sink`` callback that receives :class:`Event` objects (text
increments that are final, see :class:`~aigc.generate.text.TextStream`); the HTTP layer forwards them
onto its event loop. The queue is bounded by requests and by tokens, so overload is refused early
(:class:`Busy`) instead of growing latency without limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from aigc.errors import AigcError
from aigc.generate.sampling import SamplingParams, apply_penalties, choose
from aigc.generate.slots import SlotBatch
from aigc.generate.text import TextGenerator, TextStream

log = logging.getLogger(__name__)


class Busy(AigcError):
    """The server cannot take the request now: the queue is full, or it is draining."""

    def __init__(self, message: str, draining: bool = False, retry_after: int = 1):
        super().__init__(message)
        self.draining, self.retry_after = draining, retry_after


@dataclass
class Event:
    """One increment of choice ``index``; the last one of a choice has ``finish_reason`` (or ``error``)."""

    index: int
    text: str = ""
    token: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    error: str | None = None
    timed_out: bool = False  # the error is the request's deadline, not a failure


@dataclass
class Request:
    """A prompt (token ids) to continue ``n`` times; ``sink`` receives its events from the scheduler thread."""

    prompt: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    n: int = 1
    top_logprobs: int = 0
    timeout_s: float | None = None
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    completion_tokens: int = 0

    @property
    def cost(self) -> int:
        """Tokens this request may occupy: its prompt plus every choice's output."""
        return len(self.prompt) + self.n * self.params.max_new_tokens

    def expired(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.created > self.timeout_s


@dataclass
class _Sequence:
    request: Request
    index: int
    slot: int
    stream: TextStream
    generator: torch.Generator
    seen: torch.Tensor  # (1, V) token counts in prompt + output, for the repetition penalty
    generated: torch.Tensor  # (1, V) counts in the output, for presence / frequency penalties
    pending: int = -1  # the last sampled token, fed to the model in the next step
    produced: int = 0
    done: bool = False  # leaves the batch at the next _retire


class QueueWorker:
    """A thread that serves a bounded queue of requests: submit, cancel, start, stop, and the counters.

    Subclasses run ``_loop`` on the thread, taking requests from ``waiting`` under ``_lock``.
    """

    thread_name = "aigc-worker"

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.waiting: deque[Request] = deque()
        self.draining = False
        self.cancelled = 0  # sequences dropped because their client went away
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout=10)

    def submit(self, request: Request) -> None:
        """Queue ``request``; raise :class:`Busy` when draining or when the queue is full."""
        with self._lock:
            if self.draining:
                raise Busy("the server is shutting down; retry on another replica", draining=True, retry_after=5)
            self._check(request)
            if len(self.waiting) >= self.max_waiting:
                raise Busy(f"the queue is full ({len(self.waiting)} requests waiting); retry later")
            self.waiting.append(request)
            self._lock.notify()

    def _check(self, request: Request) -> None:
        """Refuse a request this worker can never or not now take (called under the lock)."""

    def cancel(self, request: Request) -> None:
        """Stop ``request`` (its client went away); its slots are freed before the next step."""
        request.cancelled = True
        with self._lock:
            self._lock.notify()

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def _loop(self) -> None:
        raise NotImplementedError


class Scheduler(QueueWorker):
    """Owns a :class:`TextGenerator`'s GPT on one thread and serves many requests from it."""

    thread_name = "aigc-scheduler"

    def __init__(self, generator: TextGenerator, max_running: int = 32, max_waiting: int = 256,
                 max_waiting_tokens: int = 1_000_000):
        super().__init__(max_waiting)
        self.generator, self.model = generator, generator.model
        self.max_running, self.max_waiting_tokens = max_running, max_waiting_tokens
        self.batch = SlotBatch(self.model, max_running)
        self.rows: list[_Sequence] = []  # rows[slot] is the sequence in that slot
        self._eot = generator.eot
        self._vocab = self.model.config.vocab_size

    def _check(self, request: Request) -> None:
        if request.n > self.max_running:
            raise AigcError(f"n={request.n} is more than the {self.max_running} sequences this server runs at once")
        queued_tokens = sum(r.cost for r in self.waiting)
        if queued_tokens + request.cost > self.max_waiting_tokens:
            raise Busy(f"the queue is full ({len(self.waiting)} requests, {queued_tokens:,} tokens waiting); retry later")

    @property
    def running(self) -> int:
        return len({id(s.request) for s in self.rows})

    # ---- the scheduler thread ----

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self.waiting and not self.rows:
                    self._lock.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                for request in admitted:
                    self._prefill(request)
                self._drop_cancelled_and_expired()
                if self.rows:
                    self._step()
            except Exception as err:  # a failure must reach every client, not kill the thread silently
                log.exception("generation failed")
                for sequence in list(self.rows):
                    sequence.request.sink(Event(sequence.index, error=f"generation failed: {err}"))
                self.rows.clear()
                self.batch.active = 0
        for sequence in self.rows:
            sequence.request.sink(Event(sequence.index, error="the server stopped"))

    def _admit(self) -> list[Request]:
        admitted, free = [], self.max_running - self.batch.active
        while self.waiting and (self.waiting[0].cancelled or self.waiting[0].n <= free):
            request = self.waiting.popleft()
            if not request.cancelled:
                admitted.append(request)
                free -= request.n
        return admitted

    @torch.inference_mode()
    def _prefill(self, request: Request) -> None:
        if request.cancelled:
            return
        device = self.model.wte.weight.device
        ids = torch.tensor([request.prompt], device=device)
        caches = self.model.new_caches(1, len(request.prompt))
        logits = self.model(ids, caches=caches, last_only=True)[:, -1].float()  # (1, V)
        seen = torch.zeros(1, self._vocab, device=device).scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float))
        base = request.params.seed if request.params.seed is not None else int(torch.randint(0, 2**62, (1,)))
        for index in range(request.n):
            sequence = _Sequence(request, index, self.batch.add(caches), TextStream(self.generator.decode, request.params.stop),
                                 torch.Generator(device=device).manual_seed(base + index), seen.clone(),
                                 torch.zeros(1, self._vocab, device=device))
            self.rows.append(sequence)
            self._accept(sequence, logits)
        self._retire()

    @torch.inference_mode()
    def _step(self) -> None:
        tokens = torch.tensor([[s.pending] for s in self.rows], device=self.model.wte.weight.device)  # (B, 1)
        positions, mask = self.batch.step_inputs()
        logits = self.model(tokens, caches=self.batch.caches, positions=positions, mask=mask, last_only=True)[:, -1].float()
        self.batch.advance()
        for sequence, row_logits in zip(list(self.rows), logits):
            self._accept(sequence, row_logits[None])
        self._retire()

    def _accept(self, sequence: _Sequence, logits: torch.Tensor) -> None:
        """Sample the next token of ``sequence`` from its logits (1, V) and tell the client what became final."""
        request, params = sequence.request, sequence.request.params
        token = int(choose(apply_penalties(logits, sequence.seen, sequence.generated, params), params, [sequence.generator]))
        sequence.seen[0, token] += 1
        sequence.generated[0, token] += 1
        sequence.produced += 1
        request.completion_tokens += 1
        logprob = top = None
        if params.logprobs:
            logprobs = logits[0].log_softmax(-1)
            logprob = float(logprobs[token])
            if request.top_logprobs:
                values, ids = logprobs.topk(request.top_logprobs)
                top = list(zip(ids.tolist(), values.tolist()))
        event = Event(sequence.index, token=token, logprob=logprob, top_logprobs=top)
        if (token == self._eot and not params.ignore_eos) or token in params.stop_token_ids:
            event.text, event.finish_reason = sequence.stream.finish(), "stop"
        else:
            event.text = sequence.stream.add(token)
            if sequence.stream.stopped:
                event.finish_reason = "stop"
            elif sequence.produced >= params.max_new_tokens or int(self.batch.lengths[sequence.slot]) >= self.batch.capacity:
                event.text += sequence.stream.finish()
                event.finish_reason = "length"
        sequence.pending = token
        request.sink(event)
        sequence.done = event.finish_reason is not None

    def _drop_cancelled_and_expired(self) -> None:
        now = time.monotonic()
        for sequence in self.rows:
            request = sequence.request
            if not sequence.done and (request.cancelled or request.expired(now)):
                if request.cancelled:
                    self.cancelled += 1
                else:
                    request.sink(Event(sequence.index, error=f"the request passed its deadline of {request.timeout_s:g} s",
                                       finish_reason="length", timed_out=True))
                sequence.done = True
        self._retire()

    def _retire(self) -> None:
        """Free the slots of finished sequences (highest slot first, so each move takes a row that stays)."""
        for sequence in sorted((s for s in self.rows if s.done), key=lambda s: -s.slot):
            slot = sequence.slot
            moved = self.batch.remove(slot)
            if moved is not None:
                self.rows[slot] = self.rows[moved]
                self.rows[slot].slot = slot
            self.rows.pop()
