"""One warm worker seen from the trainer: a harness process (inside bubblewrap or bare) and its two pipes.

Every wait on the worker has a deadline, and a worker that misses one, answers garbage or dies is killed with its
whole process group and started again on the next program: a program can cost its own score, never the caller's.

While it runs, a worker holds a uid of its own on the machine (`isolation.UidLease`) and, where cgroups are
available, its two groups (`cgroups.WorkerGroups`); both are released when it stops. A harness that could not empty
/tmp after a program says so before its reply, and the worker is restarted before its next program.
"""

import json
import logging
import os
import select
import signal
import subprocess
import tempfile
import time

from . import cgroups
from .confine import empty_folder
from .isolation import HARNESS_ENV, NO_NAMESPACES, UidLease, bare_command, bwrap_command, join_groups
from .limits import SandboxLimits

logger = logging.getLogger(__name__)
# Beyond a program's wall time, how long the harness may take to kill it, clean up and reply.
REPLY_GRACE_S = 10.0
START_TIMEOUT_S = 60.0
MAX_REPLY_BYTES = 128 << 20  # a reply carries the encoded values of value tests


class WorkerError(RuntimeError):
    """The worker failed (not the program): no reply in time, a malformed reply, or a dead process."""


class Worker:
    """The harness process of worker `index`, started on first use.

    Args:
        index (`int`): the worker's number in its pool.
        isolation (`str`): ``bwrap`` or ``none``.
        limits (`SandboxLimits`): the programs' limits (the size of /tmp, the cgroup's caps, the packages mounted read-only).
        hierarchy (`cgroups.Hierarchy`, *optional*): where to make the worker's groups (None: no cgroups).
    """

    def __init__(self, index: int, isolation: str, limits: SandboxLimits, hierarchy=None):
        self.index, self.isolation, self.limits, self.hierarchy = index, isolation, limits, hierarchy
        self.process = None
        self.workdir = None
        self.lease = None
        self.groups = None
        self._restart = False
        self._buffer = b""

    @property
    def uid(self) -> int | None:
        """The uid the worker's programs run as while it lives (0: no switch; None: not started)."""
        return self.lease.uid if self.lease is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the harness and wait for its "ready" line; RuntimeError with the reason when the sandbox cannot
        be created (no bubblewrap, no user namespaces)."""
        self.stop()
        self._restart = False
        self.lease = UidLease()
        server_procs, program_procs = [], []
        if self.hierarchy is not None:
            self.groups = cgroups.WorkerGroups(
                self.hierarchy, self.lease.key, self.limits.memory_bytes, self.limits.max_processes
            )
            try:
                self.groups.create()
            except OSError as error:
                self.groups.remove()
                self.groups = None
                if self.limits.cgroups == "require":
                    self.stop()
                    raise RuntimeError(f"could not make the sandbox worker's cgroups: {error}") from None
                logger.warning("could not make the sandbox worker's cgroups (%s): per-process limits only", error)
            else:
                server_procs, program_procs = self.groups.server_procs(), self.groups.program_procs()
        options = {"uid": self.lease.uid, "program_procs": program_procs, "memory_capped": bool(program_procs)}
        if self.isolation == "bwrap":
            command = bwrap_command(self.index, self.limits.tmp_bytes, self.limits.packages, **options)
        else:
            self.workdir = tempfile.mkdtemp(prefix="trl_shaped_sandbox_")
            os.chmod(self.workdir, 0o1777)  # the program's uid (root trainers) must be able to write there
            command = bare_command(self.index, self.workdir, self.limits.packages, **options)
        self.process = subprocess.Popen(
            join_groups(server_procs, command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(HARNESS_ENV),
            cwd=self.workdir or "/",
            start_new_session=True,  # its own process group: killed as one, untouched by the terminal's Ctrl-C
        )
        self._buffer = b""
        try:
            ready = self._read_line(time.monotonic() + START_TIMEOUT_S)
        except WorkerError as error:
            reason = self._stderr() or str(error)
            self.stop()
            if self.isolation == "bwrap":
                raise RuntimeError(NO_NAMESPACES.format(reason=reason)) from None
            raise RuntimeError(f"the sandbox worker did not start: {reason}") from None
        if ready.get("ready") is not True:
            self.stop()
            raise RuntimeError(f"the sandbox worker did not start: {ready!r}")
        self.process.stderr.close()  # the harness points its own stderr at /dev/null once ready

    def _stderr(self) -> str:
        try:
            self.process.wait(timeout=5)
            return self.process.stderr.read(4000).decode(errors="replace").strip()
        except (subprocess.TimeoutExpired, OSError, ValueError):
            return ""

    def stop(self) -> None:
        """Kill the worker's whole process group (bubblewrap takes its pid namespace with it)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass
            self.process = None
        if self.groups is not None:  # kills whatever of the worker is left, then removes the groups
            self.groups.remove()
            self.groups = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.workdir is not None:
            empty_folder(self.workdir)  # through descriptors: shutil.rmtree recurses and stops at a deep folder
            try:
                os.rmdir(self.workdir)
            except OSError:
                pass
            self.workdir = None

    def _read_line(self, deadline: float) -> dict:
        fd = self.process.stdout.fileno()
        chunks, size = [self._buffer], len(self._buffer)  # joined once: replies carrying values may be large
        while b"\n" not in chunks[-1]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError("no reply in time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise WorkerError("the worker ended")
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise WorkerError("reply too long")
        line, self._buffer = b"".join(chunks).split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise WorkerError("malformed reply") from None
        if not isinstance(reply, dict):
            raise WorkerError("malformed reply")
        return reply

    def run(self, request: dict, wall_time_s: float) -> dict:
        """Send one request and return the harness's reply; WorkerError (after killing the worker) on any failure."""
        if not self.alive():
            self.start()
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            deadline = time.monotonic() + wall_time_s + REPLY_GRACE_S
            reply = self._read_line(deadline)
            if reply == {"restart": True}:  # the harness could not empty /tmp: its reply follows
                self._restart = True
                reply = self._read_line(deadline)
        except (OSError, ValueError, WorkerError) as error:
            self.stop()
            raise WorkerError(str(error) or type(error).__name__) from None
        if self._restart:  # a fresh bubblewrap is a fresh /tmp for the next program
            self.stop()
        return reply
