"""The program runner that lives inside the sandbox: a warm interpreter that forks a child per program or per test.

The host starts it once per worker as ``python -I -S harness.py '<settings JSON>'`` (standard library only: it runs
without site-packages, so it imports nothing of trl_shaped) and talks to it over its standard input and output, one
JSON object a line: a request ``{"code", "mode", "tests", "limits"}`` in, a reply ``{"status", "detail", "results"}``
out. The host (`verdict.py`) has already parsed every test into its form; what enters the sandbox is only what the
program needs to run, never an expected value:

- ``mode: "script"`` (every test a stdin/stdout pair): per test ``{"stdin"}``. Per test the server forks a child
  that becomes ``python3 main.py < stdin`` (standard input that test's input, standard error discarded; interpreter
  shutdown emulated: exit codes, non-daemon threads, atexit, flushed streams). The server, not the program, reads the
  child's standard output (at most ``max_output_bytes``) and replies the SHA-256 of its whitespace-separated tokens;
  the host compares it with the expected output's. A non-zero exit fails that test; a timeout or the CPU limit ends
  the program's run (status ``timeout`` / ``no_result``).
- ``mode: "module"``: one child runs the program once as ``__main__``, then its tests in order in its namespace
  (standard output and error discarded): ``{"kind": "value", "setup", "expr", "truth"}`` runs ``setup`` and returns the
  ENCODED value of ``expr`` (plain data: see `_make_encoder`), which the host decodes and compares with the test's
  literal; ``{"kind": "inprocess", "source"}`` runs a test statement that raises when the program is wrong
  (HumanEval's ``check(candidate)``), and the child reports whether it returned.

Guarantees, per form. Stdin/stdout and value tests are judged outside the program's process: whatever the program
does to its own interpreter (or to the report it sends), it can only change the output or the values it produces,
never the comparison, and it never sees what is expected. A truthiness test (``assert <expr>``) returns the truth
value the program's process computed. In-process tests are judged by the program's own process, the weaker
guarantee. Their verdicts count only with a per-run secret, made by the server after the fork and read by a reporter
thread before the program starts: the secret lives in that thread's running frame only, which no object the program
can reach refers to (the main thread's frames hold no secret; the patched gc, signal and fork_exec functions live in
a namespace of their own). The test loop and the encoder bind every function they call before the program runs (a
replaced ``builtins.enumerate`` or ``os.write`` is the program's alone). An audit hook refuses the routes to frames
(sys._getframe, tracebacks', generators' and coroutines' frames, trace and profile functions), ctypes and the test
extension modules (matched on every dotted part of a module's name and on the file's name), exec of other programs
and /proc; gc debugging (DEBUG_SAVEALL would hand out collected frames through gc.garbage), Python signal handlers
(they receive frames) and _posixsubprocess.fork_exec are replaced by refusals. Python in one process is still not a
security boundary (a bug in CPython, an unlisted route to an object), so a program may forge an in-process verdict
where a route was missed; and a program can game a weak in-process test (an object whose ``__eq__`` is always true).
As root the program's process also runs under a uid of its own (its memory cannot be traced by a process of the
same uid: the uid switch leaves it non-dumpable); without root it shares the harness's uid.

Limits are per test with a total cap: each test (and the program's start in module mode) gets ``wall_time_s`` of wall
time from its start, all of them together at most ``total_time_s``; CPU time is ``cpu_time_s`` per stdio test, or
``cpu_time_s`` x (tests + 1) capped by ``total_time_s`` for the one module-mode child. After every child the server
kills every process of the program and empties the temporary folder (`confine.py`).
"""

import _json
import _posixsubprocess
import _signal
import _sitebuiltins
import _thread
import atexit
import builtins
import gc
import hashlib
import io
import json
import numbers
import operator
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

