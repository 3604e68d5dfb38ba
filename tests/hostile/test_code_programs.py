"""Hostile programs against the code judge: each is run for real in the bubblewrap sandbox, next to a right program
in the same batch, and must score 0 (or what its tests really earn) while the training process and the rest of the
batch carry on unharmed.

One sandbox (2 workers, low limits) serves the whole module. RIGHT is a right program for TESTS; a hostile program
is judged on the same TESTS, which it does not pass honestly.
"""

import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest

from trl_shaped.rewards.code import CodeReward
from trl_shaped.sandbox import LocalSandbox, Program, SandboxLimits
from trl_shaped.sandbox.isolation import MAX_WORKERS, worker_uid

RIGHT = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(5, 5) == 10"]
LIMITS = SandboxLimits(
    wall_time_s=3, cpu_time_s=1, memory_bytes=256 << 20, max_processes=16, max_output_bytes=64 << 10, tmp_bytes=8 << 20
)


@pytest.fixture(scope="module")
def sandbox():
    box = LocalSandbox(LIMITS, workers=2)
    yield box
    box.close()


@pytest.fixture(scope="module")
def reward(sandbox):
    return CodeReward(sandbox=sandbox)


def judge(reward, *programs, tests=TESTS) -> list[float]:
    """Scores of `programs` on `tests`, followed by two right programs on TESTS that must score 1.0."""
    scores = reward([*programs, RIGHT, RIGHT], tests=[tests] * len(programs) + [TESTS] * 2)
    assert scores[-2:] == [1.0, 1.0], scores
    return scores[:-2]


def sandbox_processes() -> list[int]:
    """Host pids of live processes (not zombies) of this process's sandbox workers' uids (the trainer is root: it
    sees them all)."""
    first = worker_uid(0)
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                uid = int(status.split("\nUid:")[1].split()[0])
                zombie = status.split("\nState:")[1].split()[0] == "Z"
            except (OSError, IndexError):
                continue
            if first <= uid < first + MAX_WORKERS and not zombie:
                pids.append(int(entry.name))
    return pids


EXIT_TRICKS = {
    "exit": "exit(0)",
    "quit": "quit()",
    "sys_exit": "import sys\nsys.exit(0)",
    "raise_system_exit": "raise SystemExit(0)",
    "os_exit": "import os\nos._exit(0)",
    "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))\nraise RuntimeError",
    "exit_in_function": "import os\ndef add(a, b):\n    os._exit(0)",
    "system_exit_in_function": "def add(a, b):\n    raise SystemExit(0)",
    "keyboard_interrupt": "def add(a, b):\n    raise KeyboardInterrupt",
}


@pytest.mark.parametrize("trick", list(EXIT_TRICKS))
def test_exit_tricks_score_zero(reward, trick):
    assert judge(reward, EXIT_TRICKS[trick]) == [0.0]


def test_printed_markers_and_forged_result_lines_score_zero(reward):
    forged = "ab" * 16 + " 3 3"  # the shape of the harness's result line, with a made-up secret
    programs = [
        'print("PASSED")\nprint("All tests passed")\nprint("3/3 tests passed")',
        f"import sys\nprint({forged!r})\nprint({forged!r}, file=sys.stderr)",
        # every descriptor the program may hold, the harness's result pipe among them
        f"import os\nfor fd in range(256):\n    try:\n        os.write(fd, {forged!r}.encode() + b'\\n')\n"
        "    except OSError:\n        pass",
    ]
    # a report in the harness's own format on every descriptor, every test "passed": a value test needs a value
    # (compared outside), an in-process verdict needs the secret
    report = '{"results": [["p", true], ["p", true], ["p", true]], "detail": ""}'
    programs.append(
        f"import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'R ' + {report!r}.encode() + b'\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)"
    )
    humaneval = ["def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)"] * 3
    assert judge(reward, *programs) == [0.0, 0.0, 0.0, 0.0]
    assert judge(reward, programs[-1], tests=humaneval) == [0.0]


