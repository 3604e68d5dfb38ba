"""The program runner that lives inside the sandbox: a warm interpreter that forks one child per program.

The host starts it once per worker as ``python -I -S harness.py '<settings JSON>'`` (standard library only: it runs
without site-packages, so it imports nothing of trl_shaped) and talks to it over its standard input and output, one
JSON object a line: a request ``{"code", "tests", "limits"}`` in, a reply ``{"passed", "total", "status", "detail"}``
out. Per request the server forks; the child becomes the program:

1. leaves the server's session, points its standard input at /dev/null and its output at a file in the private
   temporary folder, closes every other descriptor but two pipes (the secret's and the result's);
2. drops to the worker's unprivileged uid when it runs as root (so that the process limit counts its processes:
   Linux exempts root from RLIMIT_NPROC) and sets its limits (CPU time, address space, processes, file size);
3. reads a secret that the server made after the fork and wrote to the secret pipe, then closes that pipe;
4. refuses, through an audit hook that cannot be removed, the ways Python code could reach the secret or the harness:
   frames (sys._getframe, tracebacks' and generators' frames, trace and profile functions, signal handlers), the
   garbage collector's object lists, ctypes, exec of another program, /proc;
5. runs the program, then every test statement in the program's namespace, counting those that return;
6. only after every test ran, writes ``<secret> <passed> <total> <first error>`` to the result pipe and ends with os._exit.

The server accepts a result only when it carries the secret: an exit code, printed text, SystemExit, os._exit or an
atexit hook never make a pass. It waits at most the wall time, then kills every process of the program (everything
in the sandbox's pid namespace but itself, or everything of the worker's uid) and empties the temporary folder.

What remains (said as it is): Python in one process is not a security boundary. The audit hook makes forging the
secret hard, not impossible (a bug in CPython, an unlisted route to a frame); the tests run in the program's
namespace, so a program can still game weak tests (an object whose ``__eq__`` is always true, a shadowed name the test
calls). Whatever it does, the program stays inside the sandbox: no network, no host files writable, no trainer
environment, limits on time, memory, processes and output, and nothing of it outlives its run.
"""

import json
import os
import resource
import select
import signal
import sys
import time

if __package__:  # imported by the host (for its constants)
    from . import confine
else:  # run as the sandbox's script: -I leaves the script's folder off sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine  # the sibling module that sets limits, kills and cleans (standard library only)

    del sys.path[0]

# The test statements of a program read from standard input are calls of this function (see `check_stdio`).
STDIO_CALL = "check_stdio("
OUTPUT_FILE = ".output"
# Audit events refused while the program runs; "object.__getattr__" is refused for these attribute names only.
_DENIED_EVENTS = {
    "sys._getframe",
    "sys._current_frames",
    "sys._current_exceptions",
    "sys.settrace",
    "sys.setprofile",
    "sys.addaudithook",
    "sys.remote_exec",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "builtins.breakpoint",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "os.startfile",
    "subprocess.Popen",
}
_DENIED_PREFIXES = ("ctypes.", "sys.monitoring", "cpython.remote")
_DENIED_ATTRIBUTES = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"}
_DENIED_IMPORTS = {"ctypes", "_ctypes", "signal", "_signal", "_posixsubprocess", "_testcapi", "_testinternalcapi"}


def _install_guard(keep_fds):
    """The audit hook of step 4. Refusals raise ValueError where the standard library expects one from
    sys._getframe (namedtuple, typing, enum and logging fall back), RuntimeError elsewhere."""
    denied, prefixes, attributes, imports = _DENIED_EVENTS, _DENIED_PREFIXES, _DENIED_ATTRIBUTES, _DENIED_IMPORTS
    fds, fspath = frozenset(keep_fds), os.fspath

    def guard(event, args):
        if event == "sys._getframe":
            raise ValueError("call stack introspection is disabled in the sandbox")
        if event in denied or event.startswith(prefixes):
            raise RuntimeError(f"{event} is disabled in the sandbox")
        if event == "object.__getattr__" and len(args) > 1 and args[1] in attributes:
            raise RuntimeError(f"{args[1]} is disabled in the sandbox")
        if event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__", "__globals__"):
            raise RuntimeError(f"setting {args[1]} is disabled in the sandbox")
        if event == "import" and args and args[0].partition(".")[0] in imports:
            raise RuntimeError(f"module {args[0]} is disabled in the sandbox")
        if event == "open" and args:
            path = args[0]
            if isinstance(path, int):
                if path in fds:
                    raise RuntimeError("the harness's descriptors are closed to the program")
            else:
                try:
                    path = fspath(path)
                except TypeError:
                    return
                text = path.decode(errors="replace") if isinstance(path, bytes) else path
                if text.startswith("/proc") or "/proc/" in text:
                    raise RuntimeError("/proc is closed to the program")

    sys.addaudithook(guard)


