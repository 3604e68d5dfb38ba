"""The sandbox's side of a program's confinement, imported by the harness (standard library only): the limits a
program's process enters, killing everything a program left running, and emptying its scratch folder.

The harness calls:

    prepare_server(settings, reply_fd=...)   once, at its start, before any program: remounts the private /tmp
                                             noexec,nosuid,nodev (and caps its inodes), then drops CAP_SYS_ADMIN and
                                             CAP_SETPCAP from every capability set of the server for good
    enter_program_limits(limits, settings)   per program, in the forked child, before the program runs: joins the
                                             program's cgroup, drops to the worker's uid (as root) and sets the
                                             resource limits
    kill_program(pid, settings)              after the program's run: kills its whole process tree, returns the wait
                                             status of the child
    clean_scratch(settings)                  then empties the scratch folder for the next program

What each guarantee is and where it holds:

- /tmp is empty for every program: `clean_scratch` removes everything through directory descriptors (no path is ever
  longer than one name, so depth, PATH_MAX, unreadable folders, symlinks and fifos do not matter; at most two
  descriptors are open). If something still cannot be removed, the harness tells the host (a ``{"restart": true}``
  line before its reply) and the worker is restarted before its next program: a fresh bubblewrap is a fresh tmpfs.
- Nothing written to /tmp can be run: the mount is noexec (no exec, no shared library load, no PROT_EXEC mapping of
  its files), nosuid and nodev (under bubblewrap; isolation "none" has no mount of its own).
- The program has no capability at all: the server keeps only what it needs to switch uid, kill and clean, and the
  switch to the worker's non-zero uid clears the permitted, effective and ambient sets (its inheritable set is
  emptied at the server's start); bubblewrap's no_new_privs and nosuid mounts keep exec from giving any back.
- Memory, processes and CPU as a whole: with a cgroup (`cgroups.py`) the child joins the program's group before it
  drops privileges, and every process it starts stays there. RLIMIT_AS is then 4x the memory cap (address space
  reserved by threads costs nothing until touched; the cap counts what is touched). Without a cgroup, every process
  gets RLIMIT_AS = memory_bytes (a program's memory is then bounded by memory_bytes x max_processes).
- Descriptors: RLIMIT_NOFILE = max_open_files per process.
"""

import errno
import json
import os
import resource
import sys
import time

# How much of the address space each process may reserve, as a multiple of the cgroup's memory cap.
ADDRESS_SPACE_FACTOR = 4
# Files and folders the private /tmp may hold at once (bounds the cleanup's work).
SCRATCH_INODES = 1 << 16
_server = {"reply_fd": None}

# <linux/mount.h>, <linux/capability.h>, <linux/prctl.h>
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 2, 4, 8, 32, 4096
CAP_SETPCAP, CAP_SYS_ADMIN = 8, 21
PR_CAPBSET_DROP = 24
CAPABILITY_VERSION_3 = 0x20080522


def prepare_server(settings: dict, reply_fd: int | None = None) -> None:
    """Once, at the harness's start: remount the scratch folder noexec,nosuid,nodev and drop the capabilities that
    took (under bubblewrap, ``settings["remount_scratch"]``); remember `reply_fd` for `clean_scratch`'s restart line.
    Raises OSError when the remount or the drop fails: the worker then does not start."""
    _server["reply_fd"] = reply_fd
    if not settings.get("remount_scratch"):
        return
    import ctypes  # the server's start only; the program's child removes it from sys.modules

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result, what):
        if result != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"{what}: {os.strerror(number)}")

    flags = MS_REMOUNT | MS_BIND | MS_NOEXEC | MS_NOSUID | MS_NODEV
    for folder in _scratch_folders(settings):
        path = folder.encode()
        check(libc.mount(None, path, None, flags, None), f"remounting {folder} noexec")
        # the tmpfs itself: an inode cap (a program making millions of empty files would slow every cleanup)
        libc.mount(
            None, path, None, MS_REMOUNT | MS_NOEXEC | MS_NOSUID | MS_NODEV, f"nr_inodes={SCRATCH_INODES}".encode()
        )
    _drop_capabilities(libc, check, (CAP_SYS_ADMIN, CAP_SETPCAP))
    # forget ctypes: a program's `import ctypes` must load it afresh, which the harness's audit hook refuses
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]


def _scratch_folders(settings: dict) -> list:
    """The places a program may write (/tmp, and /dev/shm for multiprocessing's semaphores): each one a tmpfs of its
    own under bubblewrap, remounted noexec and emptied after every program."""
    return list(settings.get("writable") or [settings["workdir"]])


