"""An image run behind ``aigc serve``: ``/v1/images/generations`` requests queue for one thread that draws them
in order, and are answered as PNGs at the size asked (the model's own, upscaled)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aigc.config import GenerateConfig
from aigc.generate.sampling import SamplingParams
from aigc.serve.scheduler import QueueWorker
from aigc.serve.settings import ServeSettings
from aigc.serve.workers import InvalidRequest, ServedModel
from aigc.tasks.images.generator import ImageGenerator
from aigc.tasks.images.pixels import upscale


@dataclass
class ImageJob:
    """One ``/v1/images/generations`` request for the :class:`ImageWorker`; ``finished`` is called on the worker's
    thread once ``images`` (or ``error``) is set. A job cancelled while queued (its client went away, or it passed
    its deadline) is never drawn."""

    prompt: str
    n: int
    params: SamplingParams
    guidance: float
    finished: Callable[[ImageJob], None]
    images: list[np.ndarray] | None = None  # each (H, W, 3) uint8
    error: str | None = None
    cancelled: bool = False


class ImageWorker(QueueWorker):
    """Image runs on one thread of their own, one drawing at a time, in order: a queued request holds no thread of
    the server's, so text requests on other models never wait for image ones."""

    thread_name = "aigc-images"

    def __init__(self, generator: ImageGenerator, max_waiting: int = 256):
        super().__init__(max_waiting)
        self.generator, self.active = generator, 0

    @property
    def running(self) -> int:
        return self.active

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._wait_for_work():
                    return
                job = self.waiting.popleft()
                if job.cancelled:
                    self.cancelled += 1
                    continue
                self.active = 1
            try:
                job.images = self.generator.generate([job.prompt], job.n, job.params, job.guidance)[0]
            except Exception as err:  # a failed drawing fails its own job, never the worker
                job.error = f"image generation failed: {err}"
            finally:
                self.active = 0
            job.finished(job)


class ImageModel(ServedModel):
    """A caption-prefix image model: square images of ``generator.side`` pixels, upscaled on request."""

    kind, api, route = "image", "images", "/v1/images/generations"
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

    def submit(self, prompt: str, n: int, params: SamplingParams, guidance: float,
               finished: Callable[[ImageJob], None]) -> ImageJob:
        """Queue ``n`` drawings of ``prompt`` (raises :class:`~aigc.serve.scheduler.Busy` when the queue is full or
        the server is draining); ``finished`` is called on the worker's thread once they are drawn."""
        job = ImageJob(prompt, n, params, guidance, finished)
        self.worker.submit(job)
        return job

    @staticmethod
    def pngs(images: list[np.ndarray], scale: int) -> list[str]:
        """Drawings, each upscaled ``scale`` times, as base64 PNG files."""
        return [png_base64(upscale(image, scale)) for image in images]


def png_base64(image: np.ndarray) -> str:
    """(H, W, 3) uint8 -> base64 of its PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
