"""The end-to-end tests' ways to run aigc: ``aigc(...)`` in this process (as ``aigc.cli.main``, with its standard
streams captured), ``aigc_process(...)`` in a child process for what only a process shows (signals, ``python -m
aigc``), and ``Server``, a live ``aigc serve`` in a child process on a free localhost port.

``aigc(...)`` saves an interpreter start (and torch's import) per call: a call answers as the command would, with
the exit code ``main`` returns (or argparse exits with), what it printed on stdout and stderr, and WARNING log
records on stderr, as Python's last-resort handler prints them in a process of its own. An exception ``main``
does not turn into an exit code is raised in the test: the test fails, as a traceback on stderr made it fail.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from aigc.cli import main


def aigc(*args, input_text: str | None = None, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``aigc ARGS`` run by ``aigc.cli.main`` here; ``input_text`` is its stdin (not a terminal)."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    warnings = logging.StreamHandler(err)
    warnings.setLevel(logging.WARNING)
    saved_stdin = sys.stdin
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        if env:
            saved_env = dict(os.environ)
            os.environ.update(env)
            stack.callback(lambda: (os.environ.clear(), os.environ.update(saved_env)))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        sys.stdin = io.StringIO(input_text or "")
        root.addHandler(warnings)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: --help, or a bad argument (exit 2)
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        finally:
            sys.stdin = saved_stdin
            root.handlers[:] = saved_handlers  # what cmd_serve's logging.basicConfig may have added goes too
            root.setLevel(saved_level)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def aigc_process(*args, input_text: str | None = None, cwd: Path | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m aigc ARGS`` in a child process: for what only a process of its own shows."""
    return subprocess.run([sys.executable, "-m", "aigc", *map(str, args)], capture_output=True, text=True,
                          input=input_text, cwd=cwd, timeout=timeout)


def torchrun(*args, launch: tuple[str, ...] = ("--standalone", "--nproc_per_node", "2"), script: Path | None = None,
             check: bool = True, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``aigc ARGS`` (or ``script ARGS``) on CPU processes under torchrun, two on one machine by default, each with
    one thread (two cores), with ``env`` added to the environment; ``check``: the run must succeed."""
    program = [str(script)] if script else ["-m", "aigc"]
    done = subprocess.run([str(Path(sys.executable).with_name("torchrun")), *launch, *program, *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``aigc serve`` in a subprocess; ``url`` once /ready answers."""

    def __init__(self, runs: list, *args: str, key: str | None = None, env: dict[str, str] | None = None):
        self.port = free_port()
        key = key or (args[args.index("--api-key") + 1] if "--api-key" in args else None)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(f"/tmp/aigc-serve-{self.port}.log")
        self.process = subprocess.Popen([sys.executable, "-m", "aigc", "serve", *map(str, runs), "--port", str(self.port),
                                         *args], stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", headers=self.headers, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def metric(self, name: str, model: str = "code", **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=self.headers).text
        wanted = ",".join([f'model="{model}"', *(f'{k}="{v}"' for k, v in labels.items())])
        match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@contextlib.contextmanager
def serving(runs: list, *args: str, **kwargs):
    """A ``Server`` for the length of a ``with`` block (a module-scoped fixture's body)."""
    server = Server(runs, *args, **kwargs)
    try:
        yield server
    finally:
        server.stop()
