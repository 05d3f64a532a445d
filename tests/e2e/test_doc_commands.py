"""Every command block of the READMEs and docs/ (Chinese edition included) runs, page by page, and prints what
the page shows (numbers aside; see tests/docs_commands.py for the rules a page follows).

A page runs in a working directory of its own that looks like a fresh clone (tests/, src/, docs/ and the
project files linked in), with HOME inside it, so ``~/models/...`` and ``runs/`` are the page's own. Training is
held to seconds (a minute on the page is a second here; see ``budgeted``). ``aigc serve`` starts in the
background on a free port (the page's ``:8000`` is rewritten to it) and stops when the page ends. ``aigc``
commands (also ``echo PROMPT | aigc ...``) and the stand-ins run in this process; any other command in bash. A
command must exit 0 unless the page shows its ``error:`` line; each file or folder a command says it writes
(``--out``, ``aigc export``'s OUT) must exist.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests import docs_standins
from tests.docs_commands import NOT_RUN_REASONS, ROOT, Block, Command, blocks, budgeted, expected_lines_found, \
    outputs_named, pages, words
from tests.e2e.helpers import aigc, free_port

LINKED = ["tests", "src", "docs", "benchmarks", "pyproject.toml", "Makefile", "README.md", "README.zh-CN.md"]
PAGES = [p for p in pages() if blocks(p)]
SHELL_WORDS = set("|<>;&$~*`") | {"cd", "cat", "curl", "python", "ls", "head", "echo", "tail", "wc"}


def test_not_run_reasons_are_known():
    """A block left out says why, from a short list printed here; any other shell fence is a page error."""
    print("\nblocks the suite does not run may say:", *(f"  {r}: {w}" for r, w in NOT_RUN_REASONS.items()), sep="\n")
    problems = []
    for page in pages():
        for block in blocks(page):
            where = f"{page.relative_to(ROOT)}:{block.line}"
            if block.not_run is not None and block.not_run not in NOT_RUN_REASONS:
                problems.append(f"{where}: 'not run: {block.not_run}' is not an allowed reason")
            elif block.fence not in ("console", "setup") and block.not_run is None:
                problems.append(f"{where}: a ```{block.fence} block; write it as ```console ($ command, then its output)")
            elif block.fence in ("console", "setup") and not block.commands and block.not_run is None:
                problems.append(f"{where}: a command block without a `$ ` command")
    assert not problems, "\n".join(problems)


def _workspace(tmp_path: Path) -> Path:
    for name in LINKED:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "home").mkdir()
    return tmp_path


def _in_process(split: list[str]) -> bool:
    return split[0] == "aigc" and split[1:2] != ["serve"] and not SHELL_WORDS.intersection(split) \
        and not any(set(w) & set("|<>;&$~*`") for w in split)


class Page:
    """A page's working directory, its environment, and the servers it started."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.env = {**os.environ, "HOME": str(cwd / "home"), "CUDA_VISIBLE_DEVICES": "",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.servers: list[subprocess.Popen] = []
        self.port = 0

    def run(self, command: Command) -> subprocess.CompletedProcess:
        line = budgeted(command.line)
        if self.port:
            line = line.replace(":8000", f":{self.port}")
        split = words(line)
        if split[:2] == ["aigc", "serve"] and not _shows_error(command):  # a server that fails runs as a command
            return self.serve(split)
        if split and _in_process(split):
            return aigc(*split[1:], cwd=self.cwd, env={"HOME": self.env["HOME"]})
        if split[:1] == ["echo"] and split[2:3] == ["|"] and _in_process(split[3:]):  # a prompt on stdin
            return aigc(*split[4:], input_text=split[1] + "\n", cwd=self.cwd, env={"HOME": self.env["HOME"]})
        if split[:3] == ["python", "-m", "tests.docs_standins"]:
            return self.standin(split[3:])
        return subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)

    def standin(self, args: list[str]) -> subprocess.CompletedProcess:
        """``python -m tests.docs_standins ARGS`` in this process, ``~`` being the page's home."""
        args = [str(self.cwd / "home" / a[2:]) if a.startswith("~/") else a for a in args]
        out = io.StringIO()
        with contextlib.chdir(self.cwd), contextlib.redirect_stdout(out):
            docs_standins.main(args)
        return subprocess.CompletedProcess(args, 0, out.getvalue(), "")

    def serve(self, split: list[str]) -> subprocess.CompletedProcess:
        """``aigc serve`` in the background on a free port (its comment dropped), once ``/ready`` answers."""
        self.port = free_port()
        line = shlex.join([*split, "--port", str(self.port)])
        key = split[split.index("--api-key") + 1] if "--api-key" in split else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        log = self.cwd / f"serve-{self.port}.log"
        process = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=self.cwd, env=self.env,
                                   stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.servers.append(process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        time.sleep(0.5)  # the banner is printed by the time /ready answers; let it reach the log
        code = 0 if process.poll() is None else process.returncode
        return subprocess.CompletedProcess(line, code, log.read_text(encoding="utf-8"), "")

    def close(self) -> None:
        for process in self.servers:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _shows_error(command: Command) -> bool:
    """Whether the page shows the command failing (its ``error:`` line)."""
    return any(line.lstrip().startswith("error:") for line in command.shown)


def _check(block: Block, command: Command, done: subprocess.CompletedProcess, cwd: Path) -> None:
    where = f"{block.page.relative_to(ROOT)}:{block.line}: $ {command.line}"
    printed = done.stdout + done.stderr
    assert done.returncode == 0 or _shows_error(command), f"{where}\nexit {done.returncode}:\n{printed[-3000:]}"
    missing = expected_lines_found(command.shown, done.stdout, done.stderr)
    assert missing is None, f"{where}\nthe page shows {missing!r}; the command printed:\n{printed[-3000:]}"
    for name in outputs_named(command.line):
        path = cwd / Path(name).expanduser() if not name.startswith("~") else cwd / "home" / name[2:]
        assert path.exists() and (path.is_dir() or path.stat().st_size > 0), f"{where}\nwrote no {name}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_commands(page: Path, tmp_path: Path):
    cwd = _workspace(tmp_path)
    runner = Page(cwd)
    try:
        for block in blocks(page):
            if block.not_run is not None:
                continue
            for command in block.commands:
                _check(block, command, runner.run(command), cwd)
    finally:
        runner.close()
