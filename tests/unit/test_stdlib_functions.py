"""Instruction pairs from standard-library text: which functions count, and exactly what each example holds."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

from aigc.tasks.chat.stdlib_functions import FunctionExample, as_messages, functions_in

DECORATED = '''\
@functools.lru_cache(maxsize=None)
@staticmethod
def scale(values: list[float], factor: float = 2.0, *rest, clip=None, **options) -> list[float]:
    """Multiply every value by
       the factor,   keeping order.

    Longer explanation that is not part of the prompt.
    """
    return [v * factor for v in values]'''

WITH_DOCTESTS = '''\
async def fetch(url, retries=3):
    """Fetch one URL.

    >>> 1 + 1
    2
    """
    return url  # trailing comment stays'''

TEXT = f'''"""A module docstring is not a function."""
import functools


{DECORATED}


def _private(x):
    """Private helpers are not examples."""
    return x


def undocumented(x):
    return x


def blank_summary(x):
    """

    """


class Widget:
    def method(self):
        """Methods are not examples."""


def outer():
    """Outer is an example."""
    def inner():
        """Nested functions are not examples."""
    return inner


if True:
    def conditional():
        """Only the module body's own functions count."""


{WITH_DOCTESTS}
'''


def test_hand_written_file_gives_exactly_the_expected_examples():
    examples = functions_in(TEXT)

    assert [example.name for example in examples] == ["scale", "outer", "fetch"]
    scale, outer, fetch = examples
    assert scale == FunctionExample(
        name="scale",
        signature="scale(values: list[float], factor: float=2.0, *rest, clip=None, **options)",
        prompt="Write a Python function `scale(values: list[float], factor: float=2.0, *rest, clip=None, **options)` "
        "that: Multiply every value by the factor,   keeping order.",
        source=DECORATED,
        doctests=None,
        line=TEXT.splitlines().index(DECORATED.splitlines()[2]) + 1,
    )
    assert outer.doctests is None and '"""Nested functions are not examples."""' in outer.source
    assert fetch.signature == "fetch(url, retries=3)"
    assert fetch.prompt == "Write a Python function `fetch(url, retries=3)` that: Fetch one URL."
    assert fetch.source == WITH_DOCTESTS
    assert fetch.doctests == "Fetch one URL.\n\n>>> 1 + 1\n2"
    assert TEXT.splitlines()[fetch.line - 1].startswith("async def fetch(")


def test_line_numbers_follow_python_line_ends_not_str_splitlines():
    text = 'x = "\f"\r\ndef f():\r\n    """Form feed above, CRLF line ends."""\r\n    return 1\r\n'

    (example,) = functions_in(text)

    assert example.line == 2
    assert example.source == 'def f():\r\n    """Form feed above, CRLF line ends."""\r\n    return 1'


def test_as_messages_is_a_user_prompt_and_the_assistant_source():
    (example,) = functions_in('def f():\n    """Say hi."""\n    return "hi"\n')

    assert as_messages(example) == [
        {"role": "user", "content": "Write a Python function `f()` that: Say hi."},
        {"role": "assistant", "content": 'def f():\n    """Say hi."""\n    return "hi"'},
    ]


def test_a_file_that_does_not_parse_gives_nothing():
    assert functions_in('def f(:\n    """Broken."""\n') == []
    assert functions_in('def f():\n    """Null byte."""\n\0') == []
    assert functions_in("x = " + "(" * 1000 + ")" * 1000 + '\ndef f():\n    """Too deep."""\n') == []


def test_real_stdlib_textwrap_gives_parseable_deterministic_examples():
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")

    examples = functions_in(text)

    assert {"wrap", "fill", "dedent"} <= {example.name for example in examples}
    assert examples == functions_in(text)
    assert [example.line for example in examples] == sorted(example.line for example in examples)
    for example in examples:
        ast.parse(example.source)
        assert example.source.startswith(("def ", "async def ", "@"))
        assert example.prompt.startswith(f"Write a Python function `{example.signature}` that: ")