PROGRAM_FILE = "main.py"  # written to the working folder: the program's __file__ and sys.argv[0]
MAX_REPORT_BYTES = 64 << 20  # a module-mode child's report (encoded values), read by the server
MAX_DEPTH = 100  # nesting of an encoded value; deeper values are opaque
# Set for every program, before any library it imports starts threads of its own.
PROGRAM_ENVIRONMENT = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per arena: threads would exhaust RLIMIT_AS
}
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
# Modules the program may not import, matched on every dotted part of the name and on the file's name (a copy of
# the extension under a package of its own keeps its name: its init function is PyInit_<name>).
_DENIED_IMPORTS = {"ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_ctypes_test", "_testbuffer"}
_DENIED_IMPORTS |= {"_testmultiphase", "_testsinglephase", "_testimportmultiple", "_testclinic", "_xxtestfuzz"}
_DENIED_IMPORTS |= {"_xxsubinterpreters", "_xxinterpchannels"}
# Modules that stay imported with patched functions (`_patch_modules`): the program gets the harness's copies; a
# fresh one would escape the patches, so importing them anew is refused (the extension on every dotted part, as
# above: it can be copied; the others by their full name: `scipy.signal` is another module).
_PATCHED_EXTENSIONS = {"_posixsubprocess"}  # multiprocessing and subprocess import it; its fork_exec is refused
_PATCHED_MODULES = {"gc", "signal", "_signal"}
_set_signal = _signal.signal  # the harness's own (the C function), before `_patch_modules`


class _Refused(ImportError):
    """An import the sandbox refuses (an ImportError: libraries that try an optional import carry on)."""


def _install_guard():
    """The audit hook. Refusals raise ValueError where the standard library expects one from sys._getframe
    (namedtuple, typing, enum and logging fall back), ImportError for imports, RuntimeError elsewhere."""
    denied, prefixes, attributes = frozenset(_DENIED_EVENTS), _DENIED_PREFIXES, frozenset(_DENIED_ATTRIBUTES)
    modules, patched = frozenset(_DENIED_IMPORTS | _PATCHED_EXTENSIONS), frozenset(_PATCHED_MODULES)
    fspath, isinstance_, str_, bytes_, refused = os.fspath, isinstance, str, bytes, _Refused

    def guard(event, args):
        if event == "sys._getframe":
            raise ValueError("call stack introspection is disabled in the sandbox")
        if event in denied or event.startswith(prefixes):
            raise RuntimeError(f"{event} is disabled in the sandbox")
        if event == "object.__getattr__" and len(args) > 1 and args[1] in attributes:
            raise RuntimeError(f"{args[1]} is disabled in the sandbox")
        if event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__", "__globals__"):
            raise RuntimeError(f"setting {args[1]} is disabled in the sandbox")
        if event == "import" and args:
            name = args[0] if isinstance_(args[0], str_) else ""
            parts = set(name.split("."))
            if len(args) > 1 and isinstance_(args[1], (str_, bytes_)):  # a file, as _imp.create_dynamic names it
                file = fspath(args[1])
                file = file.decode(errors="replace") if isinstance_(file, bytes_) else file
                parts.add(file.rsplit("/", 1)[-1].split(".", 1)[0])
            if parts & modules or name in patched:
                raise refused(f"module {name} is disabled in the sandbox")
        if event == "open" and args:
            path = args[0]
            if isinstance_(path, int):
                return
            try:
                path = fspath(path)
            except TypeError:
                return
            text = path.decode(errors="replace") if isinstance_(path, bytes_) else path
            if text.startswith("/proc") or "/proc/" in text:
                raise RuntimeError("/proc is closed to the program")

    sys.addaudithook(guard)


# The patched functions, compiled into a namespace of their own: what the program reaches through their __globals__
# is this namespace, never the harness's module.
_PATCHES = """
def fork_exec(*args, **kwargs):
    "Refused in the sandbox: running other programs."
    raise RuntimeError("running other programs is disabled in the sandbox")

def set_debug(flags):
    "Refused in the sandbox: gc debugging would expose the collected objects (frames) in gc.garbage."
    if flags:
        raise RuntimeError("gc debugging is disabled in the sandbox")

def set_signal(signalnum, handler):
    "Python signal handlers are refused in the sandbox (they receive frames); SIG_DFL and SIG_IGN change nothing."
    if callable(handler):
        raise RuntimeError("signal handlers are disabled in the sandbox")
    return getsignal(signalnum)
"""