def test_introspection_to_steal_the_secret_is_refused(reward):
    """Routes to the harness's frames and objects are closed; the program scores 0 and its tests run for nothing."""
    routes = [
        "import sys\nsecret = sys._getframe(1).f_locals",
        "import gc\nobjects = gc.get_objects()",
        "import gc\nrefs = gc.get_referrers(print)",
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    frame = e.__traceback__.tb_frame.f_back",
        "import ctypes",
        "import signal\nsignal.signal(signal.SIGALRM, lambda n, frame: None)",
        "import sys\nsys.settrace(lambda *a: None)",
        "open('/proc/self/mem', 'rb')",
        "import subprocess\nsubprocess.run(['/bin/true'])",
        "import os\nos.execv('/bin/true', ['true'])",
    ]
    # each route followed by a right solution: only a refused route makes the program fail
    assert judge(reward, *[route + "\n" + RIGHT for route in routes]) == [0.0] * len(routes)
    # a hook of the program's own (to watch the tests being compiled) is silently not added
    spy = (
        "import sys\nseen = []\nsys.addaudithook(lambda event, args: seen.append(event))\ncompile('1', 'x', 'exec')\n"
        "def add(a, b):\n    return a + b if seen else None"
    )
    assert judge(reward, spy) == [0.0]


def test_standard_library_that_peeks_at_frames_still_works(reward):
    """namedtuple, typing, enum and logging call sys._getframe and fall back on the harness's refusal."""
    program = textwrap.dedent(
        """
        import collections, enum, logging, typing
        Point = collections.namedtuple("Point", "x y")
        Color = enum.Enum("Color", "RED GREEN")
        class Pair(typing.NamedTuple):
            a: int
        logging.getLogger("x").warning("still fine")
        def add(a, b):
            return Point(a, b).x + Pair(b).a
        """
    )
    assert judge(reward, program) == [1.0]


def test_infinite_loops_sleeps_and_stdin_reads_end_with_zero(sandbox):
    programs = [
        "while True:\n    pass",
        "def add(a, b):\n    while True:\n        pass",
        "import time\ntime.sleep(100)",
        "x = input()",
        "import sys\ndata = sys.stdin.read()\nassert data",
    ]
    outcomes = sandbox.run_tests([Program(p, TESTS) for p in [*programs, RIGHT, RIGHT]])
    assert [o.fraction for o in outcomes] == [0.0] * len(programs) + [1.0, 1.0], outcomes
    # a loop stops at the CPU limit (SIGXCPU) or, on a busy machine, at the wall time; the sleep at the wall time;
    # reading standard input finds it empty
    for loop in outcomes[:2]:
        assert loop.status == "timeout" or "SIGXCPU" in loop.detail, loop
    assert outcomes[2].status == "timeout"
    assert outcomes[3].status == "ok" and "EOFError" in outcomes[3].detail


@pytest.mark.skipif(os.getuid() != 0, reason="reads other users' processes in /proc: the check needs root")
def test_fork_bomb_is_contained_and_nothing_outlives_the_program(reward, sandbox):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    orphan = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n" + RIGHT
    scores = judge(reward, bomb, orphan)
    assert scores == [0.0, 1.0]  # the orphan's program is right; its sleeping child must not survive it
    assert sandbox_processes() == []
    # the process limit held: forking beyond it failed inside the program, which counted the failures
    counting = (
        "import os, time\nforks = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        forks += 1\n    except OSError:\n        break\n"
        f"def add(a, b):\n    return a + b if forks < {LIMITS.max_processes} else None"
    )
    assert judge(reward, counting) == [1.0]
    assert sandbox_processes() == []


def test_memory_hogs_and_output_floods_score_zero(reward, sandbox):
    programs = [
        "x = bytearray(10**10)\n" + RIGHT,
        "chunks = []\nwhile True:\n    chunks.append(b' ' * 10**6)",
        "while True:\n    print('x' * 1000)",
        "import os\nwhile True:\n    os.write(2, b'y' * 4096)",
        "with open('/tmp/big', 'wb') as f:\n    while True:\n        f.write(b'z' * 65536)",
    ]
    assert judge(reward, *programs) == [0.0] * len(programs)
    # on a stdin/stdout problem the output counts: the flood is stopped at the output limit, not by the clock
    flood = sandbox.run_tests([Program(programs[2], ["check_stdio('', 'x')"])])[0]
    assert flood.passed == 0 and "SIGXFSZ" in flood.detail, flood


