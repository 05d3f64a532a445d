"""Continuous batching for the decoder-only GPT: requests join and leave the running batch between steps.

One background thread owns the model. Each turn it admits waiting requests, prefills at most
``prefill_chunk`` prompt tokens of them (each prompt alone, oldest first, in the engine's slot batch:
:class:`~aigc.generate.slots.SlotBatch`, or llama.cpp's, which takes a whole prompt at once); a request
whose prompt is done takes its free slots; then it runs one decoding step for every running sequence at once. A sequence leaves as soon
as it stops (stop id, stop string, token limit, full context), is cancelled (the client went away) or
passes its deadline, and its slot is free for the next request in the same turn.

Requests talk to the thread through a ``sink`` callback that receives :class:`Event` objects (text
increments that are final, made by the decode core's :class:`~aigc.generate.decode.Row`); the HTTP layer forwards them
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
from aigc.generate.decode import Event, PromptToken, Row, prompt_logprobs
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator

log = logging.getLogger(__name__)


class Busy(AigcError):
    """The server cannot take the request now: the queue is full, or it is draining."""

    def __init__(self, message: str, draining: bool = False, retry_after: int = 1):
        super().__init__(message)
        self.draining, self.retry_after = draining, retry_after


@dataclass
class Request:
    """A prompt (token ids) to continue ``n`` times; ``sink`` receives its events from the scheduler thread.

    With ``prompt_logprobs`` (how many alternatives to list per token) the prompt's tokens are scored into
    ``prompt_scores`` before the first event; with ``score_only`` too, nothing is generated (each choice ends
    at once, ``length``).
    """

    prompt: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    n: int = 1
    top_logprobs: int = 0
    timeout_s: float | None = None
    prompt_logprobs: int | None = None
    score_only: bool = False
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    completion_tokens: int = 0
    prompt_scores: list[PromptToken] | None = None

    @property
    def cost(self) -> int:
        """Tokens this request may occupy: its prompt plus every choice's output."""
        return len(self.prompt) + self.n * self.params.max_new_tokens

    def expired(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.created > self.timeout_s


@dataclass
class _Sequence:
    """A decode-core :class:`Row` of ``request`` in batch slot ``slot``."""

    request: Request
    row: Row
    slot: int


@dataclass
class _Prefilling:
    """An admitted request whose prompt is being prefilled, a chunk per turn: its rows wait for their slots."""

    request: Request
    rows: list[Row]
    prefill: object  # the batch's own (ContinuousBatch.start)


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

    def _wait_for_work(self) -> bool:
        """Under the lock: wait until a request is queued or the worker is stopped; False when it is stopped."""
        while not self._stopping and not self.waiting:
            self._lock.wait()
        return not self._stopping

    def _loop(self) -> None:
        raise NotImplementedError


class Scheduler(QueueWorker):
    """Owns a :class:`TextGenerator`'s GPT on one thread and serves many requests from it."""

    thread_name = "aigc-scheduler"

    def __init__(self, generator: TextGenerator, max_running: int = 32, max_waiting: int = 256,
                 max_waiting_tokens: int = 1_000_000, prefix_cache_bytes: int = 0, prefill_chunk: int = 512):
        """``prefill_chunk``: prompt tokens prefilled per turn, between two decoding steps of the running rows, so
        a long prompt does not stall the streams already running."""
        super().__init__(max_waiting)
        self.generator = generator
        self.max_running, self.max_waiting_tokens = max_running, max_waiting_tokens
        self.prefill_chunk = prefill_chunk
        self.batch = generator.engine.slot_batch(max_running, prefix_cache_bytes)
        self.rows: list[_Sequence] = []  # rows[slot] is the sequence in that slot
        self.prefilling: deque[_Prefilling] = deque()  # admitted, first come first prefilled
        self._vocab = generator.engine.vocab_size

    def _check(self, request: Request) -> None:
        if request.n > self.max_running:
            raise AigcError(f"n={request.n} is more than the {self.max_running} sequences this server runs at once")
        queued_tokens = sum(r.cost for r in self.waiting)
        if queued_tokens + request.cost > self.max_waiting_tokens:
            raise Busy(f"the queue is full ({len(self.waiting)} requests, {queued_tokens:,} tokens waiting); retry later")

    @property
    def running(self) -> int:
        return len({id(s.request) for s in self.rows} | {id(p.request) for p in self.prefilling})

    # ---- the scheduler thread ----

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self.waiting and not self.rows and not self.prefilling:
                    self._lock.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                for request in admitted:
                    self._start(request)
                self._prefill_a_chunk()
                self._drop_cancelled_and_expired()
                if self.rows:
                    self._step()
            except Exception as err:  # a bug here must reach every client, not kill the thread silently
                log.exception("the scheduler failed")
                self._end_all(f"generation failed: {err}")
                self.batch.reset()
        self._end_all("the server stopped")

    def _end_all(self, error: str) -> None:
        """End every open row, running or still prefilling, with ``error``."""
        for sequence in self.rows:
            if not sequence.row.done:
                sequence.request.sink(Event(sequence.row.index, error=error))
        for waiting in self.prefilling:
            for index in range(waiting.request.n):
                waiting.request.sink(Event(index, error=error))
        self.rows.clear()
        self.prefilling.clear()

    def _admit(self) -> list[Request]:
        prefilling = sum(len(p.rows) for p in self.prefilling)
        admitted, free = [], self.max_running - self.batch.active - prefilling
        while self.waiting and (self.waiting[0].cancelled or self.waiting[0].n <= free):
            request = self.waiting.popleft()
            if request.cancelled:
                self.cancelled += request.n  # its client went away while it was queued
            else:
                admitted.append(request)
                free -= request.n
        return admitted

    @torch.inference_mode()
    def _start(self, request: Request) -> None:
        """Make ``request``'s rows and start its prefill; a failure (a bad request that passed validation) ends this
        request only."""
        try:
            rows = [] if request.score_only else self._rows(request)
            prefill = self.batch.start(request.prompt, every_position=request.prompt_logprobs is not None)
        except Exception as err:  # noqa: BLE001 - reported to the request's client
            self._fail(request, err, range(request.n))
            return
        self.prefilling.append(_Prefilling(request, rows, prefill))

    @torch.inference_mode()
    def _prefill_a_chunk(self) -> None:
        """Prefill up to ``prefill_chunk`` prompt tokens, oldest request first; each request whose prompt is done
        takes its slots and its rows their first tokens. A failure ends that request only, and keeps no slot."""
        budget = self.prefill_chunk
        while budget > 0 and self.prefilling:
            waiting = self.prefilling[0]
            try:
                computed, finished = self.batch.run(waiting.prefill, budget)
                if finished:
                    logits, slots = self.batch.place(waiting.prefill, len(waiting.rows))  # (V,) or (L, V)
            except Exception as err:  # noqa: BLE001 - reported to the request's client
                self.prefilling.popleft()
                self._fail(waiting.request, err, range(waiting.request.n))
                continue
            budget -= computed
            if not finished:
                return
            self.prefilling.popleft()
            self._begin(waiting.request, waiting.rows, logits, slots)

    def _begin(self, request: Request, rows: list[Row], logits: torch.Tensor, slots: list[int]) -> None:
        """A prefilled request: its rows take their slots, then its prompt scores and the rows' first tokens. A
        failure to score the prompt ends this request only, and frees its slots."""
        sequences = [_Sequence(request, row, slot) for row, slot in zip(rows, slots)]
        self.rows.extend(sequences)
        if request.prompt_logprobs is not None:
            try:
                request.prompt_scores = prompt_logprobs(request.prompt, logits, request.prompt_logprobs)
            except Exception as err:  # noqa: BLE001 - reported to the request's client
                self._fail(request, err, range(request.n))
                self._retire()
                return
            logits = logits[-1]
        if request.score_only:
            for index in range(request.n):
                request.sink(Event(index, finish_reason="length"))
            return
        for sequence in sequences:
            self._accept(sequence, logits)
        self._retire()

    def _rows(self, request: Request) -> list[Row]:
        """The decode-core rows of ``request``'s ``n`` choices, seeded ``base + index``."""
        limit = min(request.params.max_new_tokens, self.batch.capacity - len(request.prompt) + 1)
        return self.generator.engine.rows([request.prompt] * request.n, request.params, [limit] * request.n,
                                          top_logprobs=request.top_logprobs,
                                          **self.generator.row_options(request.params))

    @torch.inference_mode()
    def _step(self) -> None:
        """One token for every running row; a failure of the batch's forward pass reaches every running request."""
        try:
            logits = self.batch.step([s.row.last for s in self.rows])  # (B, V)
        except Exception as err:  # noqa: BLE001 - reported to every client in the batch
            for request in {id(s.request): s.request for s in self.rows}.values():
                self._fail(request, err)
            self._retire()
            return
        for sequence, row_logits in zip(list(self.rows), logits):
            self._accept(sequence, row_logits)
        self._retire()

    def _accept(self, sequence: _Sequence, logits: torch.Tensor) -> None:
        """The decode core's next token for ``sequence``; a failure ends its request only."""
        if sequence.row.done:  # its request failed earlier in this step
            return
        try:
            event = sequence.row.accept(logits)
        except Exception as err:  # noqa: BLE001 - reported to the request's client
            self._fail(sequence.request, err)
            return
        sequence.request.completion_tokens += 1
        sequence.request.sink(event)

    def _fail(self, request: Request, err: Exception, indices: range | None = None) -> None:
        """End ``request``'s open rows (or the choices ``indices``) with an error; its slots free at the next retire."""
        log.error("request failed: %s", err, exc_info=err)
        open_rows = [s.row for s in self.rows if s.request is request and not s.row.done]
        for row in open_rows:
            row.done = True
        for index in indices if indices is not None else [row.index for row in open_rows]:
            request.sink(Event(index, error=f"generation failed: {err}"))

    def _drop_cancelled_and_expired(self) -> None:
        now = time.monotonic()
        for sequence in self.rows:
            if not sequence.row.done and self._gone(sequence.request, sequence.row.index, now):
                sequence.row.done = True
        for waiting in list(self.prefilling):
            gone = [self._gone(waiting.request, index, now) for index in range(waiting.request.n)]  # each told
            if gone[0]:
                self.prefilling.remove(waiting)
        self._retire()

    def _gone(self, request: Request, index: int, now: float) -> bool:
        """Whether choice ``index`` of ``request`` ends here: its client went away (counted), or it passed its
        deadline (told so)."""
        if request.cancelled:
            self.cancelled += 1
        elif request.expired(now):
            request.sink(Event(index, error=f"the request passed its deadline of {request.timeout_s:g} s",
                               finish_reason="length", timed_out=True))
        else:
            return False
        return True

    def _retire(self) -> None:
        """Free the slots of finished rows (highest slot first, so each move takes a row that stays)."""
        for sequence in sorted((s for s in self.rows if s.row.done), key=lambda s: -s.slot):
            slot = sequence.slot
            moved = self.batch.remove(slot)
            if moved is not None:
                self.rows[slot] = self.rows[moved]
                self.rows[slot].slot = slot
            self.rows.pop()