def _patch_modules():
    """gc, signal and _posixsubprocess stay importable, without their routes to frames and exec: gc debugging
    (DEBUG_SAVEALL hands out the collected frames in gc.garbage, whose f_back reaches the harness), Python signal
    handlers (called with the interrupted frame), fork_exec (exec of another program, outside the audit hook). The
    patched functions hold no reference to the originals, nor to the harness."""
    patches = {"getsignal": signal.getsignal, "__name__": "sandbox"}
    exec(_PATCHES, patches)
    _posixsubprocess.fork_exec = patches["fork_exec"]
    gc.set_debug(0)
    gc.set_debug = patches["set_debug"]
    gc.garbage = []
    signal.signal = _signal.signal = patches["set_signal"]
    for name in _DENIED_IMPORTS:
        sys.modules.pop(name, None)


def _describe(error, type_=type, str_=str, base=BaseException) -> str:
    """The first line of an error, for the outcome's detail (information only: it never decides a score). Its
    defaults bind what it calls at import: the program may replace builtins, not the harness's."""
    try:
        text = str_(f"{type_(error).__name__}: {error}")
    except base:  # a program's exception may refuse to be printed
        text = "an exception that cannot be printed"
    return text.splitlines()[0][:200] if text else ""


def _make_encoder():
    """`encode(value, limit_bytes) -> str`: the tagged JSON of a value, built only from functions bound here (before the
    program runs) and the slots of the built-in types.

    None, bool -> null, true/false; int -> a JSON integer below 10**18 in size, else ["int", hex] (no digit limit);
    str -> a JSON string; float -> ["float", float.hex] (exact, inf and nan included); complex -> ["complex", re, im];
    bytes, bytearray -> [tag, latin-1 text]; list,
    tuple, set, frozenset -> [tag, [items]]; dict -> ["dict", [[k, v], ...]]. Subclasses of these are encoded as their
    base type (namedtuple as tuple, IntEnum as int), numbers.Integral / numbers.Real (numpy scalars) as int / float,
    numpy's bool as ["npbool", 0|1]; anything else, or a value nested deeper than MAX_DEPTH, as ["opaque", type name],
    which equals nothing. A value whose encoding passes `limit_bytes` raises ValueError.
    """
    escape = _json.encode_basestring_ascii
    integral, real, index = numbers.Integral, numbers.Real, operator.index
    type_, issubclass_, isinstance_, hex_, len_, getattr_ = type, issubclass, isinstance, hex, len, getattr
    enumerate_, value_error, bool_, str_, int_, float_, complex_ = enumerate, ValueError, bool, str, int, float, complex
    int_index, float_float, float_hex, str_str, bytes_join = (
        int.__index__,
        float.__float__,
        float.hex,
        str.__str__,
        b"".join,
    )
    real_of, imag_of, int_repr, small = complex.real.__get__, complex.imag.__get__, int.__repr__, 10**18
    containers = ((list, "list", list.__iter__), (tuple, "tuple", tuple.__iter__))
    containers += ((set, "set", set.__iter__), (frozenset, "frozenset", frozenset.__iter__))
    dict_, dict_items, bytes_, bytearray_ = dict, dict.items, bytes, bytearray

    def encode(value, limit_bytes: int) -> str:
        parts, size = [], [0]
        append = parts.append

        def put(text):
            size[0] += len_(text)
            if size[0] > limit_bytes:
                raise value_error("the value's encoding is larger than max_output_bytes")
            append(text)

        def walk(value, depth):
            kind = type_(value)
            if value is None:
                return put("null")
            if kind is bool_:
                return put("true" if value else "false")
            if depth > MAX_DEPTH:
                return put('["opaque","too deep"]')
            if issubclass_(kind, int_):
                number = int_index(value)
                if -small < number < small:
                    return put(int_repr(number))
                return put('["int","' + hex_(number) + '"]')
            if issubclass_(kind, float_):
                return put('["float","' + float_hex(float_float(value)) + '"]')
            if issubclass_(kind, complex_):
                return put(f'["complex","{float_hex(real_of(value))}","{float_hex(imag_of(value))}"]')
            if issubclass_(kind, str_):
                return put(escape(str_str(value)))
            if issubclass_(kind, (bytes_, bytearray_)):
                tag = "bytes" if issubclass_(kind, bytes_) else "bytearray"
                return put(f'["{tag}",' + escape(bytes_join([value]).decode("latin-1")) + "]")
            for base, tag, iterate in containers:
                if issubclass_(kind, base):
                    put(f'["{tag}",[')
                    start, counted = len_(parts), 0
                    for item in iterate(value):
                        leaf = type_(item)  # small ints and strings, the common case, without a call of walk
                        if leaf is int_ and -small < item < small:
                            text = int_repr(item)
                        elif leaf is str_:
                            text = escape(item)
                        else:
                            walk(item, depth + 1)
                            append(",")
                            continue
                        append(text)
                        append(",")
                        counted += len_(text) + 1
                        if counted > limit_bytes:
                            put(text)  # raises
                    if len_(parts) > start:
                        parts.pop()  # the last comma
                    size[0] += counted
                    return put("]]")
            if issubclass_(kind, dict_):
                put('["dict",[')
                for number, (key, item) in enumerate_(dict_items(value)):
                    put(",[" if number else "[")
                    walk(key, depth + 1)
                    put(",")
                    walk(item, depth + 1)
                    put("]")
                return put("]]")
            name = getattr_(kind, "__name__", "")
            name = str_str(name)[:100] if isinstance_(name, str_) else "?"
            if getattr_(kind, "__module__", "") == "numpy" and name in ("bool_", "bool"):
                return put('["npbool",' + ("1" if bool_(value) else "0") + "]")
            if isinstance_(value, integral):
                return put('["int","' + hex_(index(value)) + '"]')
            if isinstance_(value, real):
                return put('["float","' + float_hex(float_(value)) + '"]')
            return put('["opaque",' + escape(name) + "]")

        walk(value, 0)
        return "".join(parts)

    return encode


