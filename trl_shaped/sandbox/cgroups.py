"""Control groups for the sandbox's workers (host side): a program's memory, processes and CPU capped as a whole.

Per worker, two groups below the trainer's own cgroup (so that whatever caps the trainer caps them too):

    trl_shaped-<key>            the worker's group: the bubblewrap process and the harness (the fork server) live
                                here, outside the memory cap, so that an out-of-memory kill takes the program and never
                                the server; its CPU is capped at one core (and weighted like any other worker), so that
                                a program's busy processes, however many, cannot starve the program on another worker
    trl_shaped-<key>/program    the program's group: memory (swap off; socket buffers are charged here too) capped at
                                `memory_bytes`, processes and threads at `max_processes`, all of the program's
                                processes together

The forked child joins the program's group (it writes "0" into the group's ``cgroup.procs``, bound into the sandbox)
before it drops to the worker's uid; the program cannot leave it (the files are root's, and it runs as another uid).

Where it holds: cgroup v2 (preferred) when the trainer's cgroup can hand out the memory, pids and cpu controllers
(as root at the top of the hierarchy, or a delegated cgroup without processes of its own); otherwise cgroup v1 with
writable memory, pids and cpu hierarchies (as root). Where neither is available the sandbox falls back to
per-process limits (`SandboxLimits` states that bound) and says so once in the log; ``SandboxLimits(cgroups="require")``
makes that an error instead, and ``"off"`` never uses cgroups.

Groups are removed when their worker stops; groups left by a trainer that died are removed by the next sandbox that
starts under the same cgroup (a group is stale when no live worker holds its key, see `isolation.UidLease`).
"""

import errno
import logging
import os
import signal
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

CGROUP_MODES = ("auto", "require", "off")
PREFIX = "trl_shaped-"
PROGRAM = "program"
SERVER = "server"  # v2 only: a group with children holds no process of its own
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
_fallback_logged = False


