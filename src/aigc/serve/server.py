"""``aigc serve``: load runs, start their workers, and run the API under uvicorn with a graceful drain.

On SIGTERM or Ctrl-C the server first drains: ``/ready`` answers 503, new generation requests get 503
with ``Retry-After``, requests already running finish (up to ``drain_timeout_s``), then it exits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path

import uvicorn

from aigc.errors import AigcError
from aigc.checkpoint import load_checkpoint
from aigc.generate.text import TextGenerator
from aigc.images.generator import ImageGenerator
from aigc.serve.app import ServeSettings, create_app
from aigc.serve.scheduler import Scheduler
from aigc.serve.workers import ImageWorker, ServedModel, TranslationWorker

log = logging.getLogger("aigc.serve")


def load_models(paths: list[Path], max_running: int = 32, max_waiting: int = 256, device: str = "cpu") -> list[ServedModel]:
    """One :class:`ServedModel` per run directory or checkpoint; ids are folder names, made unique."""
    names = Counter(p.resolve().name for p in paths)
    models, seen = [], Counter()
    for path in paths:
        name = path.resolve().name
        seen[name] += 1
        model_id = name if names[name] == 1 else f"{name}-{seen[name]}"
        if load_checkpoint(path).config.model.image_size:
            images = ImageGenerator.from_checkpoint(path, device=device)
            models.append(ServedModel(model_id, images, ImageWorker(images), int(time.time())))
            continue
        generator = TextGenerator.from_checkpoint(path, device=device)
        if generator.is_seq2seq:
            worker = TranslationWorker(generator, max_waiting)
        else:
            worker = Scheduler(generator, max_running=max_running, max_waiting=max_waiting)
        models.append(ServedModel(model_id, generator, worker, int(time.time())))
    return models


class _DrainingServer(uvicorn.Server):
    """uvicorn.Server that drains before it exits.

    The first SIGTERM / Ctrl-C marks the app as draining (``/ready`` and new generation requests get
    503) while the port stays open, waits until the running and queued requests are done (at most
    ``drain_timeout_s``), then lets uvicorn shut down. A second signal exits at once.
    """

    def __init__(self, config: uvicorn.Config, models: list[ServedModel], drain_timeout_s: float):
        super().__init__(config)
        self.models, self.drain_timeout_s = models, drain_timeout_s

    def _busy(self) -> int:
        return sum(m.worker.running + m.worker.queued for m in self.models)

    def handle_exit(self, sig, frame) -> None:
        app = self.config.app
        if app.state.draining:
            return super().handle_exit(sig, frame)
        log.warning("draining: finishing %d request(s), refusing new ones (signal again to exit now)", self._busy())
        app.state.draining = True
        for model in self.models:
            model.worker.draining = True

        def wait_then_exit() -> None:
            deadline = time.monotonic() + self.drain_timeout_s
            while self._busy() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # let the last responses leave the event loop
            super(_DrainingServer, self).handle_exit(sig, frame)

        threading.Thread(target=wait_then_exit, name="aigc-drain", daemon=True).start()


def serve(paths: list[Path], host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          max_running: int = 32, max_waiting: int = 256, drain_timeout_s: float = 30.0, device: str = "cpu") -> None:
    """Serve ``paths`` until SIGTERM / Ctrl-C, then drain and return."""
    if not paths:
        raise AigcError("give at least one run directory or checkpoint to serve")
    models = load_models(paths, max_running, max_waiting, device)
    app = create_app(models, settings)
    for model in models:
        model.worker.start()
    if host not in ("127.0.0.1", "localhost", "::1") and not (settings and settings.api_keys):
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the models", host)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=int(drain_timeout_s),
                            access_log=False)
    server = _DrainingServer(config, models, drain_timeout_s)
    try:
        server.run()
    finally:
        for model in models:
            model.worker.stop()
