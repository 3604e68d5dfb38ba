"""Converters from the common code-benchmark formats to the ``tests`` column the code judge reads.

Every converter returns a list of Python statements that raise when the program is wrong:

    mbpp_tests(test_list, test_setup_code)   MBPP: the asserts as they are (setup code, if any, before each)
    humaneval_tests(test, entry_point)       HumanEval: one statement, the test code (which defines ``check``)
                                             followed by ``check(<entry_point>)``; HumanEval is scored all or nothing
    stdio_tests(inputs, outputs)             standard input/output pairs (LiveCodeBench, competitive programming):
                                             one ``check_stdio(stdin, expected)`` per pair

``check_stdio`` is provided by the sandbox's harness: when every test of a problem is such a call, the program is a
script that reads standard input; each call runs it afresh as ``__main__`` with that input and compares its standard
output with the expected one token by token (split on whitespace; ``sys.exit(0)`` at the end is allowed).
"""

from ..sandbox.programs import STDIO_CALL


def _statements(name: str, value) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings, got {type(value).__name__}")
    return list(value)


def mbpp_tests(test_list, test_setup_code: str = "") -> list[str]:
    """MBPP's ``test_list`` (assert statements), each preceded by ``test_setup_code`` when there is one."""
    tests = _statements("test_list", test_list)
    if not isinstance(test_setup_code, str):
        raise ValueError(f"test_setup_code must be a string, got {type(test_setup_code).__name__}")
    setup = test_setup_code.strip()
    return [f"{setup}\n{test}" if setup else test for test in tests]


def humaneval_tests(test: str, entry_point: str) -> list[str]:
    """HumanEval's ``test`` (code defining ``check(candidate)``) and ``entry_point`` (the function's name) as one
    statement that defines ``check`` and calls it on the program's function."""
    if not isinstance(test, str) or not test.strip():
        raise ValueError("test must be HumanEval's non-empty test code (defining check(candidate))")
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
    return [f"{test.rstrip()}\n\ncheck({entry_point})"]


def stdio_tests(inputs, outputs) -> list[str]:
    """One ``check_stdio(stdin, expected_stdout)`` statement per input/output pair."""
    inputs, outputs = _statements("inputs", inputs), _statements("outputs", outputs)
    if len(inputs) != len(outputs):
        raise ValueError(f"inputs and outputs must pair up, got {len(inputs)} inputs and {len(outputs)} outputs")
    return [f"{STDIO_CALL}{stdin!r}, {expected!r})" for stdin, expected in zip(inputs, outputs, strict=True)]