def _describe(error) -> str:
    """The first line of an error, for the outcome's detail (information only: it never decides a score)."""
    try:
        text = f"{type(error).__name__}: {error}"
    except BaseException:  # noqa: BLE001 - a program's exception may refuse to be printed
        text = "an exception that cannot be printed"
    return text.splitlines()[0][:200] if text else ""


def _run_tests(code: str, tests: list, limits: dict) -> tuple[int, str]:
    """Step 5: the number of tests that returned, and the first error. A program that raises before its tests
    passes none.

    Everything the counting and the output comparison call is bound here, before the program runs: a program may
    replace ``os.read``, ``builtins.open`` or ``memoryview`` for itself, not for the harness.
    """
    run, build, base, view_of = exec, compile, BaseException, memoryview
    os_open, os_write, os_close, os_dup2, os_lseek, os_pread = os.open, os.write, os.close, os.dup2, os.lseek, os.pread
    set_limit, file_size, reopen = resource.setrlimit, resource.RLIMIT_FSIZE, open
    output_cap = limits["max_output_bytes"]
    file_cap = max(output_cap, limits["tmp_bytes"])
    stdio = bool(tests) and all(isinstance(t, str) and t.lstrip().startswith(STDIO_CALL) for t in tests)
    if stdio:
        try:
            program = build(code, "<program>", "exec")
        except base as error:
            return 0, "program: " + _describe(error)

        def check_stdio(stdin: str, expected: str) -> None:
            """Run the program as a script with `stdin`; its standard output must equal `expected` token by token
            (whitespace-separated, so trailing spaces and newlines do not matter)."""
            path = OUTPUT_FILE + ".stdin"
            set_limit(file_size, (file_cap, file_cap))  # the input is no output of the program
            try:
                fd = os_open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                data = view_of(str(stdin).encode())
                while data:
                    data = data[os_write(fd, data) :]
                os_close(fd)
            finally:
                set_limit(file_size, (output_cap, file_cap))
            sys.stdout.flush()
            start = os_lseek(1, 0, os.SEEK_END)
            fd = os_open(path, os.O_RDONLY)
            os_dup2(fd, 0)
            os_close(fd)
            sys.stdin = reopen(0, closefd=False)
            try:
                run(program, {"__name__": "__main__"})
            except SystemExit as stop:  # a script may end with sys.exit(); its output still decides
                if stop.code not in (None, 0):
                    raise
            finally:
                sys.stdout.flush()
            produced = os_pread(1, os_lseek(1, 0, os.SEEK_END) - start, start)
            if produced.decode(errors="replace").split() != str(expected).split():
                raise AssertionError("wrong output")

        namespace = {"__name__": "__tests__", "check_stdio": check_stdio}
    else:
        namespace = {"__name__": "__main__"}
        try:
            run(build(code, "<program>", "exec"), namespace)
        except base as error:
            return 0, "program: " + _describe(error)
    passed, first_error = 0, ""
    for number, test in enumerate(tests):
        try:
            run(build(test, "<test>", "exec"), namespace)
        except base as error:
            first_error = first_error or f"test {number}: " + _describe(error)
            continue
        passed += 1
    return passed, first_error