def _tokens_digest(data: bytes) -> str:
    """SHA-256 of the whitespace-separated tokens of a program's output (the host hashes the expected output the
    same way, in `verdict.stdout_digest`)."""
    tokens = data.decode("utf-8", errors="replace").split()
    return hashlib.sha256("\n".join(tokens).encode("utf-8", errors="surrogatepass")).hexdigest()


def _program_path(settings: dict) -> str:
    return os.path.join(settings["workdir"], PROGRAM_FILE)


def _write_program(code: str, settings: dict) -> None:
    """The program's source as its file (read-only, owned by the harness): __file__, tracebacks and inspect work."""
    path = _program_path(settings)
    try:
        os.unlink(path)
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    except OSError:  # a /tmp the last program left full: the program runs without its file
        return
    try:
        data = memoryview(code.encode("utf-8", errors="replace"))
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass
    finally:
        os.close(fd)


def _enter_child(limits: dict, settings: dict, stdin_fd: int, stdout_fd: int, keep: tuple = ()) -> None:
    """In a forked child, before the program: its own session, standard streams on the given descriptors (standard
    error discarded), every other descriptor closed but `keep`, the working folder, the program's limits."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(stdin_fd if stdin_fd >= 0 else null, 0)
    os.dup2(stdout_fd if stdout_fd >= 0 else null, 1)
    os.dup2(null, 2)
    start = 3
    for fd in sorted(keep):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.chdir(settings["workdir"])
    confine.enter_program_limits(limits, settings)
    _set_signal(_signal.SIGXFSZ, _signal.SIG_DFL)  # Python ignores it: writing past the output limit must kill


def _become_main(settings: dict):
    """The interpreter as ``python3 main.py`` leaves it for the program: a real ``__main__`` module with __file__
    (the harness's module unreachable through it), sys.argv, sys.path with the script's folder and the allowed
    packages, fresh standard streams; then the patches and the audit hook. Returns the module's namespace."""
    path = _program_path(settings)
    module = type(sys)("__main__")
    module.__file__, module.__cached__ = path, None
    sys.modules["__main__"] = module
    sys.argv, sys.orig_argv = [PROGRAM_FILE], [sys.executable, PROGRAM_FILE]
    sys.path[:0] = [settings["workdir"]]
    sys.path.extend(settings.get("paths", ()))
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)
    error = open(2, "wb", closefd=False)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(error, "utf-8", "backslashreplace", line_buffering=True)
    _install_guard()
    return module.__dict__


