"""The command blocks of the docs, read as a reader reads them and run as a reader runs them.

A page's ```` ```console ```` block holds commands (``$ aigc ...``, continued by a trailing ``\\``) each followed
by what it prints; a command may write a file with a here-document (``$ cat > rows.jsonl <<'EOF'`` up to
``EOF``). :func:`blocks` reads a page; :func:`expected_lines_found` checks a command's output against what the
page shows: every shown line, in order within stdout or stderr, with numbers and ``...`` free (a doc shows the
figures of a full run; the test runs a short one). Two HTML comments, invisible on the rendered page, complete
a block:

- ``<!-- setup`` ... ``-->`` above a block: commands that make what a reader already has (a Hugging Face model
  folder stands in for the one the page downloads: ``python -m tests.docs_standins``);
- ``<!-- not run: REASON -->`` right above a block: a block the suite cannot run, for one of
  :data:`NOT_RUN_REASONS` (printed by the test that reads it).

Any other shell block (```` ```bash ````, ```` ```sh ````) is a page error: a command a reader copies is tested.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN_REASONS = {
    "installs the environment": "creating the venv and installing packages is what `make test` did before the suite ran",
    "needs a CUDA GPU": "tests/gpu holds the GPU checks, run with `make test-gpu` on a GPU machine",
    "downloads from the internet": "the suite runs offline; the next block uses the copy in tests/fixtures",
    "runs the whole suite": "`make test` is the suite itself",
}
SHELL_FENCES = {"bash", "sh", "shell", "zsh"}
# Training held to seconds so that a page runs quickly, keeping what a reader sees: minutes become seconds (a
# recipe's 3-minute budget runs 3 s and says so as it would), step counts are capped, a study runs two trials.
SECONDS_PER_MINUTE_KEYS = {"train.max_minutes", "tune.trial_minutes", "tune.max_minutes"}
MAX_STEPS = 24
MAX_TRIALS = 2
TRAINS = {"run", "train", "tune"}


@dataclass
class Command:
    """One ``$`` line (continuations joined) and the output lines the page shows under it."""

    line: str
    shown: list[str] = field(default_factory=list)
    setup: bool = False


@dataclass
class Block:
    """A fenced command block: where it starts (for messages), its commands, and why it is not run (or None)."""

    page: Path
    line: int
    fence: str
    commands: list[Command]
    not_run: str | None = None


def _commands(lines: list[str], setup: bool = False) -> list[Command]:
    commands: list[Command] = []
    pending = ""
    heredoc: str | None = None  # the word that ends a here-document the command is reading
    for text in lines:
        if heredoc is not None:
            commands[-1].line += "\n" + text
            heredoc = None if text == heredoc else heredoc
        elif pending or text.startswith("$ "):
            body = text[2:] if not pending else text.strip()
            pending += body
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
                continue
            commands.append(Command(pending, setup=setup))
            pending = ""
            opened = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", commands[-1].line)
            heredoc = opened.group(1) if opened else None
        elif commands:
            commands[-1].shown.append(text)
    return commands


def words(command: str) -> list[str]:
    """The shell words of a one-line command; none for a command with a here-document (run as it is)."""
    return [] if "\n" in command else shlex.split(command, comments=True)


def blocks(page: Path) -> list[Block]:
    """The command blocks of ``page`` in order, hidden set-up commands included as blocks of their own."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "<!-- setup":
            end = lines.index("-->", i)
            found.append(Block(page, i + 1, "setup", _commands(lines[i + 1 : end], setup=True)))
            i = end + 1
            continue
        fence = re.match(r"^(\s*)```(\w*)\s*$", line)
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            kind = fence.group(2)
            if kind == "console" or kind in SHELL_FENCES:
                above = lines[i - 1].strip() if i else ""
                reason = re.fullmatch(r"<!-- not run: (.+) -->", above)
                body = [text[len(fence.group(1)):] for text in lines[i + 1 : end]]
                found.append(Block(page, i + 1, kind, _commands(body), reason.group(1) if reason else None))
            i = end + 1
            continue
        i += 1
    return found


def budgeted(command: str) -> str:
    """``command`` held to seconds of training: each ``*minutes`` setting read as seconds (3 when the recipe's own
    applies), ``train.max_steps`` capped at 24 and ``tune.trials`` at 2."""
    split = words(command)
    if len(split) < 2 or split[0] != "aigc" or split[1] not in TRAINS or any(w in "|<>;&" for w in split):
        return command
    kept = []
    for word in split:
        key, _, value = word.partition("=")
        if key in SECONDS_PER_MINUTE_KEYS and value not in ("null", ""):
            word = f"{key}={float(value) / 60:.4g}"
        elif key == "train.max_steps" and value.isdigit():
            word = f"{key}={min(int(value), MAX_STEPS)}"
        elif key == "tune.trials" and value.isdigit():
            word = f"{key}={min(int(value), MAX_TRIALS)}"
        kept.append(word)
    given = {w.partition("=")[0] for w in kept}
    if "train.max_minutes=null" in kept and "train.max_steps" not in given:  # the recipe's steps alone would run
        kept.append(f"train.max_steps={MAX_STEPS}")
    added = {"train.max_minutes": f"{3 / 60:.4g}", "train.eval_batches": "2"}
    if split[1] == "tune":
        added |= {"tune.trials": str(MAX_TRIALS), "tune.trial_minutes": f"{3 / 60:.4g}"}
    return shlex.join(kept + [f"{k}={v}" for k, v in added.items() if k not in given])


def _pattern(shown: str) -> re.Pattern:
    """A shown line as a pattern on a normalised output line: numbers free, ``...`` any text."""
    parts = [re.escape(_numbers_free(p)) for p in shown.strip().split("...")]
    return re.compile(".*".join(parts))


def _numbers_free(text: str) -> str:
    return re.sub(r"\d+(?:[,._:]\d+)*", "0", text.strip())  # 1,234.5 and 12:03 are one number; "7," keeps its comma


def expected_lines_found(shown: list[str], *streams: str) -> str | None:
    """None when every shown line is printed, in order within the stream that printed it (stdout's summary and
    stderr's log interleave on a terminal as they may not in a capture), with any lines between; else the first
    shown line that is missing."""
    printed = [[_numbers_free(line) for line in stream.splitlines()] for stream in streams]
    positions = [0] * len(printed)
    for line in shown:
        if not line.strip() or line.strip() == "...":
            continue
        pattern = _pattern(line)
        for index, lines in enumerate(printed):
            found = next((i for i in range(positions[index], len(lines)) if pattern.fullmatch(lines[i])), None)
            if found is not None:
                positions[index] = found + 1
                break
        else:
            return line
    return None


def outputs_named(command: str) -> list[str]:
    """The files or folders ``command`` says it writes: ``--out X``, and ``aigc export RUN OUT``'s OUT."""
    split = words(command)
    named = [split[i + 1] for i, w in enumerate(split[:-1]) if w == "--out"]
    if split[:2] == ["aigc", "export"]:
        positional = [w for w in split[2:] if not w.startswith("-")]
        named += positional[1:2]
    return named


def pages() -> list[Path]:
    """Every page a reader is sent to: the READMEs and docs/, Chinese edition included."""
    return sorted([*ROOT.glob("README*.md"), *(ROOT / "docs").rglob("*.md")])
