"""The code checks of a chat run's report: parse and compile rates, and doctests only when asked."""

from __future__ import annotations

from aigc.tasks.chat.evaluation import code_report

REFERENCE = '''def double(x):
    """Twice x.

    >>> double(2)
    4
    >>> double("a")
    'aa'
    """
    return 2 * x'''
RIGHT = "Here it is:\n```python\ndef double(x):\n    return x + x\n```"
WRONG = "def double(x):\n    return x * 3"
BROKEN = "def double(x)\n    return"


def test_parse_and_compile_always_doctests_only_when_opted_in():
    answers, references = [RIGHT, WRONG, BROKEN], [REFERENCE] * 3
    quiet = code_report(answers, references, execute=False)
    assert (quiet["parses"], quiet["compiles"], quiet["completions"]) == (2, 2, 3)
    assert quiet["doctests"]["run"] is False and quiet["doctests"]["with_doctests"] == 3
    ran = code_report(answers, references, execute=True)["doctests"]
    assert ran["run"] is True and ran["passed"] == 1 and abs(ran["pass_rate"] - 1 / 3) < 1e-9
    assert ran["reasons"][0] == "passed" and ran["reasons"][1].startswith("failed")


def test_references_without_doctests_are_not_counted():
    report = code_report([RIGHT], ["def f():\n    \"\"\"No examples.\"\"\"\n    return 1"], execute=True)
    assert report["doctests"]["with_doctests"] == 0 and report["doctests"]["pass_rate"] is None  # 0 of 0 is no rate


def test_a_reply_that_starts_after_assistant_colon_still_parses():
    """aigc's template renders ``Assistant: <reply>``, so a fine-tuned model's reply begins with that space."""
    assert code_report([" def f(x):\n    return x"], ["def f(x):\n    return x"], execute=False)["parses"] == 1


def test_an_answer_that_defines_no_function_does_not_count_as_parsing():
    report = code_report(["", "x = 1", "def f():\n    return 1"], ["def f():\n    return 1"] * 3, execute=False)
    assert (report["parses"], report["compiles"]) == (1, 1)


def test_a_reference_that_fails_its_doctests_alone_is_left_out():
    needs_module = 'def f(x):\n    """Helper use.\n\n    >>> f(1)\n    2\n    """\n    return _helper(x)'
    report = code_report(["def f(x):\n    return x + 1"], [needs_module], execute=True)["doctests"]
    assert report["with_doctests"] == 0 and report["needing_their_module"] == 1 and report["pass_rate"] is None