def _exit_status(stop) -> int:
    """The process's exit status for a SystemExit, as the interpreter computes it."""
    code = stop.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1  # the interpreter prints any other value and exits with 1


def _shutdown(status: int) -> int:
    """What the interpreter does at exit, before the process ends: wait for non-daemon threads, run atexit
    callbacks, flush the standard streams (a failed flush of standard output exits with 120)."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:  # noqa: BLE001 - the program's threads may raise anything
            pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.__stdout__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            status = status or 120
    try:
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    return status


def _script_child(code: str, limits: dict, settings: dict, stdin_fd: int, stdout_fd: int) -> None:
    """A stdio test's child: ``python3 main.py < stdin``; never returns (exits with the program's status)."""
    _enter_child(limits, settings, stdin_fd, stdout_fd)
    namespace = _become_main(settings)
    try:
        exec(compile(code, _program_path(settings), "exec"), namespace)
        status = 0
    except SystemExit as stop:
        status = _exit_status(stop)
    except BaseException:  # noqa: BLE001 - an uncaught exception: the interpreter exits with 1
        status = 1
    os._exit(_shutdown(status))


def _reporter(secret_fd: int, result_fd: int, ready, go, handoff: list) -> None:
    """The module-mode child's reporting thread: reads the secret before the program starts and keeps it in this
    frame only (a running thread's frame: never collected, never handed to the program), then waits for the main
    thread's report and writes it with the secret. Its functions are bound before the program runs."""
    read, write, close, leave, view = os.read, os.write, os.close, os._exit, memoryview
    secret = read(secret_fd, 64)
    close(secret_fd)
    ready.release()
    go.acquire()
    try:
        data = view(b"R " + secret + b" " + handoff[0] + b"\n")
        while data:
            data = data[write(result_fd, data) :]
    finally:
        leave(0)


def _module_child(request: dict, limits: dict, settings: dict, secret_fd: int, result_fd: int) -> None:
    """The module-mode child: the program once as ``__main__``, then each test in order; never returns. With
    in-process tests (`secret_fd` >= 0) a reporter thread holds the secret and writes the report."""
    _enter_child(limits, settings, -1, -1, keep=(secret_fd, result_fd) if secret_fd >= 0 else (result_fd,))
    write, leave = os.write, os._exit
    if secret_fd >= 0:
        ready, go = _thread.allocate_lock(), _thread.allocate_lock()
        ready.acquire()
        go.acquire()
        handoff = []
        _thread.start_new_thread(_reporter, (secret_fd, result_fd, ready, go, handoff))
        ready.acquire()  # the reporter holds the secret and closed its pipe: nothing the program reaches refers to it
    code, tests, value_bytes = request["code"], request["tests"], limits["max_output_bytes"]
    del request
    namespace = _become_main(settings)
    payload = _RUNNER(compile, code, _program_path(settings), tests, namespace, result_fd, value_bytes)
    if secret_fd < 0:  # values only: what the program produced, no verdict to authenticate
        data = memoryview(b"R " + payload + b"\n")
        while data:
            data = data[write(result_fd, data) :]
        leave(0)
    handoff.append(payload)
    go.release()
    ready.acquire()  # never released again: the reporter ends the process


def _make_runner():
    """The module-mode test loop, made once in the server before any program runs: every function it calls is bound
    here (a program may replace builtins or os.write for itself, not for the harness). The runner returns the
    report, JSON bytes."""
    encode = _make_encoder()
    escape = _json.encode_basestring_ascii
    run, evaluate, base, system_exit, write = exec, eval, BaseException, SystemExit, os.write
    enumerate_, str_, bool_, len_, join, describe = enumerate, str, bool, len, ",".join, _describe

    def runner(build, code, path, tests, namespace, result_fd, value_bytes) -> bytes:
        error, items = "", []
        try:
            program = build(code, path, "exec")
            try:
                run(program, namespace)
            except system_exit as stop:  # the script ended itself (sys.exit(0) at its end): its tests still run
                if stop.code not in (None, 0):
                    raise
        except base as failure:
            error = "program: " + describe(failure)
            items = ['["e",' + escape(error) + "]"] * len_(tests)
            tests = ()
        for number, test in enumerate_(tests):
            try:
                write(result_fd, b"P %d\n" % number)
            except base:
                pass
            try:
                if test["kind"] == "value":
                    if test["setup"]:
                        run(build(test["setup"], "<test>", "exec"), namespace)
                    value = evaluate(build(test["expr"], "<test>", "eval"), namespace)
                    items.append('["v",' + encode(bool_(value) if test["truth"] else value, value_bytes) + "]")
                else:
                    run(build(test["source"], "<test>", "exec"), namespace)
                    items.append('["p",true]')
            except base as failure:
                text = f"test {number}: " + describe(failure)
                error = error or text
                items.append('["e",' + escape(str_(text)) + "]")
        return ('{"results":[' + join(items) + '],"detail":' + escape(error) + "}").encode()

    return runner


_RUNNER = _make_runner()


def _await(pid: int, deadline_of, read_fd: int = -1, on_line=None) -> str:
    """Wait for child `pid` to exit, reading its lines from `read_fd` (if given) until `on_line` returns True:
    "done", "exited", "timeout" or "too_long". `deadline_of()` is read again after every line (progress moves it)."""
    pidfd = os.pidfd_open(pid)
    pending, size, exited = [], 0, False  # the chunks of the line being read
    try:
        if read_fd >= 0:
            os.set_blocking(read_fd, False)
        watched = [pidfd] if read_fd < 0 else [pidfd, read_fd]
        while True:
            left = deadline_of() - time.monotonic()
            if left <= 0:
                return "timeout"
            ready, _, _ = select.select(watched, [], [], 0 if exited else left)
            if read_fd >= 0 and read_fd in ready:
                try:
                    chunk = os.read(read_fd, 1 << 20)
                except BlockingIOError:
                    chunk = None
                if chunk:
                    while (cut := chunk.find(b"\n")) >= 0:
                        pending.append(chunk[:cut])
                        line, pending, size, chunk = b"".join(pending), [], 0, chunk[cut + 1 :]
                        if on_line(line):
                            return "done"
                    pending.append(chunk)
                    size += len(chunk)
                    if size > MAX_REPORT_BYTES:
                        return "too_long"
                    continue
                if chunk == b"":  # every writer is gone
                    return "exited"
            if exited:  # exited, and nothing more to read now (a grandchild may still hold the pipe open)
                return "exited"
            if pidfd in ready:
                if read_fd < 0:
                    return "exited"
                exited = True
    finally:
        os.close(pidfd)


def _ending(status: int) -> str:
    if os.WIFSIGNALED(status):
        signal_number = os.WTERMSIG(status)
        names = {9: "SIGKILL", 24: "SIGXCPU (CPU time limit)", 25: "SIGXFSZ (output limit)", 11: "SIGSEGV"}
        return f"killed by {names.get(signal_number, f'signal {signal_number}')}"
    return f"exited with {os.WEXITSTATUS(status)}"


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name, 0)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _fork(target, *args) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            target(*args)
        finally:
            os._exit(70)
    return pid


