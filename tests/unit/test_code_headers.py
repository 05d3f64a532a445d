"""The code evaluation's prompts: top-level function headers spread over the held-out files."""

from aigc.tasks.text.evaluation import function_headers

A = "def a1(x):\n    return x\n\n\ndef a2(y):\n    return y\n\n\ndef a3():\n    pass\n"
B = "class K:\n    def method(self):\n        pass\n\n\ndef b1(n=3):\n    return n\n"
BROKEN = "def broken(:\n"


def test_every_files_first_function_comes_before_any_files_second():
    assert function_headers([A, B, BROKEN], 3) == ["def a1(x):", "def b1(n=3):", "def a2(y):"]
    assert function_headers([A, B], 10) == ["def a1(x):", "def b1(n=3):", "def a2(y):", "def a3():"]
    assert function_headers([BROKEN], 4) == []


DOCUMENTED = ('def f(x):\n    """Return x."""\n    return x\n\n\ndef only_doc():\n    """Nothing after."""\n\n\n'
              'def g(y):\n    return y\n\n\ndef h(z):\n    """Twice z.\n\n    More.\n    """\n    return 2 * z\n')


def test_docstring_prompts_hold_the_signature_and_docstring_of_functions_with_code_after_it():
    assert function_headers([DOCUMENTED], 5, docstring=True) == [
        'def f(x):\n    """Return x."""', 'def h(z):\n    """Twice z.\n\n    More.\n    """']
    long = 'def k():\n    """' + "word " * 60 + '"""\n    return 1\n'
    assert function_headers([long], 5, docstring=True) == []  # too long for the context
