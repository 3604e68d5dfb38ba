"""One warm worker seen from the trainer: a harness process (inside bubblewrap or bare) and its two pipes.

Every wait on the worker has a deadline, and a worker that misses one, answers garbage or dies is killed with its
whole process group and started again on the next program: a program can cost its own score, never the caller's.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

from .isolation import NO_NAMESPACES, bare_command, bwrap_command

# Beyond a program's wall time, how long the harness may take to kill it, clean up and reply.
REPLY_GRACE_S = 10.0
START_TIMEOUT_S = 60.0
MAX_REPLY_BYTES = 128 << 20  # a reply carries the encoded values of value tests


class WorkerError(RuntimeError):
    """The worker failed (not the program): no reply in time, a malformed reply, or a dead process."""


class Worker:
    """The harness process of worker `index`, started on first use.

    Args:
        index (`int`): the worker's number in its pool (selects its uid when the trainer is root).
        isolation (`str`): ``bwrap`` or ``none``.
        tmp_bytes (`int`): size of the private /tmp under bubblewrap.
        packages (`tuple[str, ...]`): third-party packages the programs may import (mounted read-only).
    """

    def __init__(self, index: int, isolation: str, tmp_bytes: int, packages=()):
        self.index, self.isolation, self.tmp_bytes, self.packages = index, isolation, tmp_bytes, tuple(packages)
        self.process = None
        self.workdir = None
        self._buffer = b""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the harness and wait for its "ready" line; RuntimeError with the reason when the sandbox cannot
        be created (no bubblewrap, no user namespaces)."""
        self.stop()
        if self.isolation == "bwrap":
            command = bwrap_command(self.index, self.tmp_bytes, self.packages)
        else:
            self.workdir = tempfile.mkdtemp(prefix="trl_shaped_sandbox_")
            os.chmod(self.workdir, 0o1777)  # the program's uid (root trainers) must be able to write there
            command = bare_command(self.index, self.workdir, self.packages)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
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
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _read_line(self, deadline: float) -> dict:
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError("no reply in time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerError("the worker ended")
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise WorkerError("reply too long")
        line, self._buffer = self._buffer.split(b"\n", 1)
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
            return self._read_line(time.monotonic() + wall_time_s + REPLY_GRACE_S)
        except (OSError, ValueError, WorkerError) as error:
            self.stop()
            raise WorkerError(str(error) or type(error).__name__) from None