def _drop_capabilities(libc, check, capabilities) -> None:
    """Remove `capabilities` from the effective and permitted sets, empty the inheritable set (which empties the
    ambient one), and keep in the bounding set only what is left permitted: gone for this process and every child."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(CAPABILITY_VERSION_3, 0), (Data * 2)()
    check(libc.capget(ctypes.byref(header), data), "capget")
    kept = [(data[n // 32].permitted >> (n % 32)) & 1 and n not in capabilities for n in range(64)]
    # the bounding set down to what the server keeps (nothing a child could ever regain); CAP_SETPCAP goes last,
    # as dropping from the bounding set needs it
    for capability in sorted(range(64), key=lambda n: n == CAP_SETPCAP):
        if not kept[capability] and libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            if ctypes.get_errno() != errno.EINVAL:  # EINVAL: past the kernel's last capability
                check(-1, f"dropping capability {capability}")
    mask = ~sum(1 << capability for capability in capabilities) & 0xFFFFFFFF
    data[0].effective &= mask
    data[0].permitted &= mask
    for word in data:
        word.inheritable = 0
    check(libc.capset(ctypes.byref(header), data), "capset")


def enter_program_limits(limits: dict, settings: dict) -> None:
    """Join the program's cgroup, drop to the worker's unprivileged uid (when root) and set the resource limits."""
    for procs in settings.get("cgroup_procs", ()):
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    uid = settings["uid"]
    if os.getuid() == 0 and uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    cpu = max(1, int(-(-limits["cpu_time_s"] // 1)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = limits["memory_bytes"] * (ADDRESS_SPACE_FACTOR if settings.get("memory_capped") else 1)
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # the soft limit is the output limit; the hard one (the size of the private /tmp) lets check_stdio write inputs
    resource.setrlimit(
        resource.RLIMIT_FSIZE, (limits["max_output_bytes"], max(limits["max_output_bytes"], limits["tmp_bytes"]))
    )
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if "max_open_files" in limits:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
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


def clean_scratch(settings: dict) -> bool:
    """Remove everything the program left in the working folder; True when it is empty. When it is not, write
    ``{"restart": true}`` to the reply descriptor given to `prepare_server` (the host restarts the worker)."""
    results = [empty_folder(folder) for folder in _scratch_folders(settings)]  # every folder, even after a failure
    empty = all(results)
    if not empty and _server["reply_fd"] is not None:
        os.write(_server["reply_fd"], json.dumps({"restart": True}).encode() + b"\n")
    return empty


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_child(parent: int, name: str) -> int | None:
    """`name` in `parent` opened as a folder (made searchable first when the program locked it), or None."""
    for attempt in range(2):
        try:
            return os.open(name, _DIRECTORY, dir_fd=parent)
        except PermissionError:
            if attempt == 0:
                _chmod(parent, name)
        except OSError:
            return None
    return None


def _chmod(parent: int, name: str) -> None:
    try:
        os.chmod(name, 0o700, dir_fd=parent)  # a folder (O_NOFOLLOW refused symlinks before we get here)
    except OSError:
        pass


def _remove_entry(folder: int, name: str, is_folder: bool) -> bool:
    """unlink (or rmdir) `name` in `folder`, making `folder` writable when the program took that away."""
    for attempt in range(2):
        try:
            if is_folder:
                os.rmdir(name, dir_fd=folder)
            else:
                os.unlink(name, dir_fd=folder)
            return True
        except FileNotFoundError:
            return True
        except OSError as error:
            if attempt or error.errno not in (errno.EACCES, errno.EPERM):
                return False
            try:
                os.chmod(folder, 0o700)
            except OSError:
                return False
    return False


def empty_folder(path: str) -> bool:
    """Remove everything below `path` (the folder itself stays); True when it is empty afterwards.

    Iterative and through descriptors: it goes down with openat(O_DIRECTORY|O_NOFOLLOW), comes back up with "..",
    and holds two descriptors at most, so no depth, path length or permission the program chose can stop it (the
    program is dead by then: nothing moves under it). Names it could not remove are skipped, not retried forever.
    """
    try:
        fd = os.open(path, _DIRECTORY)
    except OSError:
        return False
    names = []  # the path from `path` down to the folder `fd` is, one name per level
    stuck = [set()]  # per level, names that could not be removed
    try:
        while True:
            child = None
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name in stuck[-1]:
                            continue
                        try:
                            is_folder = entry.is_dir(follow_symlinks=False)
                        except OSError:
                            is_folder = False
                        if is_folder:
                            child = entry.name
                            break
                        if not _remove_entry(fd, entry.name, False):
                            stuck[-1].add(entry.name)
            except OSError:
                pass  # an unreadable folder: nothing more can be listed here
            if child is not None:
                below = _open_child(fd, child)
                if below is None:
                    stuck[-1].add(child)
                    continue
                os.close(fd)
                fd = below
                names.append(child)
                stuck.append(set())
                continue
            if not names:  # back at `path`, and nothing left that can be removed
                return not stuck[0] and not os.listdir(fd)
            above = os.open("..", _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, name = above, names.pop()
            stuck.pop()
            if not _remove_entry(fd, name, True):
                stuck[-1].add(name)
    finally:
        os.close(fd)