def test_host_files_cannot_be_written_or_deleted(reward, tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("original")
    programs = [
        f"open({str(target)!r}, 'w').write('overwritten')\n" + RIGHT,
        f"import os\nos.remove({str(target)!r})\n" + RIGHT,
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n" + RIGHT,
        "open('/usr/owned_by_program', 'w')\n" + RIGHT,
        "open('/owned_by_program', 'w')\n" + RIGHT,  # the sandbox's own root and /dev are read-only too
        f"import os\nassert not os.path.exists({str(target)!r})\n" + RIGHT,
    ]
    assert judge(reward, *programs) == [0.0] * 5 + [1.0]  # the last: the host's files are absent
    assert target.read_text() == "original"
    assert not Path("/usr/owned_by_program").exists()


def test_dev_shm_is_private_to_each_program(sandbox):
    """/dev/shm is writable (multiprocessing's semaphores live there) but a tmpfs of the sandbox's own, emptied after
    every program like /tmp: what one program leaves there, the next does not find."""
    leave = "open('/dev/shm/left_behind', 'w').write('x')\n" + RIGHT
    look = "import os\nassert os.listdir('/dev/shm') == []\n" + RIGHT
    outcomes = sandbox.run_tests([Program(leave, TESTS), Program(look, TESTS), Program(look, TESTS)])
    assert [o.fraction for o in outcomes] == [1.0, 1.0, 1.0], outcomes
    assert not Path("/dev/shm/left_behind").exists()  # nor does the host


def test_no_network_to_the_hosts_loopback(reward):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n" + RIGHT
        refused = (
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1', "
            f"{port}), timeout=1)\n    reached = True\nexcept OSError:\n    reached = False\n"
            "def add(a, b):\n    return None if reached else a + b"
        )
        assert judge(reward, connect, refused) == [0.0, 1.0]
        with pytest.raises(BlockingIOError):  # nothing ever connected
            listener.accept()
    finally:
        listener.close()


def test_the_trainers_environment_is_invisible(reward, monkeypatch):
    monkeypatch.setenv("TRL_SHAPED_TEST_TOKEN", "hf_secret_value")
    reads = "import os\ntoken = os.environ.get('TRL_SHAPED_TEST_TOKEN')\ndef add(a, b):\n    return a + b if token else None"
    empty = "import os\nassert not os.environ.get('TRL_SHAPED_TEST_TOKEN')\n" + RIGHT
    assert judge(reward, reads, empty) == [0.0, 1.0]


def test_signalling_the_parent_or_the_group_harms_nobody(reward):
    programs = [
        "import os\nos.kill(os.getppid(), 9)",
        "import os\nos.killpg(0, 9)",
        "import os\nos.kill(-1, 9)",
        "import os\nos.kill(1, 9)",
        "import os\ndef add(a, b):\n    os.kill(os.getppid(), 9)",
    ]
    before = signal.getsignal(signal.SIGTERM)
    assert judge(reward, *programs) == [0.0] * len(programs)
    assert signal.getsignal(signal.SIGTERM) is before  # still here, and the next batch is scored right
    assert reward([RIGHT] * 4, tests=[TESTS] * 4) == [1.0] * 4


def test_a_batch_of_hostile_programs_keeps_every_right_score(reward):
    """Hostile and right programs interleaved: each right one scores 1.0, each hostile one 0.0."""
    hostile = ["import os\nos._exit(0)", "while True:\n    pass", "import os\nos.killpg(0, 9)", "x = input()"]
    programs = [p for pair in zip(hostile, [RIGHT] * len(hostile), strict=True) for p in pair]
    assert reward(programs, tests=[TESTS] * len(programs)) == [0.0, 1.0] * len(hostile)


def test_replacing_the_harnesss_tools_changes_nothing(reward):
    """The harness bound what it counts and compares with before the program ran: patches stay the program's."""
    patches = (
        "import builtins, json, os\n"
        "os.pread = lambda *a: b'3'\nos.lseek = lambda *a: 0\nos.write = lambda *a: 0\n"
        "json.dumps = lambda *a: '\"\"'\nbuiltins.len = lambda x: 0\nbuiltins.memoryview = bytes\n"
    )
    stdio = ["check_stdio('1 2\\n', '3\\n')", "check_stdio('2 2\\n', '4\\n')"]
    # a program that prints nothing, and one that prints the right sums: only the second passes
    assert judge(reward, patches, patches + "print(sum(map(int, input().split())))", tests=stdio) == [0.0, 1.0]
    # the harness's module is not the program's __main__
    assert judge(reward, patches + "import __main__\nassert not hasattr(__main__, 'serve_one')\n" + RIGHT) == [1.0]


def test_nothing_a_program_leaves_in_tmp_reaches_the_next():
    """One worker, so that the second program runs where the first one filled /tmp and hid a folder."""
    with LocalSandbox(LIMITS, workers=1) as box:
        litter = (  # files of 1 MiB (under its file-size limit) until /tmp is full, in folders it then hides
            "import os, resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))\nos.makedirs('/tmp/hidden/deep')\n"
            "try:\n    for i in range(1000):\n        with open(f'/tmp/hidden/deep/{i}', 'wb') as f:\n"
            "            f.write(b'x' * (1 << 20))\nexcept OSError:\n    pass\n"
            "os.chmod('/tmp/hidden/deep', 0)\nos.chmod('/tmp/hidden', 0)\n" + RIGHT
        )
        clean = "import os\nassert sorted(os.listdir('/tmp')) == ['main.py']\n" + RIGHT  # its own file only
        outcomes = box.run_tests([Program(litter, TESTS), Program(clean, TESTS)])
    assert [o.fraction for o in outcomes] == [1.0, 1.0], outcomes


# A right solution to STDIO: the sum of two numbers on one line.
STDIO = ["check_stdio('1 2\\n', '3\\n')", "check_stdio('2 2\\n', '4\\n')", "check_stdio('10 -3\\n', '7')"]
SUM = "print(sum(map(int, input().split())))"


def test_replacing_enumerate_does_not_steer_the_test_loop(reward):
    """The test loop must not look up builtins after the program ran: a program whose enumerate hands out harmless
    statements instead of the tests passes none of them."""
    program = (
        "import builtins\n"
        "builtins.enumerate = lambda tests, *a: iter([(i, 'pass') for i in range(3)])\n"
        "def add(a, b):\n    return None\n"
    )
    assert judge(reward, program) == [0.0]
    humaneval = ["def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)"]
    assert judge(reward, program, tests=humaneval) == [0.0]


def test_a_str_whose_split_equals_anything_fools_no_stdio_comparison(reward):
    """The output comparison of stdin/stdout problems happens outside the program's process."""
    program = (
        "import builtins\n"
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "class Str(str):\n    def split(self, *args):\n        return Anything()\n"
        "builtins.str = Str\nprint('wrong')\n"
    )
    assert judge(reward, program, SUM, tests=STDIO) == [0.0, 1.0]


def test_an_object_equal_to_everything_fails_value_tests(reward):
    """Values are compared outside, as plain data: an object whose __eq__ is always true is opaque there."""
    program = (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
        "def add(a, b):\n    return Anything()\n"
    )
    assert judge(reward, program) == [0.0]


# Collects a frame of the program's own through gc.garbage (DEBUG_SAVEALL), walks f_back into the harness's frames,
# and writes every secret-like value it finds there to every descriptor, in the shape of a harness report.
GC_FRAMES = """
import gc, json, os
try:
    gc.set_debug(gc.DEBUG_SAVEALL)
except Exception:
    pass
def grab():
    try:
        raise ValueError
    except ValueError as e:
        caught = e
grab()
gc.collect()
frames = [o for o in gc.garbage if type(o).__name__ == "frame"]
seen = []
for frame in frames:
    while frame is not None:
        seen.append(frame)
        frame = frame.f_back
report = json.dumps({"results": [["p", True]] * 3, "detail": ""}).encode()
for frame in seen:
    for name, value in list(frame.f_locals.items()):
        if isinstance(value, list) and name == "handoff":
            value.append(report)
        if isinstance(value, bytes) and len(value) == 32:
            for fd in range(3, 64):
                for line in (value + b" 3 3 \\"\\"\\n", b"R " + value + b" " + report + b"\\n"):
                    try:
                        os.write(fd, line)
                    except OSError:
                        pass
def add(a, b):
    return None
"""


def test_frames_from_gc_garbage_reach_no_secret(reward):
    """gc debugging is refused, and no frame the program could reach holds the secret: the forged reports fail
    on value tests and on in-process tests."""
    humaneval = ["def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)"] * 3
    assert judge(reward, GC_FRAMES, GC_FRAMES, tests=TESTS) == [0.0, 0.0]
    assert judge(reward, GC_FRAMES, tests=humaneval) == [0.0]


# Copies a denied extension module into a package of its own and imports it from there.
COPIED_EXTENSION = """
import glob, os, resource, shutil, sys
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room for the copies
os.makedirs("/tmp/pkg", exist_ok=True)
open("/tmp/pkg/__init__.py", "w").close()
for name in ("_testinternalcapi", "_posixsubprocess"):
    source = [p for d in sys.path for p in glob.glob(os.path.join(d, name + ".*.so"))][0]
    shutil.copy(source, "/tmp/pkg/" + os.path.basename(source))
sys.path.insert(0, "/tmp")
try:
    import pkg._testinternalcapi as capi
    import pkg._posixsubprocess
except ImportError:
    refused = True
else:
    refused = False
    config = capi.get_config()
    config["optimization_level"] = 1  # asserts compile away
    capi.set_config(config)
def add(a, b):
    return None
"""


def test_a_copy_of_a_denied_extension_under_a_package_is_refused(reward):
    humaneval = ["def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)"]
    assert judge(reward, COPIED_EXTENSION) == [0.0]
    assert judge(reward, COPIED_EXTENSION, tests=humaneval) == [0.0]
    # the refusal itself: a program that is right only when the import was refused scores 1
    refused = COPIED_EXTENSION.replace("return None", "return a + b if refused else None")
    assert judge(reward, refused) == [1.0]


def test_the_harnesss_patches_lead_nowhere(reward):
    """The functions the harness put in the program's reach (signal.signal, gc.set_debug, fork_exec) are refusals
    whose globals are their own: through them the program finds no deny list to empty and no harness to call."""
    program = (
        "import gc, signal, sys, _posixsubprocess\n"
        "for patched in (signal.signal, gc.set_debug, _posixsubprocess.fork_exec):\n"
        "    for name, value in list(patched.__globals__.items()):\n"
        "        if isinstance(value, (set, dict, list)) and name != '__builtins__':\n"
        "            try:\n                value.clear()\n            except Exception:\n                pass\n"
        "try:\n    sys.settrace(lambda *a: None)\n    traced = True\nexcept RuntimeError:\n    traced = False\n"
        "found = any('serve_one' in p.__globals__ for p in (signal.signal, gc.set_debug))\n"
        "def add(a, b):\n    return None if traced or found else a + b\n"
    )
    assert judge(reward, program) == [1.0]


LYING_VALUES = {
    # values whose own methods lie about them: the verdict reads the plain data, never the program's methods
    "int_subclass": "class I(int):\n    def __eq__(s, o): return True\n    __hash__ = int.__hash__\n"
    "    def __repr__(s): return '3'\n    def __index__(s): return 3\n    def __int__(s): return 3\n"
    "def add(a, b):\n    return I(7)\n",
    "float_subclass": "class F(float):\n    def __eq__(s, o): return True\n    __hash__ = float.__hash__\n"
    "    def __repr__(s): return '3.0'\ndef add(a, b):\n    return F(7.0)\n",
    "list_subclass": "class L(list):\n    def __iter__(s): return iter([3])\n    def __len__(s): return 1\n"
    "    def __eq__(s, o): return True\n    __hash__ = None\ndef add(a, b):\n    return L([7])\n",
    "patched_builtins": "import builtins, json\njson.dumps = lambda *a, **k: '3'\nbuiltins.repr = lambda x: '3'\n"
    "builtins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: int\ndef add(a, b):\n    return 7\n",
    "forged_lines": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"values\": [3, 0, 10]}\\n' * 3)\n"
    "    except OSError:\n        pass\ndef add(a, b):\n    return 7\n",
    "deep_value": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "exit_hook_output": "import atexit, os\natexit.register(lambda: os.write(1, b'3\\n'))\ndef add(a, b):\n    return 7\n",
}


@pytest.mark.parametrize("attack", list(LYING_VALUES))
def test_values_that_lie_about_themselves_score_zero(reward, attack):
    assert judge(reward, LYING_VALUES[attack]) == [0.0]


def test_stdio_programs_that_forge_their_output_score_zero(reward):
    tests = ["check_stdio('1 2\\n', '3\\n')", "check_stdio('-1 1\\n', '0\\n')", "check_stdio('5 5\\n', '10\\n')"]
    forged = [
        "import sys\nclass W:\n    def write(s, x): return len(x)\n    def flush(s): pass\nsys.stdout = W()\nprint(42)\n",
        "import os\nfor fd in range(0, 64):\n    try:\n        os.write(fd, b'3\\n0\\n10\\n')\n    except OSError:\n"
        "        pass\n",
    ]
    assert judge(reward, *forged, tests=tests) == [0.0, 0.0]
