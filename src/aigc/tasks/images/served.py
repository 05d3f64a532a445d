"""An image run behind ``aigc serve``: ``/v1/images/generations`` draws on the server's thread pool, one drawing
at a time, and answers PNGs at the size asked (the model's own, upscaled)."""

from __future__ import annotations

import base64
import io
import re
import threading

import numpy as np
from PIL import Image

from aigc.config import GenerateConfig
from aigc.generate.sampling import SamplingParams
from aigc.serve.scheduler import Busy
from aigc.serve.settings import ServeSettings
from aigc.serve.workers import InvalidRequest, ServedModel
from aigc.tasks.images.generator import ImageGenerator
from aigc.tasks.images.pixels import upscale


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

    def pngs(self, prompt: str, n: int, params: SamplingParams, guidance: float, scale: int) -> list[str]:
        """``n`` drawings of ``prompt``, each upscaled ``scale`` times, as base64 PNG files (blocks while queued)."""
        return [png_base64(upscale(image, scale)) for image in self.worker.draw(prompt, n, params, guidance)]


def png_base64(image: np.ndarray) -> str:
    """(H, W, 3) uint8 -> base64 of its PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
