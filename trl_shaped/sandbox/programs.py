"""What goes into the sandbox and what comes out: a `Program` with its tests, a `TestOutcome`."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Program:
    """Python source and the test statements to run after it, in its namespace.

    Args:
        code (`str`): the program.
        tests (`list[str]`): statements that raise when the program is wrong (MBPP's ``test_list`` form), or calls
            ``check_stdio(stdin, expected_stdout)`` for a program that reads standard input: then every test runs the
            program afresh as a script with that input and compares its output token by token.
    """

    code: str
    tests: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "tests", tuple(self.tests))


@dataclasses.dataclass(frozen=True)
class TestOutcome:
    """How a program did.

    Args:
        passed (`int`): tests that returned, as reported by the harness after every test ran (0 without a report).
        total (`int`): tests given.
        status (`str`): ``ok`` (the harness reported), ``timeout`` (wall time), ``no_result`` (the program ended or
            was killed before the harness reported: exit tricks, CPU, memory or output limits), or ``error`` (the
            sandbox itself failed; the worker is restarted).
        detail (`str`): a short reason for a status other than ``ok``.
    """

    __test__ = False  # not a pytest test class

    passed: int
    total: int
    status: str
    detail: str = ""

    @property
    def fraction(self) -> float:
        """Share of tests passed (0.0 without tests or without a report)."""
        return self.passed / self.total if self.total and self.status == "ok" else 0.0