def serve_script(request: dict, settings: dict) -> dict:
    """Every test a stdin/stdout pair: a fresh child per test; the server hashes each one's output tokens."""
    limits, code = request["limits"], request["code"]
    wall, cap = limits["wall_time_s"], limits["max_output_bytes"]
    end = time.monotonic() + limits["total_time_s"]
    results, first_error = [], ""
    for number, test in enumerate(request["tests"]):
        if time.monotonic() >= end:
            return {"status": "timeout", "detail": "total time limit", "results": results}
        _write_program(code, settings)
        stdin_fd, stdout_fd = _memfd("stdin", test["stdin"].encode("utf-8", errors="surrogatepass")), _memfd("out")
        pid = _fork(_script_child, code, limits, settings, stdin_fd, stdout_fd)
        os.close(stdin_fd)
        test_end = min(time.monotonic() + wall, end)
        ending = _await(pid, lambda test_end=test_end: test_end)
        status = confine.kill_program(pid, settings)
        confine.clean_scratch(settings)
        size = os.fstat(stdout_fd).st_size
        output = os.pread(stdout_fd, min(size, cap), 0)
        os.close(stdout_fd)
        if ending == "timeout":
            limit = "wall time limit" if test_end < end else "total time limit"
            return {"status": "timeout", "detail": f"test {number}: {limit}", "results": results}
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
            return {"status": "no_result", "detail": f"test {number}: {_ending(status)}", "results": results}
        if status == 0 and size <= cap:
            results.append(["o", _tokens_digest(output)])
        else:
            text = f"test {number}: " + (_ending(status) if status else "output limit")
            first_error = first_error or text
            results.append(["e", text])
    return {"status": "ok", "detail": first_error, "results": results}


