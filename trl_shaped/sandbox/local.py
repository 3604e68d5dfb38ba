"""`LocalSandbox`: warm workers on this machine, one program at a time each, all of them busy in parallel."""

import atexit
import logging
import os
import threading
from collections.abc import Sequence

from ..validation import check_int
from . import cgroups, verdict
from .backend import Sandbox
from .isolation import MAX_WORKERS, key_is_stale
from .limits import SandboxLimits
from .programs import Program, TestOutcome
from .worker import Worker, WorkerError

logger = logging.getLogger(__name__)
UNISOLATED_WARNING = (
    "Running model-written programs WITHOUT a sandbox (isolation 'none'): they can read host files and reach the "
    "network. Use this only where user namespaces are unavailable and the programs are trusted."
)


class LocalSandbox(Sandbox):
    """A pool of warm workers, each a forking harness inside its own bubblewrap sandbox.

    Programs are dealt to the workers from one queue by one thread per worker; a worker forks a fresh child per
    program from a warm interpreter, so a program costs a fork, not an interpreter start. Workers start on the first
    `run_tests` (a RuntimeError then says why isolation is unavailable) and are restarted after a failure.

    Each worker runs its programs as a uid no other worker on the machine has, and (where cgroups are available, see
    `SandboxLimits.cgroups`) in cgroups of its own that cap a program's memory, processes and CPU as a whole.

    Args:
        limits (`SandboxLimits`, *optional*): the limits of every program (defaults: `SandboxLimits()`).
        workers (`int`, *optional*): programs run at once; defaults to the number of CPU cores (at most 64).
    """

    def __init__(self, limits: SandboxLimits | None = None, workers: int | None = None):
        self.limits = limits if limits is not None else SandboxLimits()
        if not isinstance(self.limits, SandboxLimits):
            raise ValueError(f"limits must be a SandboxLimits, got {type(self.limits).__name__}")
        default = min(os.cpu_count() or 1, MAX_WORKERS)
        self.num_workers = check_int("workers", default if workers is None else workers, minimum=1, maximum=MAX_WORKERS)
        self._workers = []
        self._isolation = None
        # "require" without a usable cgroup is refused here, before any program runs
        self._hierarchy = cgroups.resolve(self.limits.cgroups)
        self._lock = threading.Lock()  # one run_tests at a time: each worker serves one program at once
        atexit.register(self.close)

    def _ensure_workers(self) -> None:
        isolation = self.limits.effective_isolation()
        if isolation != self._isolation:
            self.close()
            self._isolation = isolation
            if self._hierarchy is not None:  # groups that a trainer which died left behind
                cgroups.remove_stale(self._hierarchy, key_is_stale)
            self._workers = [Worker(i, isolation, self.limits, self._hierarchy) for i in range(self.num_workers)]
        for worker in self._workers:  # started from the calling thread: bubblewrap dies with the thread that made it
            if not worker.alive():
                worker.start()

    def run_tests(self, programs: Sequence[Program]) -> list[TestOutcome]:
        programs = list(programs)
        for i, program in enumerate(programs):
            if not isinstance(program, Program):
                raise ValueError(f"programs[{i}] must be a Program, got {type(program).__name__}")
        if not programs:
            return []
        with self._lock:
            self._ensure_workers()
            if self._isolation == "none":
                logger.warning(UNISOLATED_WARNING)
            outcomes = [None] * len(programs)
            next_index = iter(range(len(programs)))
            take = threading.Lock()

            def serve(worker: Worker) -> None:
                while True:
                    with take:
                        index = next(next_index, None)
                    if index is None:
                        return
                    outcomes[index] = self._run_one(worker, programs[index])

            threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in self._workers[1:]]
            for thread in threads:
                thread.start()
            serve(self._workers[0])  # the calling thread serves too, and restarts stay with a thread that lives on
            for thread in threads:
                thread.join()
        return outcomes

    def _run_one(self, worker: Worker, program: Program) -> TestOutcome:
        """One program: its tests parsed into their forms here, only what the program needs sent to the harness,
        the verdict computed here from what it produced (`verdict.py`)."""
        total = len(program.tests)
        if not total:
            return TestOutcome(0, 0, "ok", "no tests")
        request, forms = verdict.request(program.code, program.tests, self.limits.for_harness())
        try:
            reply = worker.run(request, self.limits.total_time_s)
        except WorkerError as error:
            return TestOutcome(0, total, "error", f"sandbox worker failed: {error}", (False,) * total)
        except RuntimeError as error:  # the worker could not be restarted (from a thread other than the caller's)
            return TestOutcome(0, total, "error", str(error), (False,) * total)
        return verdict.outcome(forms, reply)

    def close(self) -> None:
        """Stop the workers: their processes, uids and cgroups are released (started again on the next run)."""
        for worker in self._workers:
            worker.stop()
