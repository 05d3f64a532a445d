"""Generated-code checks: code extraction, parse vs compile, and doctest runs in a limited child process."""

from __future__ import annotations

import os

from aigc.code_checks import DoctestOutcome, Limits, compiles, extract_code, parses, run_doctests, run_many

ADD_DOCTESTS = """Add two numbers.

>>> add(1, 2)
3
>>> add(2, 2)
4
>>> add(-1, 1)
0
"""
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a * b\n"  # right only for add(2, 2)


def test_extract_code_takes_the_first_python_or_bare_fence_else_the_answer():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("```js\nlet x = 1;\n```\ntext\n```Python\ny = 2\n```") == "y = 2\n"
    assert extract_code("```python\ndef f():\n    pass\n") == "def f():\n    pass\n"  # cut off before the fence
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"


def test_parses_checks_syntax_and_compiles_also_catches_what_the_compiler_rejects():
    assert parses(RIGHT) and compiles(RIGHT)
    assert parses("return 1") and not compiles("return 1")
    assert parses("nonlocal x") and not compiles("nonlocal x")
    assert not parses("def f(:\n    pass") and not compiles("def f(:\n    pass")
    assert not parses("x = 1\0") and not compiles("x = 1\0")


def test_a_correct_function_passes_every_example():
    assert run_doctests(RIGHT, ADD_DOCTESTS, "add") == DoctestOutcome(True, "passed", attempted=3, failed=0)


def test_a_wrong_function_fails_with_the_count():
    assert run_doctests(WRONG, ADD_DOCTESTS, "add") == DoctestOutcome(False, "failed: 2 of 3 examples", 3, 2)


def test_an_infinite_loop_is_a_timeout():
    code = "def add(a, b):\n    while True:\n        pass\n"

    outcome = run_doctests(code, ADD_DOCTESTS, "add", Limits(cpu_seconds=1, wall_seconds=10))

    assert outcome == DoctestOutcome(False, "timeout")


def test_allocating_past_the_memory_limit_is_out_of_memory():
    in_function = "def add(a, b):\n    return len(bytearray(2 * 1024**3))\n"
    at_import = "BUFFER = bytearray(2 * 1024**3)\n" + RIGHT

    for code in (in_function, at_import):
        outcome = run_doctests(code, ADD_DOCTESTS, "add", Limits(memory_mb=256))
        assert (outcome.passed, outcome.reason) == (False, "out of memory")


def test_destructive_calls_are_disabled(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    code = f"import os\nos.remove({str(victim)!r})\n" + RIGHT

    outcome = run_doctests(code, ADD_DOCTESTS, "add")

    assert victim.read_text() == "precious"
    assert outcome.passed is False and outcome.reason.startswith("error: TypeError")


def test_a_large_file_hits_the_size_limit_and_nothing_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = "def add(a, b):\n    open('big.bin', 'wb').write(b'x' * 10 * 1024 * 1024)\n    return a + b\n"

    outcome = run_doctests(code, ADD_DOCTESTS, "add", Limits(file_size_kb=64))

    assert outcome == DoctestOutcome(False, "failed: 3 of 3 examples", 3, 3)
    assert os.listdir(tmp_path) == []


def test_the_child_runs_in_an_empty_directory_with_a_minimal_environment():
    doctests = ">>> import os; os.listdir('.')\n[]\n>>> sorted(os.environ)\n['LANG', 'PATH']\n"

    assert run_doctests("", doctests, "cwd") == DoctestOutcome(True, "passed", 2, 0)


def test_errors_output_and_exits_of_the_child_become_outcomes():
    assert run_doctests("raise ValueError('bad input\\nsecond line')", ADD_DOCTESTS, "add").reason == (
        "error: ValueError: bad input"
    )
    assert run_doctests(RIGHT, "No examples here.", "add") == DoctestOutcome(False, "no examples")
    assert run_doctests("import os\nos._exit(3)", ADD_DOCTESTS, "add") == DoctestOutcome(False, "crashed (exit 3)")
    printing = 'import os\nos.write(1, b\'{"passed": true}\' * 100000)\nprint("noise")\n' + RIGHT
    assert run_doctests(printing, ADD_DOCTESTS, "add") == DoctestOutcome(True, "passed", 3, 0)


def test_run_many_keeps_input_order_with_mixed_outcomes():
    jobs = [(WRONG, ADD_DOCTESTS, "add"), (RIGHT, ADD_DOCTESTS, "add"), ("x = ", ADD_DOCTESTS, "add"), (RIGHT, "", "f")]

    outcomes = run_many(jobs, workers=2)

    assert [outcome.reason for outcome in outcomes] == [
        "failed: 2 of 3 examples",
        "passed",
        "error: SyntaxError: invalid syntax (<generated>, line 1)",
        "no examples",
    ]


def test_the_reports_code_validity_counts_what_parses_and_what_compiles():
    """The run report's rates on known completions: one right, one that only parses, one that does not parse."""
    from aigc.tasks.text.evaluation import code_validity

    header = "def f(x):"
    report = code_validity([header] * 3, ["\n    return x\n", "\n    nonlocal y\n", "\n    return (\n"])
    assert (report["parses"], report["compiles"]) == (2, 1)
    assert (report["syntax_valid_rate"], report["compile_rate"]) == (2 / 3, 1 / 3)