class CgroupsUnavailable(RuntimeError):
    """No writable cgroup hierarchy with the memory, pids and cpu controllers."""


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, value) -> None:
    with open(path, "w") as handle:
        handle.write(str(value))


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per hierarchy: {"": v2 path, "memory": v1 path, "cpu,cpuacct": ..., ...}."""
    paths = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, options) of every cgroup mount."""
    mounts = []
    for line in _read("/proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            mounts.append((fields[1].replace("\\040", " "), fields[2], set(fields[3].split(","))))
    return mounts


class Hierarchy:
    """Where the groups go: cgroup v2 (one folder) or v1 (one folder per controller's hierarchy)."""

    def __init__(self, version: int, bases: dict[str, str]):
        self.version = version
        self.bases = bases  # v2: {"": base}; v1: {controller: base}, bases shared by co-mounted controllers

    def __repr__(self):
        return f"Hierarchy(v{self.version}, {self.bases})"


def _find_v2(own: dict[str, str]) -> tuple[Hierarchy | None, str]:
    mounts = [m for m in _mounts() if m[1] == "cgroup2"]
    if not mounts or "" not in own:
        return None, "no cgroup v2 mount"
    base = os.path.normpath(mounts[0][0] + own[""])
    try:
        available = set(_read(os.path.join(base, "cgroup.controllers")).split())
    except OSError as error:
        return None, f"cgroup v2 at {base}: {error}"
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        return None, f"cgroup v2 at {base} lacks the {', '.join(missing)} controller(s)"
    if not os.access(base, os.W_OK):
        return None, f"cgroup v2 at {base} is not writable (needs root or a delegated cgroup)"
    enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
    if not set(CONTROLLERS) <= enabled:
        try:
            _write(os.path.join(base, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS))
        except OSError as error:
            return None, (
                f"cgroup v2 at {base}: cannot enable {', '.join(CONTROLLERS)} for child groups ({error}; a cgroup "
                "with processes of its own cannot: start the trainer in a delegated cgroup of its own, e.g. "
                "`systemd-run --user --scope -p Delegate=yes`, or as root)"
            )
    return Hierarchy(2, {"": base}), ""


def _find_v1(own: dict[str, str]) -> tuple[Hierarchy | None, str]:
    bases = {}
    for controller in CONTROLLERS:
        mount = next((m for m in _mounts() if m[1] == "cgroup" and controller in m[2]), None)
        if mount is None:
            return None, f"no cgroup v1 {controller} hierarchy"
        key = next((k for k in own if controller in k.split(",")), None)
        if key is None:
            return None, f"no cgroup v1 {controller} hierarchy for this process"
        base = os.path.normpath(mount[0] + own[key])
        if not os.access(base, os.W_OK):
            return None, f"cgroup v1 {controller} hierarchy at {base} is not writable (needs root)"
        bases[controller] = base
    return Hierarchy(1, bases), ""


def find_hierarchy() -> tuple[Hierarchy | None, str]:
    """The hierarchy to make groups in (v2 preferred), or None and why there is none."""
    try:
        own = _own_cgroups()
    except OSError as error:
        return None, f"cannot read /proc/self/cgroup: {error}"
    hierarchy, why_not_v2 = _find_v2(own)
    if hierarchy is not None:
        return hierarchy, ""
    hierarchy, why_not_v1 = _find_v1(own)
    if hierarchy is not None:
        return hierarchy, ""
    return None, f"{why_not_v2}; {why_not_v1}"


def resolve(mode: str) -> Hierarchy | None:
    """The hierarchy for `mode` (``SandboxLimits.cgroups``): None for "off" or when "auto" finds none (logged once);
    CgroupsUnavailable for "require" without one."""
    global _fallback_logged
    if mode == "off":
        return None
    hierarchy, reason = find_hierarchy()
    if hierarchy is not None:
        return hierarchy
    if mode == "require":
        raise CgroupsUnavailable(
            f"SandboxLimits(cgroups='require') but no cgroup can cap the programs: {reason}. Run the trainer as root "
            "(cgroup v1 or v2) or in a delegated cgroup v2, or set cgroups='auto' to fall back to per-process limits."
        )
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning(
            "No cgroup for the code sandbox (%s): programs get per-process limits only, so a program's memory is "
            "bounded by memory_bytes x max_processes, not memory_bytes, and its processes share the CPU with "
            "other workers unweighted.",
            reason,
        )
    return None


def _kill_members(folder: str) -> None:
    """SIGKILL every process in the group and its children until none is left (a second or so at most)."""
    for _ in range(200):
        members = []
        for root, _dirs, _files in os.walk(folder):
            try:
                members += [int(pid) for pid in _read(os.path.join(root, "cgroup.procs")).split()]
            except OSError:
                pass
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


def _remove(folder: str) -> None:
    """Kill what is left in the group and remove it (its children first)."""
    if not os.path.isdir(folder):
        return
    _kill_members(folder)
    for path in (os.path.join(folder, PROGRAM), os.path.join(folder, SERVER), folder):
        for attempt in range(100):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as error:  # EBUSY while the last killed processes exit
                if error.errno != errno.EBUSY or attempt == 99:
                    logger.warning("could not remove the sandbox cgroup %s: %s", path, error)
                    break
                time.sleep(0.01)


class WorkerGroups:
    """The two groups of one worker (see the module's docstring), made by `create`, removed by `remove`.

    Args:
        hierarchy (`Hierarchy`): from `resolve`.
        key (`str`): unique on the machine while the worker lives (its uid, or the trainer's pid and a counter).
        memory_bytes (`int`), max_processes (`int`): the program group's caps.
    """

    def __init__(self, hierarchy: Hierarchy, key: str, memory_bytes: int, max_processes: int):
        self.hierarchy, self.name = hierarchy, PREFIX + key
        self.memory_bytes, self.max_processes = memory_bytes, max_processes
        self.folders = sorted({os.path.join(base, self.name) for base in hierarchy.bases.values()})

    def _folder(self, controller: str) -> str:
        return os.path.join(self.hierarchy.bases["" if self.hierarchy.version == 2 else controller], self.name)

    def create(self) -> None:
        """Make the groups and set their caps (a stale group of the same name is removed first)."""
        for folder in self.folders:
            _remove(folder)
        for folder in self.folders:
            os.mkdir(folder)
            os.mkdir(os.path.join(folder, PROGRAM))
            if self.hierarchy.version == 2:
                os.mkdir(os.path.join(folder, SERVER))
        try:
            self._set_caps()
        except OSError:
            self.remove()
            raise

    def _set_caps(self) -> None:
        cpu = self._folder("cpu")
        program = {c: os.path.join(self._folder(c), PROGRAM) for c in CONTROLLERS}
        if self.hierarchy.version == 2:
            _write(os.path.join(cpu, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS))
            _write(os.path.join(cpu, "cpu.weight"), 100)
            _write(os.path.join(cpu, "cpu.max"), f"{CPU_PERIOD_US} {CPU_PERIOD_US}")  # one core
            _write(os.path.join(program["memory"], "memory.max"), self.memory_bytes)
            _write_if_present(os.path.join(program["memory"], "memory.swap.max"), 0)
            _write_if_present(os.path.join(program["memory"], "memory.oom.group"), 1)
            _write(os.path.join(program["pids"], "pids.max"), self.max_processes)
            return
        _write(os.path.join(cpu, "cpu.shares"), 1024)
        _write(os.path.join(cpu, "cpu.cfs_period_us"), CPU_PERIOD_US)
        _write(os.path.join(cpu, "cpu.cfs_quota_us"), CPU_PERIOD_US)  # one core
        _write(os.path.join(program["cpu"], "cpu.shares"), 1024)
        _write(os.path.join(program["memory"], "memory.limit_in_bytes"), self.memory_bytes)
        _write_if_present(os.path.join(program["memory"], "memory.memsw.limit_in_bytes"), self.memory_bytes)
        # TCP buffers are charged to a v1 group only once it has a TCP limit (unix sockets and pipes always are)
        _write_if_present(os.path.join(program["memory"], "memory.kmem.tcp.limit_in_bytes"), self.memory_bytes)
        _write_if_present(os.path.join(program["memory"], "memory.swappiness"), 0)
        _write(os.path.join(program["pids"], "pids.max"), self.max_processes)

    def server_procs(self) -> list[str]:
        """The ``cgroup.procs`` files the worker's bubblewrap joins before it starts."""
        leaf = SERVER if self.hierarchy.version == 2 else ""
        return [os.path.join(folder, leaf, "cgroup.procs") for folder in self.folders]

    def program_procs(self) -> list[str]:
        """The ``cgroup.procs`` files the program's child joins before it drops privileges."""
        return [os.path.join(folder, PROGRAM, "cgroup.procs") for folder in self.folders]

    def peak_memory(self) -> int:
        """The most memory the worker's programs held at once since the groups were made (bytes)."""
        folder = os.path.join(self._folder("memory"), PROGRAM)
        name = "memory.peak" if self.hierarchy.version == 2 else "memory.max_usage_in_bytes"
        return int(_read(os.path.join(folder, name)))

    def remove(self) -> None:
        """Kill whatever is left in the groups and remove them."""
        for folder in self.folders:
            _remove(folder)


def _write_if_present(path: str, value) -> None:
    """Set an optional knob (swap accounting, TCP accounting and OOM groups depend on the kernel's configuration)."""
    try:
        _write(path, value)
    except OSError:
        pass


def remove_stale(hierarchy: Hierarchy, is_stale: Callable[[str], bool]) -> None:
    """Remove the groups a dead trainer left below this trainer's cgroup (`is_stale(key)` decides)."""
    for base in set(hierarchy.bases.values()):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            if name.startswith(PREFIX) and is_stale(name[len(PREFIX) :]):
                _remove(os.path.join(base, name))
