"""The sandbox's side of a program's confinement, imported by the harness (standard library only): the limits a
program's process enters, killing everything a program left running, and emptying its scratch folder.

The harness calls, per program:

    enter_program_limits(limits, settings)   in the forked child, before the program runs: drops to the worker's
                                             uid (as root) and sets the resource limits
    kill_program(pid, settings)              after the program's run: kills its whole process tree, returns the wait
                                             status of the child
    clean_scratch(settings)                  then empties the scratch folder for the next program
"""

import os
import resource
import time


def enter_program_limits(limits: dict, settings: dict) -> None:
    """Drop to the worker's unprivileged uid (when root) and set the program's resource limits."""
    uid = settings["uid"]
    if os.getuid() == 0 and uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    cpu = max(1, int(-(-limits["cpu_time_s"] // 1)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    # the soft limit is the output limit; the hard one (the size of the private /tmp) lets check_stdio write inputs
    resource.setrlimit(
        resource.RLIMIT_FSIZE, (limits["max_output_bytes"], max(limits["max_output_bytes"], limits["tmp_bytes"]))
    )
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if settings["limit_processes"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_processes"],) * 2)


def kill_program(pid: int, settings: dict) -> int:
    """Kill the program's whole process tree and reap the child; returns the child's wait status.

    In its own pid namespace the server kills everything but itself (kill(-1) spares the caller and init). Without
    one, as root, a child that dropped to the worker's uid does it (its signals reach that uid's processes only).
    Without either, only the program's session can be killed: a process that left it survives (isolation "none").
    """
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, 9)
        except OSError:
            pass
    try:
        status = os.waitpid(pid, 0)[1]
    except ChildProcessError:
        status = 0
    if settings["own_pid_namespace"]:
        _kill_all_signalable()
    elif os.getuid() == 0 and settings["uid"]:
        reaper = os.fork()
        if reaper == 0:
            try:
                os.setgroups([])
                os.setgid(settings["uid"])
                os.setuid(settings["uid"])
                _kill_all_signalable(settings["uid"])
            finally:
                os._exit(0)
        os.waitpid(reaper, 0)
    return status


def _kill_all_signalable(uid=None) -> None:
    """kill(-1, SIGKILL) until nothing is left: in a pid namespace of its own until kill(-1) finds no process; with
    `uid` (no namespace: the host's processes remain) until no live process of that uid is left."""
    for attempt in range(5000):
        try:
            os.kill(-1, 9)
        except OSError:  # ESRCH: no process left to signal
            return
        if uid is not None and not _live_processes_of(uid):
            return
        if attempt > 10:
            time.sleep(0.001)


def _live_processes_of(uid: int) -> bool:
    """Whether a process of `uid` other than this one is alive (zombies wait for their reaper and do not count)."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == me:
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                status = handle.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith("Z"):
            return True
    return False


def clean_scratch(settings: dict) -> None:
    """Remove everything the program left in the working folder, folders it made unreadable included."""
    path = settings["workdir"]
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            try:
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
        for name in dirs:
            full = os.path.join(root, name)
            try:
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    os.rmdir(full)
            except OSError:
                pass
