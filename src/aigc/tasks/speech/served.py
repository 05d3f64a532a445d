"""A speech run behind ``aigc serve``: ``/v1/audio/speech`` requests queue for one thread that draws the ones
sampling alike in one batch, then encodes each clip as WAV or PCM."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aigc.errors import AigcError
from aigc.generate.sampling import SamplingParams
from aigc.serve.scheduler import QueueWorker
from aigc.serve.settings import ServeSettings
from aigc.serve.workers import InvalidRequest, ServedModel
from aigc.tasks.speech.audio import encode_audio
from aigc.tasks.speech.generator import SpeechGenerator, Utterance
from aigc.tasks.speech.settings import SpeechGenerate


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
                if not self._wait_for_work():
                    return
                taken = self._batch()
                batch = [job for job in taken if not job.cancelled]  # its client went away or its deadline passed
                self.cancelled += len(taken) - len(batch)
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


class SpeechModel(ServedModel):
    """A caption-prefix speech model: a clip of the run's fixed length (trailing silence cut) in one of its voices."""

    kind, api, route = "speech", "speech", "/v1/audio/speech"
    MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}  # the response formats, by OpenAI's names

    @classmethod
    def create(cls, model_id: str, generator: SpeechGenerator, defaults: SpeechGenerate,
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

    def utterance(self, text: str, voice: str | None, speed: float | None) -> Utterance:
        """What a request asks to be said, checked before it queues (empty or too long: a 400 naming ``input``);
        a voice or speed left out is the run's (``generate.voice``, ``generate.speed``)."""
        if not text.strip():
            raise InvalidRequest("input is empty; give the text to say", "input")
        utterance = Utterance(text, self.voice(voice), 1, self.defaults.speed if speed is None else speed)
        try:
            self.generator.encode(utterance.text, utterance.voice)
        except AigcError as err:
            raise InvalidRequest(str(err), "input") from err
        return utterance

    def submit(self, utterance: Utterance, params: SamplingParams, guidance: float,
               finished: Callable[[SpeechJob], None]) -> SpeechJob:
        """Queue ``utterance`` for the speech thread; ``finished`` is called there once the job has its clip or error."""
        job = SpeechJob(utterance, params, guidance, finished)
        self.worker.submit(job)
        return job

    @staticmethod
    def encode(wave: np.ndarray, response_format: str) -> tuple[bytes, str]:
        """A clip as the bytes of ``response_format`` (wav or pcm) and their media type."""
        return encode_audio(wave, response_format), SpeechModel.MEDIA_TYPES[response_format]
