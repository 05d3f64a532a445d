"""Checks for generated code: does it parse, does it compile, does it pass its doctests when run in a sandbox.

Generated code is never executed in this process. Each doctest run is a fresh ``python -I`` child in its own
session, in an empty temporary directory, with a minimal environment; before the code runs, the child caps its
CPU time, address space and file size, and removes destructive functions, as OpenAI's HumanEval harness does
(``reliability_guard`` in human_eval/execution.py). This stops accidents (a loop, a huge allocation, a stray
``os.remove``), not a determined attacker: run untrusted models in a container as well. Whatever the child does
(hang, crash, print garbage) comes back as a :class:`DoctestOutcome`, never as an exception.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

# A fenced block, opening fence with any info string; an unclosed block runs to the end of the answer.
_FENCE = re.compile(r"^[ \t]*```([^\n`]*)\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.M | re.S)
_PYTHON_INFO = ("", "python", "python3", "py")
# SIGXCPU at the soft CPU limit; SIGKILL at the hard one (soft + 1), if the code ignored SIGXCPU. The address
# space limit makes allocation fail with MemoryError long before the kernel's OOM killer would pick this child.
_CPU_SIGNALS = (-signal.SIGXCPU, -signal.SIGKILL)

# The child: reads one job (JSON) on stdin, writes one result (JSON) as the last line of stdout.
_RUNNER = r"""
import builtins, contextlib, doctest, faulthandler, io, json, os, resource, shutil, subprocess, sys

def guard(cpu, memory, size):
    for kind, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, memory, memory),
                             (resource.RLIMIT_FSIZE, size, size), (resource.RLIMIT_CORE, 0, 0)):
        ceiling = resource.getrlimit(kind)[1]  # a non-root process may lower its hard limit, never raise it
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(kind, (soft, hard))
    faulthandler.disable()
    for module, names in ((os, "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename "
                               "renames truncate replace unlink fchmod fchown chmod chown chroot lchown chdir"),
                          (shutil, "rmtree move chown"), (subprocess, "Popen"), (builtins, "exit quit")):
        for name in names.split():
            setattr(module, name, None)
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None

class Runner(doctest.DocTestRunner):
    out_of_memory = False
    def report_unexpected_exception(self, out, test, example, exc_info):
        self.out_of_memory = self.out_of_memory or issubclass(exc_info[0], MemoryError)
        super().report_unexpected_exception(out, test, example, exc_info)

def check(job):
    globs = {"__name__": "__generated__"}  # not "__main__": no `if __name__ == "__main__":` blocks
    test = doctest.DocTestParser().get_doctest(job["doctests"], globs, job["name"], "<generated>", 0)
    if not test.examples:
        return {"passed": False, "reason": "no examples", "attempted": 0, "failed": 0}
    limits = job["limits"]
    guard(limits["cpu_seconds"], limits["memory_mb"] << 20, limits["file_size_kb"] << 10)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(job["code"], "<generated>", "exec"), test.globs)  # test.globs: a copy of globs
    runner = Runner(verbose=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failed, attempted = runner.run(test, out=lambda report: None)
    reason = "out of memory" if runner.out_of_memory else "failed: %d of %d examples" % (failed, attempted)
    return {"passed": not failed, "reason": reason if failed else "passed", "attempted": attempted, "failed": failed}

def main():
    write, seek, truncate, leave, dumps = os.write, os.lseek, os.ftruncate, os._exit, json.dumps
    try:
        result = check(json.loads(sys.stdin.buffer.read()))
    except MemoryError:
        result = {"passed": False, "reason": "out of memory", "attempted": 0, "failed": 0}
    except BaseException as error:
        message = (str(error).strip().splitlines() or [""])[0][:200]
        reason = "error: " + type(error).__name__ + (": " + message if message else "")
        result = {"passed": False, "reason": reason, "attempted": 0, "failed": 0}
    with contextlib.suppress(OSError):  # drop what the code wrote to fd 1: the result must fit the size limit
        seek(1, 0, 0)
        truncate(1, 0)
    write(1, ("\n" + dumps(result) + "\n").encode())
    leave(0)  # no atexit handler or thread of the code runs after the result

main()
"""


def extract_code(answer: str) -> str:
    """The code in a model's answer: the first ```python (or bare ```) fenced block if there is one, else the answer,
    without the space a reply starts with after ``Assistant:`` (the first line's indentation, not the body's)."""
    for block in _FENCE.finditer(answer):
        if block.group(1).strip().lower() in _PYTHON_INFO:
            answer = block.group(2)
            break
    first, newline, rest = textwrap.dedent(answer.lstrip("\n")).partition("\n")
    return first.lstrip() + newline + rest


def parses(code: str) -> bool:
    """Whether ``ast.parse`` accepts the code (syntax only)."""
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def defines_function(code: str) -> bool:
    """Whether the code parses and defines a function at its top level (an empty answer parses, but is no function)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in tree.body)


