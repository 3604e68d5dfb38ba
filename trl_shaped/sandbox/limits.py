"""What one program may use: `SandboxLimits`, checked when it is built."""

import dataclasses
import importlib.util
import os

from ..validation import check_choice, check_int, check_real
from .cgroups import CGROUP_MODES

ISOLATIONS = ("bwrap", "none")
# Opt-in to running programs without bubblewrap (no namespaces, no mount isolation), for machines without user
# namespaces; a warning is logged on every run.
ISOLATION_ENV = "TRL_SHAPED_SANDBOX_ISOLATION"


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one program's run, per test with a total cap, and the isolation it runs under.

    Args:
        wall_time_s (`float`, defaults to 5.0): seconds of wall-clock time per test (and for the program's start
            before its tests, on problems that are not stdin/stdout); a program still running then is killed and
            scores 0.
        cpu_time_s (`float`, defaults to 5.0): seconds of CPU time per test (RLIMIT_CPU, rounded up to whole
            seconds): each stdin/stdout test's process gets `cpu_time_s`; the one process of other problems gets
            `cpu_time_s` x (tests + 1), at most `total_time_s`.
        memory_bytes (`int`, defaults to 1 GiB): address space of each of the program's processes (RLIMIT_AS).
        max_processes (`int`, defaults to 32): processes and threads the program may have at once (RLIMIT_NPROC, on the
            worker's own uid), the program itself included.
        max_output_bytes (`int`, defaults to 1 MiB): bytes a stdin/stdout test may write to standard output (and
            to any one file); writing more kills it (SIGXFSZ) and fails that test. Also the largest encoded value one
            value test may return. On other problems standard output and error are discarded.
        tmp_bytes (`int`, defaults to 64 MiB): size of the private /tmp and of the private /dev/shm (multiprocessing's
            semaphores), each a tmpfs emptied after every program.
        isolation (`str`, defaults to ``"bwrap"``): ``"bwrap"`` (bubblewrap: namespaces, read-only host, no network)
            or ``"none"`` (no isolation at all, only the limits and a separate process; for machines without user
            namespaces, with a warning on every run). The environment variable ``TRL_SHAPED_SANDBOX_ISOLATION=none``
            opts in as well.
        total_time_s (`float`, defaults to 60.0): seconds of wall-clock time for all of one program's tests
            together (and the cap on its CPU time); beyond it the program is killed and scores 0.
        packages (`tuple[str, ...]`, defaults to ``("numpy",)``): third-party packages (top-level import names)
            programs may import, each installed in this Python; their folders are mounted read-only in the
            sandbox. Anything else outside the standard library is absent.
        max_open_files (`int`, defaults to 256): descriptors each of the program's processes may hold
            (RLIMIT_NOFILE), instead of the trainer's limit.
        cgroups (`str`, defaults to ``"auto"``): cap a program's memory, processes and CPU as a whole, with cgroups
            (``cgroups.py``): ``"auto"`` where the machine allows it (root, or a delegated cgroup v2), else per-process
            limits with a warning in the log; ``"require"`` (an error where unavailable); ``"off"``.


    With cgroups, `memory_bytes` caps the program's memory as a whole (all its processes, its files in /tmp, its
    pipe and socket buffers; no swap) and an out-of-memory kill ends the program, never its worker; each process may
    reserve 4x `memory_bytes` of address space (threads' stacks); `max_processes` counts the program's processes and
    threads (pids cgroup, and RLIMIT_NPROC); each worker gets at most one core, weighted like the others.
    Without cgroups, every process gets its own `memory_bytes` of address space (RLIMIT_AS), so a program's memory is
    bounded by ``memory_bytes x max_processes`` (32 GiB with the defaults), and unix-socket buffers, which no rlimit
    charges, by ``max_processes x max_open_files x 2 x net.core.wmem_max`` (a bound, not a cap).
    """

    wall_time_s: float = 5.0
    cpu_time_s: float = 5.0
    memory_bytes: int = 1 << 30
    max_processes: int = 32
    max_output_bytes: int = 1 << 20
    tmp_bytes: int = 64 << 20
    isolation: str = "bwrap"
    total_time_s: float = 60.0
    packages: tuple[str, ...] = ("numpy",)
    max_open_files: int = 256
    cgroups: str = "auto"

    def __post_init__(self):
        set_value = object.__setattr__  # frozen: normalised values are stored through object.__setattr__
        set_value(self, "wall_time_s", check_real("wall_time_s", self.wall_time_s, minimum=0, open_minimum=True))
        set_value(self, "cpu_time_s", check_real("cpu_time_s", self.cpu_time_s, minimum=0, open_minimum=True))
        set_value(self, "memory_bytes", check_int("memory_bytes", self.memory_bytes, minimum=64 << 20))
        set_value(self, "max_processes", check_int("max_processes", self.max_processes, minimum=1, maximum=4096))
        set_value(self, "max_output_bytes", check_int("max_output_bytes", self.max_output_bytes, minimum=1024))
        set_value(self, "tmp_bytes", check_int("tmp_bytes", self.tmp_bytes, minimum=1 << 20))
        check_choice("isolation", self.isolation, ISOLATIONS)
        set_value(self, "total_time_s", check_real("total_time_s", self.total_time_s, minimum=0, open_minimum=True))
        set_value(self, "packages", _check_packages(self.packages))
        set_value(self, "max_open_files", check_int("max_open_files", self.max_open_files, minimum=16, maximum=1 << 20))
        check_choice("cgroups", self.cgroups, CGROUP_MODES)

    def effective_isolation(self) -> str:
        """`isolation`, or ``"none"`` when the environment variable opts in to it."""
        if os.environ.get(ISOLATION_ENV, "").strip().lower() == "none":
            return "none"
        return self.isolation

    def for_harness(self) -> dict:
        """The limits as the in-sandbox harness reads them."""
        return dataclasses.asdict(self)


def _check_packages(packages) -> tuple[str, ...]:
    """`packages` as a tuple of top-level names, each importable here (ValueError naming `packages` otherwise)."""
    if isinstance(packages, str) or not isinstance(packages, (list, tuple)):
        raise ValueError(f"packages must be a tuple of package names such as ('numpy',), got {packages!r}")
    for name in packages:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"packages must hold top-level import names such as 'numpy', got {name!r}")
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ValueError(
                f"packages: {name!r} is not importable in this Python; packages must name installed top-level "
                "packages (import names, e.g. ('numpy',)), or be () for the standard library only"
            )
    return tuple(packages)
