"""``aigc serve``: load runs, start their workers, and run the API under uvicorn with a graceful drain.

On SIGTERM or Ctrl-C the server first drains: ``/ready`` answers 503, new generation requests get 503
with ``Retry-After``, requests already running or queued finish (up to ``drain_timeout_s``); those
still unfinished then get 503 (a stream: an error event), and it exits. A second signal exits at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import uvicorn

from aigc.checkpoint import load_checkpoint
from aigc.errors import AigcError, ConfigError
from aigc.serve.app import create_app
from aigc.serve.settings import ServeSettings
from aigc.serve.workers import ServedModel
from aigc.tasks import load_generator, task_for

log = logging.getLogger("aigc.serve")
SHUTDOWN_MESSAGE = "the server shut down before this request finished; retry on another replica"


def served_model_for(path: Path, model_id: str, settings: ServeSettings, bases: dict | None = None) -> ServedModel:
    """The run at ``path`` behind the API its task answers (completions, translations, images, speech), with its
    worker.
    ``bases``: base models shared by the LoRA runs served (:func:`~aigc.tasks.load_generator`)."""
    checkpoint = load_checkpoint(path)
    generator = load_generator(checkpoint, settings.device, settings.quantize, bases, settings.backend)
    served = task_for(checkpoint.config).served_model()
    return served.create(model_id, generator, checkpoint.config.generate, settings)


def named_runs(entries: list[str]) -> tuple[list[Path], list[str | None]]:
    """``RUN_DIR`` or ``NAME=RUN_DIR`` arguments of ``aigc serve`` -> the paths and the ids asked for (None: the
    folder's name). An existing path is a path even when it holds ``=``."""
    paths, names = [], []
    for entry in entries:
        name, sep, path = entry.partition("=")
        if sep and not Path(entry).exists():
            if not name.strip() or "/" in name or not path:
                raise ConfigError(f"{entry!r}: name a served model as NAME=RUN_DIR (a name without '/')")
            paths.append(Path(path))
            names.append(name)
        else:
            paths.append(Path(entry))
            names.append(None)
    return paths, names


def model_ids(paths: list[Path], names: list[str | None] | None = None) -> list[str]:
    """The id of each run: the name asked for, else its folder name, or ``name-1``, ``name-2``, ... when several
    share it (never an id already taken)."""
    names = names or [None] * len(paths)
    chosen = [name for name in names if name]
    twice = [name for name, count in Counter(chosen).items() if count > 1]
    if twice:
        raise ConfigError(f"the model name {twice[0]!r} is given to two runs; give each its own")
    folders = [path.resolve().name for path, name in zip(paths, names) if not name]
    counts = Counter(folders)
    taken = set(chosen) | {folder for folder in folders if counts[folder] == 1}
    ids, suffix = [], Counter()
    for path, name in zip(paths, names):
        if name:
            ids.append(name)
            continue
        folder = candidate = path.resolve().name
        while (counts[folder] > 1 and candidate in taken | {folder}) or candidate in chosen:
            suffix[folder] += 1
            candidate = f"{folder}-{suffix[folder]}"
        taken.add(candidate)
        ids.append(candidate)
    return ids


def load_models(paths: list[Path], settings: ServeSettings | None = None,
                names: list[str | None] | None = None) -> list[ServedModel]:
    """One :class:`ServedModel` per run directory or checkpoint; ids are the ``names`` given, else folder names,
    made unique. LoRA runs of one base share its weights: one base in memory, each adapter under its own id."""
    settings = settings or ServeSettings()
    bases: dict = {}
    return [served_model_for(path, model_id, settings, bases)
            for path, model_id in zip(paths, model_ids(paths, names))]


def _check_port_free(host: str, port: int) -> None:
    """A clear error when ``host:port`` cannot be listened on (another server holds it), instead of uvicorn's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no obstacle
        try:
            probe.bind((host, port))
        except OSError as err:
            raise AigcError(f"cannot listen on {host}:{port} ({err.strerror}): another server (an earlier aigc serve?) "
                            f"holds the port; stop it, or choose another with --port {port + 1}") from None


def banner(models: list[ServedModel], paths: list[Path], settings: ServeSettings) -> list[str]:
    """What a server tells the person who started it: each model's name and kind, the API, the playground."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    return [*(f"model '{m.id}': {m.kind} model from {path}" for m, path in zip(models, paths)),
            f"OpenAI-compatible API at {url}/v1, playground at {url}/ (Ctrl-C stops)"]


class _DrainingServer(uvicorn.Server):
    """uvicorn.Server that drains before it exits.

    The first SIGTERM / Ctrl-C marks the app as draining (``/ready`` and new generation requests get
    503) while the port stays open, and waits until the running and queued requests are done (at most
    ``drain_timeout_s``). Generations still unfinished then get 503, and uvicorn shuts down. A second
    signal exits at once, without waiting for open connections.
    """

    def __init__(self, config: uvicorn.Config, models: list[ServedModel], drain_timeout_s: float):
        super().__init__(config)
        self.models, self.drain_timeout_s = models, drain_timeout_s

    def _busy(self) -> int:
        return sum(m.worker.running + m.worker.queued for m in self.models)

    def handle_exit(self, sig, frame) -> None:
        app = self.config.app
        if app.state.draining:  # the second signal
            log.warning("exiting now")
            self._captured_signals.append(sig)
            self.should_exit = self.force_exit = True
            return
        log.warning("draining: finishing %d request(s), refusing new ones (signal again to exit now)", self._busy())
        app.state.draining = True
        for model in self.models:
            model.worker.draining = True

        def wait_then_exit() -> None:
            deadline = time.monotonic() + self.drain_timeout_s
            while self._busy() and time.monotonic() < deadline:
                time.sleep(0.05)
            if app.state.handlers.served.abort_all(SHUTDOWN_MESSAGE):
                log.warning("the drain time is over: unfinished requests get 503")
            time.sleep(0.2)  # let the last responses leave the event loop
            super(_DrainingServer, self).handle_exit(sig, frame)

        threading.Thread(target=wait_then_exit, name="aigc-drain", daemon=True).start()


def serve(paths: list[Path], settings: ServeSettings | None = None, names: list[str | None] | None = None) -> None:
    """Serve ``paths`` (under ``names`` where given) until SIGTERM / Ctrl-C, then drain and return."""
    settings = settings or ServeSettings()
    if not paths:
        raise AigcError("give at least one run directory or checkpoint to serve")
    _check_port_free(settings.host, settings.port)  # before the models load, which may take minutes
    models = load_models(paths, settings, names)
    app = create_app(models, settings)
    for model in models:
        model.worker.start()
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the models", settings.host)
    for line in banner(models, paths, settings):
        log.info(line)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)))
    server = _DrainingServer(config, models, settings.drain_timeout_s)
    try:
        server.run()
    finally:
        for model in models:
            model.worker.stop()
