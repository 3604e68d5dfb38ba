"""What goes into the sandbox and what comes out: a `Program` with its tests, a `TestOutcome`."""

import dataclasses

# The test statements of a program read from standard input are calls of this function (see `Program`).
STDIO_CALL = "check_stdio("


@dataclasses.dataclass(frozen=True)
class Program:
    """Python source and the test statements to run after it, in its namespace.

    Args:
        code (`str`): the program.
        tests (`list[str]`): statements that raise when the program is wrong (MBPP's ``test_list`` form, e.g.
            ``assert f(2) == 4``, or HumanEval's ``check(f)``), or calls ``check_stdio(stdin, expected_stdout)`` for a
            program that reads standard input: then every test runs the program afresh as a script with that input
            and its output is compared token by token. How each form is judged: `trl_shaped.sandbox.verdict`.
    """

    code: str
    tests: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "tests", tuple(self.tests))


@dataclasses.dataclass(frozen=True)
class TestOutcome:
    """How a program did.

    Args:
        passed (`int`): tests judged right (0 without a result).
        total (`int`): tests given.
        status (`str`): ``ok`` (the harness reported), ``timeout`` (wall time), ``no_result`` (the program ended or
            was killed before the harness reported: exit tricks, CPU, memory or output limits), or ``error`` (the
            sandbox itself failed; the worker is restarted).
        detail (`str`): a short reason for a status other than ``ok``, or the first failing test.
        results (`tuple[bool, ...]`): per test, whether it was judged right: by the caller's comparison for stdin/
            stdout and value tests, by the harness's report for in-process tests (all False without a result).
        behaviour (`str` or `None`): SHA-256 (hex) of what the program produced on the tests judged outside it
            (output tokens, encoded values, errors as a marker), in test order: programs that behave alike on the
            tests' inputs share it, whatever their text. None without such tests or without a result.
    """

    __test__ = False  # not a pytest test class

    passed: int
    total: int
    status: str
    detail: str = ""
    results: tuple[bool, ...] = ()
    behaviour: str | None = None

    @property
    def fraction(self) -> float:
        """Share of tests passed (0.0 without tests or without a report)."""
        return self.passed / self.total if self.total and self.status == "ok" else 0.0