def serve_module(request: dict, settings: dict) -> dict:
    """The program once, its tests in its namespace, in one child; the report carries the per-run secret."""
    limits = dict(request["limits"])
    tests = len(request["tests"])
    wall = limits["wall_time_s"]
    limits["cpu_time_s"] = min(limits["cpu_time_s"] * (tests + 1), limits["total_time_s"])
    _write_program(request["code"], settings)
    in_process = any(test["kind"] == "inprocess" for test in request["tests"])
    secret_r, secret_w = os.pipe() if in_process else (-1, -1)
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if in_process:
                os.close(secret_w)
            os.close(result_r)
            _module_child(request, limits, settings, secret_r, result_w)
        finally:
            os._exit(70)
    os.close(result_w)
    secret = b""
    if in_process:
        os.close(secret_r)
        secret = os.urandom(16).hex().encode()  # made after the fork: the child's memory never held it before
        try:
            os.write(secret_w, secret)
        except OSError:
            pass
        os.close(secret_w)
        secret += b" "
    end = time.monotonic() + limits["total_time_s"]
    deadline = [min(time.monotonic() + wall, end)]
    report = []

    def on_line(line: bytes) -> bool:
        if line.startswith(b"P "):  # a test starts: its own wall time (a forged line only lengthens the wait)
            deadline[0] = min(time.monotonic() + wall, end)
        elif line.startswith(b"R " + secret):
            report.append(line[len(secret) + 2 :])
            return True
        return False

    ending = _await(pid, lambda: deadline[0], result_r, on_line)
    os.close(result_r)
    status = confine.kill_program(pid, settings)
    confine.clean_scratch(settings)
    if ending == "done":
        try:
            parsed = json.loads(report[0])
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("results"), list) and len(parsed["results"]) == tests:
            return {"status": "ok", "detail": str(parsed.get("detail", ""))[:300], "results": parsed["results"]}
        return {"status": "no_result", "detail": "malformed report"}
    if ending == "timeout":
        limit = "wall time limit" if deadline[0] < end else "total time limit"
        return {"status": "timeout", "detail": limit}
    if ending == "too_long":
        return {"status": "no_result", "detail": "report larger than the limit"}
    return {"status": "no_result", "detail": _ending(status) + " before reporting"}


def serve_one(request: dict, settings: dict) -> dict:
    """Run one program against its tests and return the reply."""
    if request.get("mode") == "script":
        return serve_script(request, settings)
    return serve_module(request, settings)


def _prepare_interpreter() -> None:
    """Once, in the server: the environment every program gets, and exit()/quit() (-S leaves them out)."""
    os.environ.update(PROGRAM_ENVIRONMENT)
    _patch_modules()  # once: every child inherits the patched modules
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    gc.collect()  # nothing of the server's start-up left for a program's collection to find


def main() -> None:
    if os.environ.get("MALLOC_ARENA_MAX") != PROGRAM_ENVIRONMENT["MALLOC_ARENA_MAX"]:
        # glibc reads it at start-up only: start again with the programs' environment (once per worker)
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **PROGRAM_ENVIRONMENT})
    settings = json.loads(sys.argv[1])
    _prepare_interpreter()
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