def _child(request: dict, settings: dict, secret_fd: int, result_fd: int) -> None:
    """Steps 1 to 6 in the forked child; never returns."""
    write, leave, dumps, length = os.write, os._exit, json.dumps, len
    limits = request["limits"]
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    low, high = sorted((secret_fd, result_fd))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.chdir(settings["workdir"])
    out = os.open(OUTPUT_FILE, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # readable: check_stdio reads it back
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    confine.enter_program_limits(limits, settings)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: writing past the output limit must kill
    secret = os.read(secret_fd, 64)
    os.close(secret_fd)
    code, tests = request["code"], request["tests"]
    del request
    for name in _DENIED_IMPORTS:
        sys.modules.pop(name, None)
    sys.modules["__main__"] = type(sys)("__main__")  # `import __main__` must not reach the harness
    _install_guard({result_fd})
    passed, error = _run_tests(code, tests, limits)
    write(result_fd, secret + f" {passed} {length(tests)} {dumps(error)}\n".encode())
    leave(0)


def _await_result(pid: int, result_fd: int, wall_time: float) -> tuple[bytes, str]:
    """The child's message (up to its newline) and how the child ended: ok, timeout, or signal/exit detail."""
    deadline = time.monotonic() + wall_time
    os.set_blocking(result_fd, False)
    pidfd = os.pidfd_open(pid)
    data, finished = b"", False
    try:
        while b"\n" not in data and len(data) < 8192:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, "timeout"
            ready, _, _ = select.select([result_fd, pidfd], [], [], left)
            if result_fd in ready:
                try:
                    chunk = os.read(result_fd, 4096)
                except BlockingIOError:
                    chunk = None
                if chunk == b"":
                    break
                data += chunk or b""
            elif pidfd in ready:
                if finished:  # exited, and nothing more came: a grandchild may still hold the pipe open
                    break
                finished = True
                time.sleep(0)
        return data, "ok"
    finally:
        os.close(pidfd)


def _ending(status: int) -> str:
    if os.WIFSIGNALED(status):
        signal_number = os.WTERMSIG(status)
        names = {9: "SIGKILL", 24: "SIGXCPU (CPU time limit)", 25: "SIGXFSZ (output limit)", 11: "SIGSEGV"}
        return f"killed by {names.get(signal_number, f'signal {signal_number}')}"
    return f"exited with {os.WEXITSTATUS(status)} before reporting"


def serve_one(request: dict, settings: dict) -> dict:
    """Run one program in a forked child and return the reply."""
    total = len(request["tests"])
    secret_r, secret_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(secret_w)
            os.close(result_r)
            _child(request, settings, secret_r, result_w)
        finally:
            os._exit(70)
    os.close(secret_r)
    os.close(result_w)
    secret = os.urandom(16).hex().encode()  # made after the fork: the child's memory never held it before step 3
    try:
        os.write(secret_w, secret)
    except OSError:
        pass
    os.close(secret_w)
    data, ending = _await_result(pid, result_r, request["limits"]["wall_time_s"])
    os.close(result_r)
    status_detail = _ending(confine.kill_program(pid, settings))
    confine.clean_scratch(settings)
    line = data.split(b"\n", 1)[0].split(b" ", 3)
    if ending == "ok" and len(line) == 4 and line[0] == secret and line[1].isdigit() and line[2].isdigit():
        passed, reported = int(line[1]), int(line[2])
        if reported == total and passed <= total:
            try:
                detail = str(json.loads(line[3]))[:300]
            except ValueError:
                detail = ""
            return {"passed": passed, "total": total, "status": "ok", "detail": detail}
    if ending == "timeout":
        return {"passed": 0, "total": total, "status": "timeout", "detail": "wall time limit"}
    return {"passed": 0, "total": total, "status": "no_result", "detail": status_detail or "no result"}


def main() -> None:
    settings = json.loads(sys.argv[1])
    reply_fd = os.dup(1)
    confine.prepare_server(settings, reply_fd=reply_fd)  # /tmp noexec, capabilities dropped; before any program
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    requests = os.fdopen(0, "rb", buffering=0)
    os.write(reply_fd, b'{"ready": true}\n')
    while True:
        line = requests.readline()
        if not line:
            return
        reply = serve_one(json.loads(line), settings)
        os.write(reply_fd, json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    main()
