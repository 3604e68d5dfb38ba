"""The sandbox interface: anything that runs programs against their tests and returns one `TestOutcome` each.

`LocalSandbox` (bubblewrap on this machine, `local.py`) is the only backend and the default. A backend for a remote
sandbox service (Sandbox Fusion's HTTP API, as verl uses) is not provided: it would need testing against the real
service, which this project cannot run in its tests.
"""

import abc
from collections.abc import Sequence

from .programs import Program, TestOutcome


class Sandbox(abc.ABC):
    """Runs untrusted programs with their tests, isolated from the caller.

    Implementations never raise because of a program: a program that fails, hangs, floods or attacks gets an outcome
    with nothing passed. They may raise at set-up, when isolation is unavailable.
    """

    @abc.abstractmethod
    def run_tests(self, programs: Sequence[Program]) -> list[TestOutcome]:
        """One outcome per program, in order."""

    def close(self) -> None:  # noqa: B027 - a backend without resources has nothing to release
        """Release the backend's workers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
