"""What the server runs for each model: the continuous-batching scheduler (GPT) or a translation worker.

Both take a :class:`~aigc.serve.scheduler.Request` with ``submit`` and report through its ``sink``, so
the HTTP layer treats every model alike.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aigc.generate.text import TextGenerator
from aigc.images.generator import ImageGenerator
from aigc.serve.scheduler import Busy, Event, QueueWorker, Scheduler


class TranslationWorker(QueueWorker):
    """Encoder-decoder runs: a request's source ids are translated ``n`` times on one thread, in order."""

    thread_name = "aigc-translate"

    def __init__(self, generator: TextGenerator, max_waiting: int = 256):
        super().__init__(max_waiting)
        self.generator, self.active = generator, None

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
                sources = [request.prompt + [eot]] * request.n
                results = self.generator.translate_ids(sources, request.params)
                for index, hypotheses in enumerate(results):
                    tokens = hypotheses[0].tokens
                    request.completion_tokens += len(tokens)
                    finish = "length" if len(tokens) >= request.params.max_new_tokens else "stop"
                    request.sink(Event(index, text=self.generator.decode_target(tokens), finish_reason=finish))
            except Exception as err:
                for index in range(request.n):
                    request.sink(Event(index, error=f"translation failed: {err}"))
            finally:
                self.active = None


class ImageWorker:
    """Image runs: one drawing at a time (a lock), with the counters the metrics read."""

    def __init__(self, generator):
        self.generator = generator
        self.draining, self.running, self.queued, self.cancelled = False, 0, 0, 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Nothing runs in the background: requests draw on the server's thread pool."""

    def stop(self) -> None:
        """Nothing to stop."""

    def draw(self, prompt: str, n: int, params, guidance: float) -> list:
        if self.draining:
            raise Busy("the server is shutting down; retry on another replica", draining=True, retry_after=5)
        self.queued += 1
        with self._lock:
            self.queued -= 1
            self.running += 1
            try:
                return self.generator.generate([prompt], n, params, guidance)[0]
            finally:
                self.running -= 1


@dataclass
class ServedModel:
    """One run behind the API: its id, generator (text or images) and worker."""

    id: str
    generator: TextGenerator | ImageGenerator
    worker: Scheduler | TranslationWorker | ImageWorker
    created: int

    @property
    def context(self) -> int:
        return self.generator.engine.block_size

    @property
    def kind(self) -> str:
        if isinstance(self.generator, ImageGenerator):
            return "image"
        return "seq2seq" if self.generator.is_seq2seq else "gpt"
