"""Instruction pairs from Python's own standard library: "write a function that <docstring>" -> its source.

Every public, documented, module-level function of a file becomes one :class:`FunctionExample`: the prompt is
its signature plus the first paragraph of its docstring, the answer is its source exactly as written (decorators
and docstring included). Docstrings with ``>>>`` examples are kept apart as ``doctests``, so generated answers can
be checked by running them (:mod:`aigc.code_checks`).

This module reads text, never the file system: the caller decides which files make up the corpus. A file that
does not parse gives no examples and never stops the corpus.
"""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from dataclasses import dataclass

# Python ends a line at \n, \r\n or a lone \r (never at \f or \v as str.splitlines does), so ast's line
# numbers index this split, not splitlines().
_LINE_END = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")
_DOCTEST_PROMPT = re.compile(r"^\s*>>>", re.M)


@dataclass(frozen=True)
class FunctionExample:
    """One documented top-level function: the instruction (``prompt``) and the answer (``source``)."""

    name: str
    signature: str  # "name(a, b=1, *args, **kw)", arguments as ast.unparse renders them, annotations kept
    prompt: str  # "Write a Python function `signature` that: <first paragraph of the docstring>"
    source: str  # the full source, decorators included, exactly as in the file (no trailing newline)
    doctests: str | None  # the cleaned docstring when it has '>>>' examples, else None
    line: int  # 1-based line of the `def`


def _first_paragraph(docstring: str) -> str:
    """The cleaned docstring up to its first blank line, its lines joined by single spaces."""
    lines: list[str] = []
    for line in inspect.cleandoc(docstring).splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def _example(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> FunctionExample | None:
    """The example for one module-level function of the file split into ``lines``; None if private or undocumented."""
    docstring = ast.get_docstring(node, clean=True)
    summary = _first_paragraph(docstring) if docstring else ""
    if not summary or node.name.startswith("_"):
        return None
    signature = f"{node.name}({ast.unparse(node.args)})"
    # A module-level def (and its decorators) starts at column 0: whole lines are its source, nothing to dedent.
    first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
    source = "".join(lines[first - 1 : node.end_lineno]).rstrip("\r\n")
    return FunctionExample(
        name=node.name,
        signature=signature,
        prompt=f"Write a Python function `{signature}` that: {summary}",
        source=source,
        doctests=docstring if _DOCTEST_PROMPT.search(docstring or "") else None,
        line=node.lineno,
    )


def functions_in(text: str) -> list[FunctionExample]:
    """Top-level (module-level, not nested, not methods) ``def``/``async def`` functions of one Python file's text
    that have a docstring whose first paragraph is non-empty, in file order. Private functions (name starting
    with "_") are skipped. A file that does not parse (SyntaxError, ValueError for null bytes, RecursionError
    for too deep nesting, also when rendering a signature) gives []."""
    try:
        with warnings.catch_warnings():  # old files' invalid escapes warn; they are read, not run
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
        lines = _LINE_END.split(text)
        nodes = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return [example for node in nodes if (example := _example(node, lines)) is not None]
    except (SyntaxError, ValueError, RecursionError):
        return []


def as_messages(example: FunctionExample) -> list[dict[str, str]]:
    """The example as a two-turn chat: the prompt from the user, the source from the assistant."""
    return [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.source}]