def compiles(code: str) -> bool:
    """Whether the code compiles: also catches what the parser lets through (``return`` outside a function...)."""
    try:
        compile(code, "<generated>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


@dataclass(frozen=True)
class Limits:
    """What one doctest run may use: CPU seconds, address space, size of any file it writes, and wall time."""

    cpu_seconds: int = 2
    memory_mb: int = 512
    file_size_kb: int = 64
    wall_seconds: float = 10.0


@dataclass(frozen=True)
class DoctestOutcome:
    """``reason``: "passed", "failed: 2 of 3 examples", "timeout", "out of memory", "error: NameError: ...",
    "no examples" or "crashed (exit -11)"; ``attempted``/``failed`` count examples when they ran."""

    passed: bool
    reason: str
    attempted: int = 0
    failed: int = 0


def _execute(job: bytes, limits: Limits) -> tuple[int | None, str]:
    """The runner's exit status on ``job`` (None when it outlived ``limits.wall_seconds``) and its output.

    Output goes to a file rather than a pipe: the child's file-size limit then bounds it, whatever it prints."""
    with (
        tempfile.TemporaryDirectory(prefix="aigc-check-", ignore_cleanup_errors=True) as cwd,
        tempfile.TemporaryFile() as output,
    ):
        child = subprocess.Popen(
            [sys.executable, "-I", "-c", _RUNNER], stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
            cwd=cwd, env={"PATH": os.defpath, "LANG": "C.UTF-8"}, start_new_session=True,
        )
        try:
            child.communicate(job, timeout=limits.wall_seconds)
            status: int | None = child.returncode
        except subprocess.TimeoutExpired:
            status = None
        finally:  # whatever the child started in its session goes too (the group's id is the child's pid)
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
            child.kill()
            child.wait()
            with contextlib.suppress(OSError):
                child.stdin.close()
        output.seek(0)
        return status, output.read().decode("utf-8", errors="replace")


def _outcome(status: int | None, output: str) -> DoctestOutcome:
    """The outcome from the runner's exit status and output: its result line, else what its exit tells."""
    if status is None or status in _CPU_SIGNALS:
        return DoctestOutcome(False, "timeout")
    last = (output.strip().splitlines() or [""])[-1].strip()
    with contextlib.suppress(ValueError, RecursionError, TypeError, KeyError):  # not a result line
        result = json.loads(last)
        outcome = DoctestOutcome(result["passed"], result["reason"], result["attempted"], result["failed"])
        kinds = tuple(type(value) for value in (outcome.passed, outcome.reason, outcome.attempted, outcome.failed))
        if status == 0 and kinds == (bool, str, int, int):
            return outcome
    if last.split(":")[0] == "MemoryError":  # the runner itself died of it, with a traceback on stderr
        return DoctestOutcome(False, "out of memory")
    return DoctestOutcome(False, f"crashed (exit {status})")


def run_doctests(code: str, doctests: str, name: str, limits: Limits = Limits()) -> DoctestOutcome:
    """Run the doctest examples of ``doctests`` (a docstring) against ``code`` (a generated function definition),
    in its own subprocess: never in this process. Examples compare with ELLIPSIS and NORMALIZE_WHITESPACE."""
    job = json.dumps({"code": code, "doctests": doctests, "name": name, "limits": asdict(limits)})
    return _outcome(*_execute(job.encode(), limits))


def run_many(jobs: list[tuple[str, str, str]], limits: Limits = Limits(), workers: int = 2) -> list[DoctestOutcome]:
    """``run_doctests`` for each (code, doctests, name), ``workers`` subprocesses at a time, results in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_doctests(*job, limits=limits), jobs))
