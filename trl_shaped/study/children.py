"""The processes a study starts end with it: no cell worker or stage command outlives the process that started it.

- `start_child` starts a process that the kernel signals (SIGTERM) when the thread that started it dies, however it
  dies (`prctl(PR_SET_PDEATHSIG)` on Linux, set between fork and exec): a study or cell process killed with SIGKILL
  takes its children with it.
- `end_children_on_signals` installs handlers for SIGTERM, SIGINT and SIGHUP in the main thread: they terminate every
  live child, then let the signal do what it did before (SIGINT raises KeyboardInterrupt; SIGTERM and SIGHUP end the
  process with the signal's status).

So a stopped study leaves nothing that writes into its cells, and its cells' locks (held by the workers) are free for
the next run. Elsewhere than Linux only the handlers apply.

Handing a lock to a child (`start_child(..., ready=True)`, `tell_parent_ready`): the parent holds a cell's lock while
its worker starts (imports take seconds) and lets it go only when the worker says it is about to take the lock itself
(a byte on a pipe named by `READY_FD_ENV`), so no other process takes the cell in between.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
READY_FD_ENV = "TRL_SHAPED_READY_FD"  # the pipe on which a worker tells its parent it is about to take the lock
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()  # loaded before any fork: the child only calls into it


def _die_with_parent() -> None:
    """Run in the child between fork and exec: SIGTERM when the parent thread dies. Only a system call (no import,
    no lock), so it is safe in a process with threads."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_child(argv: list[str], ready: bool = False, **popen_kwargs) -> subprocess.Popen:
    """`subprocess.Popen(argv, **popen_kwargs)` for a process that ends with this one (see the module docstring);
    it counts as live, for the signal handlers, until `wait_child` returns. With `ready`, this returns once the child
    has called `tell_parent_ready` (or has ended)."""
    preexec = _die_with_parent if _LIBC is not None else None
    read_end = write_end = None
    if ready:
        read_end, write_end = os.pipe()
        env = dict(popen_kwargs.pop("env", None) or os.environ)
        popen_kwargs |= {"env": env | {READY_FD_ENV: str(write_end)}, "pass_fds": (write_end,)}
    try:
        with _live_lock:  # a signal handler sees every started child
            process = subprocess.Popen(argv, preexec_fn=preexec, **popen_kwargs)  # preexec: one system call
            _live.add(process)
    finally:
        if write_end is not None:
            os.close(write_end)  # the child's copy stays: EOF comes when it says so or ends
    if read_end is not None:
        os.read(read_end, 1)
        os.close(read_end)
    return process


def tell_parent_ready() -> None:
    """In a child started with `ready`: tell the parent it may let go of the lock this process takes next (nothing
    when started otherwise, e.g. by hand)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        try:
            os.write(int(fd), b"1")
            os.close(int(fd))
        except OSError:
            pass


def wait_child(process: subprocess.Popen) -> int:
    """Wait for a child of `start_child`; returns its exit status."""
    try:
        return process.wait()
    finally:
        with _live_lock:
            _live.discard(process)


def terminate_children() -> None:
    """SIGTERM to every live child (they end their own children: the cell worker dies with them, accelerate forwards
    the signal to its processes)."""
    for process in list(_live):
        if process.poll() is None:
            process.terminate()


def end_children_on_signals() -> None:
    """Install the handlers of the module docstring (main thread only; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous = signal.getsignal(signum)
        if getattr(previous, "ends_children", False):
            continue  # installed already

        def handler(signum, frame, previous=previous):
            terminate_children()
            if callable(previous):
                return previous(signum, frame)  # SIGINT: KeyboardInterrupt
            if previous == signal.SIG_IGN:
                return None
            signal.signal(signum, signal.SIG_DFL)  # end with the signal's own status
            signal.raise_signal(signum)
            return None

        handler.ends_children = True
        signal.signal(signum, handler)
