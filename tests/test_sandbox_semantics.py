"""Right programs score as plain ``python3`` scores them, and the judge compares as plain Python compares.

Every program here runs for real in the bubblewrap sandbox. The stdin/stdout cases are checked against an
independent run of the same program with ``python3 main.py < input`` in a temporary folder; the value cases against
Python's own ``==`` on the same values. Host-only parts (parsing tests into forms, decoding values, the request that
enters the sandbox) are tested without it.
"""

import json
import subprocess
import sys

import pytest

from trl_shaped.sandbox import LocalSandbox, Program, SandboxLimits, verdict

LIMITS = SandboxLimits(wall_time_s=5, cpu_time_s=5, tmp_bytes=16 << 20)
SUM_TESTS = ["check_stdio('1 2\\n', '3\\n')", "check_stdio('2 2\\n', '4')", "check_stdio('10 -3', '7\\n')"]


@pytest.fixture(scope="module")
def sandbox():
    box = LocalSandbox(LIMITS, workers=2)
    yield box
    box.close()


def plain_python(code: str, stdin: str, tmp_path) -> tuple[int, str]:
    """Independent of the sandbox: `python3 main.py < stdin` in a fresh folder (exit status, standard output)."""
    (tmp_path / "main.py").write_text(code)
    run = subprocess.run(
        [sys.executable, "-I", "main.py"], input=stdin, capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    return run.returncode, run.stdout


STDIO_PROGRAMS = {
    "exit": "print(sum(map(int, input().split())))\nexit()",
    "quit": "print(sum(map(int, input().split())))\nquit(0)",
    "sys_exit_zero": "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))\nsys.exit(0)",
    "file": "import os\nassert os.path.basename(__file__) == 'main.py' and os.path.isfile(__file__)\n"
    "print(sum(map(int, input().split())))",
    "argv": "import sys\nassert sys.argv == ['main.py'], sys.argv\nprint(sum(map(int, input().split())))",
    "stderr_and_warnings": "import sys, warnings\nprint('debug: reading', file=sys.stderr)\n"
    "warnings.warn('careful')\nprint(sum(map(int, input().split())))",
    "open_fd_0": "print(sum(map(int, open(0).read().split())))",
    "dunder_stdout": "import io, sys\nsys.stdout = io.StringIO()  # a buffer of its own\n"
    "sys.__stdout__.write(str(sum(map(int, input().split()))) + '\\n')",
    "thread_without_join": "import threading\ndef main():\n    print(sum(map(int, input().split())))\n"
    "threading.Thread(target=main).start()",
    "atexit": "import atexit\nvalues = list(map(int, input().split()))\natexit.register(lambda: print(sum(values)))",
    "thread_pool": "import threading\nfrom concurrent.futures import ThreadPoolExecutor\n"
    "values = list(map(int, input().split()))\nbarrier = threading.Barrier(20)  # 20 threads at once\n"
    "def task(i):\n    barrier.wait(timeout=30)\n    return values[i] if i < len(values) else 0\n"
    "with ThreadPoolExecutor(20) as pool:\n    print(sum(pool.map(task, range(20))))",
    "fork_process": "import multiprocessing as mp\ndef child(conn, values):\n    conn.send(sum(values))\n"
    "if __name__ == '__main__':\n    values = list(map(int, input().split()))\n"
    "    parent, end = mp.Pipe()\n    p = mp.get_context('fork').Process(target=child, args=(end, values))\n"
    "    p.start()\n    print(parent.recv())\n    p.join()",
    "numpy": "import numpy as np\nprint(int(np.array(input().split(), dtype=np.int64).sum()))",
    "pickle_main_class": "import pickle\nclass Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
    "pair = pickle.loads(pickle.dumps(Pair(*map(int, input().split()))))\nprint(pair.a + pair.b)",
}


@pytest.mark.parametrize("name", list(STDIO_PROGRAMS))
def test_right_stdio_programs_score_as_plain_python(sandbox, name, tmp_path):
    code = STDIO_PROGRAMS[name]
    # the reference: plain python3 gets every test right
    for test in SUM_TESTS:
        form = verdict.parse_test(test)
        status, output = plain_python(code, form.stdin, tmp_path)
        assert status == 0 and output.split() == form.expected.split(), (name, status, output)
    outcome = sandbox.run_tests([Program(code, SUM_TESTS)])[0]
    assert outcome.status == "ok" and outcome.results == (True, True, True), outcome


def test_multiprocessing_pool(sandbox, tmp_path):
    code = (
        "import multiprocessing as mp\ndef total(pair):\n    return sum(pair)\nif __name__ == '__main__':\n"
        "    with mp.Pool(2) as pool:\n        print(pool.map(total, [list(map(int, input().split()))])[0])"
    )
    assert plain_python(code, "1 2\n", tmp_path) == (0, "3\n")
    outcome = sandbox.run_tests([Program(code, SUM_TESTS)])[0]
    assert outcome.results == (True, True, True), outcome


def test_a_non_zero_exit_fails_that_test_only(sandbox, tmp_path):
    code = "a, b = map(int, input().split())\nprint(a + b)\nif a == 2:\n    raise SystemExit(3)"
    assert [plain_python(code, verdict.parse_test(t).stdin, tmp_path)[0] for t in SUM_TESTS] == [0, 3, 0]
    outcome = sandbox.run_tests([Program(code, SUM_TESTS)])[0]
    assert outcome.results == (True, False, True) and "exited with 3" in outcome.detail, outcome


VALUE_PROGRAMS = {
    # a LeetCode answer, pickling and type hints of its own classes, exit() at its end
    "solution_class": (
        "import pickle, typing\nclass Node:\n    pass\nclass Solution:\n"
        "    def twoSum(self, nums: 'list[int]', target: int) -> 'list[int]':\n"
        "        seen = {}\n        for i, n in enumerate(nums):\n"
        "            if target - n in seen:\n                return [seen[target - n], i]\n            seen[n] = i\n"
        "def hints(x: 'Node') -> 'Node':\n    return x\n"
        "assert typing.get_type_hints(hints) == {'x': Node, 'return': Node}\n"
        "assert isinstance(pickle.loads(pickle.dumps(Node())), Node)\nexit()"
    ),
    # 2 MB of debug prints on a function problem
    "debug_prints": "import sys\ndef twoSum(nums, target):\n    for _ in range(2000):\n        print('x' * 1000)\n"
    "        print('y' * 1000, file=sys.stderr)\n    return [0, 1]\nclass Solution:\n"
    "    def twoSum(self, nums, target):\n        return twoSum(nums, target)",
}
VALUE_TESTS = ["assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]", "assert Solution().twoSum([3, 3], 6) == [0, 1]"]


@pytest.mark.parametrize("name", list(VALUE_PROGRAMS))
def test_right_function_programs_score_as_plain_python(sandbox, name, tmp_path):
    code = VALUE_PROGRAMS[name]
    status, _ = plain_python(code.replace("exit()", "") + "\n" + "\n".join(VALUE_TESTS), "", tmp_path)
    assert status == 0
    outcome = sandbox.run_tests([Program(code, VALUE_TESTS)])[0]
    assert outcome.status == "ok" and outcome.results == (True, True), outcome


def test_limits_apply_per_test_with_a_total_cap():
    """0.1 s per test: 80 tests pass under a 5 s wall time per test (8 s in all); a total cap of 1 s stops them."""
    code = "import time\ndef f(x):\n    time.sleep(0.1)\n    return x"
    tests = [f"assert f({i}) == {i}" for i in range(80)]
    stdio_code = "import time\ntime.sleep(0.1)\nprint(input())"
    stdio_tests = [f"check_stdio('{i}', '{i}')" for i in range(20)]
    with LocalSandbox(SandboxLimits(wall_time_s=1, cpu_time_s=1), workers=2) as box:
        right, stdio = box.run_tests([Program(code, tests), Program(stdio_code, stdio_tests)])
    assert right.status == "ok" and right.passed == 80, right
    assert stdio.status == "ok" and stdio.passed == 20, stdio
    with LocalSandbox(SandboxLimits(wall_time_s=1, cpu_time_s=1, total_time_s=1), workers=1) as box:
        capped = box.run_tests([Program(code, tests)])[0]
    assert capped.status == "timeout" and capped.passed == 0, capped


def test_packages_setting(sandbox):
    """numpy is the default package; an empty tuple leaves only the standard library; names are checked."""
    program = Program("import numpy as np\ndef total(n):\n    return np.arange(n).sum()", ["assert total(4) == 6"])
    assert sandbox.run_tests([program])[0].passed == 1
    with LocalSandbox(SandboxLimits(packages=()), workers=1) as bare:
        outcome = bare.run_tests([program])[0]
    assert outcome.passed == 0 and "numpy" in outcome.detail, outcome
    with pytest.raises(ValueError, match="packages: 'no_such_package_xyz' is not importable"):
        SandboxLimits(packages=("no_such_package_xyz",))
    with pytest.raises(ValueError, match="packages must"):
        SandboxLimits(packages="numpy")
    with pytest.raises(ValueError, match="total_time_s must be > 0"):
        SandboxLimits(total_time_s=0)


# (expression returning a value, literal in the test): the judge must agree with Python's own `==`.
VALUE_CASES = [
    ("(1, 2)", "[1, 2]"),
    ("[1, 2]", "[1, 2]"),
    ("1", "1.0"),
    ("True", "1"),
    ("0.1 + 0.2", "0.3"),
    ("float('inf')", "float('inf')"),
    ("-float('inf')", "float('-inf')"),
    ("float('nan')", "float('nan')"),
    ("-0.0", "0.0"),
    ("2 ** 20000", hex(2**20000)),  # past int's 4300-digit string limit
    ("collections.namedtuple('P', 'x y')(1, 2)", "(1, 2)"),
    ("enum.IntEnum('E', 'A B').B", "2"),
    ("collections.OrderedDict(a=1)", "{'a': 1}"),
    ("collections.Counter('aab')", "{'a': 2, 'b': 1}"),
    ("{1, 2, 3}", "{3, 2, 1}"),
    ("frozenset({1})", "{1}"),
    ("{'k': [1, (2, 3)], 2: None}", "{2: None, 'k': [1, (2, 3)]}"),
    ("b'ab'", "b'ab'"),
    ("bytearray(b'ab')", "b'ab'"),
    ("'ab'", "b'ab'"),
    ("1 + 2j", "(1+2j)"),
    ("numpy.int64(7)", "7"),
    ("numpy.float64(0.5)", "0.5"),
    ("numpy.bool_(True)", "True"),
    ("numpy.array([1, 2])", "[1, 2]"),
    ("None", "0"),
    ("'x' * 3", "'xxx'"),
    ("[[[]]]", "[[[]]]"),
]


def test_values_compare_as_python_compares(sandbox):
    setup = "import collections, enum, numpy\n"
    programs, expected = [], []
    for expr, literal in VALUE_CASES:
        programs.append(Program(setup + f"def f():\n    return {expr}", [f"assert f() == {literal}"]))
        namespace = {}
        exec(setup + f"value = {expr}", namespace)
        try:
            expected.append(bool(namespace["value"] == eval(literal)))
        except ValueError:  # numpy's array truth value is ambiguous: the assert raises, the test fails
            expected.append(False)
    judged = [o.passed == 1 for o in sandbox.run_tests(programs)]
    assert judged == expected, [case for case, a, b in zip(VALUE_CASES, judged, expected, strict=True) if a != b]


def test_other_value_forms(sandbox):
    code = "import math\ndef f(x):\n    return x / 3\ndef none():\n    return None\ndef empty():\n    return []"
    tests = [
        "assert math.isclose(f(1), 0.3333333, rel_tol=1e-6)",  # right
        "assert abs(f(1) - 0.3333) < 1e-3",  # right
        "assert abs(f(1) - 0.3) <= 1e-3",  # wrong
        "assert none() is None",  # right
        "assert none() is not None",  # wrong
        "assert not empty()",  # right
        "assert empty()",  # wrong
        "assert f(3) in (1, 2)",  # right: 1.0 == 1
        "assert 2 in [f(6)]",  # right
        "assert f(3) > 0.5",  # right
        "assert not f(3) == 1",  # wrong
        "import math\nassert f(math.pi * 3) == math.pi",  # computed expectation: in-process, right
    ]
    forms = [type(verdict.parse_test(t)).__name__ for t in tests]
    assert forms == ["ValueTest"] * 11 + ["InProcessTest"]
    outcome = sandbox.run_tests([Program(code, tests)])[0]
    assert outcome.results == (True, True, False, True, False, True, False, True, True, True, False, True), outcome


def test_behaviour_digest_groups_programs_that_behave_alike(sandbox):
    tests = ["assert f(2) == 4", "assert f(3) == 6", "assert g() == {'a', 'b', 'c'}"]
    sets = "def g():\n    return set('abc')\n"
    doubling = Program(sets + "def f(x):\n    return 2 * x", tests)
    adding = Program(sets + "def f(x):\n    y = x\n    return x + y  # another text, the same behaviour", tests)
    squaring = Program(sets + "def f(x):\n    return x * x", tests)  # right on 2 only
    crashing = Program(sets + "def f(x):\n    return 1 / 0", tests)
    humaneval = Program("def f(x):\n    return 2 * x", ["def check(c):\n    assert c(2) == 4\ncheck(f)"])
    stdio_a = Program("print(sum(map(int, input().split())))", SUM_TESTS)
    stdio_b = Program("a, b = input().split()\nprint('  %d  ' % (int(a) + int(b)))", SUM_TESTS)
    outcomes = sandbox.run_tests([doubling, adding, squaring, crashing, humaneval, stdio_a, stdio_b])
    digests = [o.behaviour for o in outcomes]
    assert digests[0] == digests[1] and len(set(digests[:4])) == 3, digests
    assert outcomes[2].results == (True, False, True) and outcomes[3].results == (False, False, True)
    assert digests[4] is None  # nothing judged outside
    assert digests[5] == digests[6] is not None and digests[5] != digests[0]
    # a run without a result has no behaviour
    hang = sandbox.run_tests([Program("while True:\n    pass", tests)])[0]
    assert hang.status != "ok" and hang.behaviour is None and hang.results == (False, False, False)


def test_expected_values_never_enter_the_sandbox():
    """What the harness receives: the program, stdin, setup and expressions; not one expected value."""
    tests = [
        "assert f(1) == 987654321",
        "import math\nassert math.isclose(f(2), 1234.5678)",
        "assert f(3) is None",
        "assert abs(f(4) - 55555.5) < 1e-3",
        "assert 424242 in f(5)",
    ]
    request, forms = verdict.request("def f(x):\n    return x", tests, LIMITS.for_harness())
    text = json.dumps(request)
    assert request["mode"] == "module" and all(isinstance(f, verdict.ValueTest) for f in forms)
    for secret in ("987654321", "1234.5678", "55555.5", "424242"):
        assert secret not in text
    assert [t["expr"] for t in request["tests"]] == ["f(1)", "f(2)", "f(3)", "f(4)", "f(5)"]
    stdio, _ = verdict.request("print(1)", ["check_stdio('in put', 'the expected output')"], {})
    assert stdio["mode"] == "script" and stdio["tests"] == [{"stdin": "in put"}]
    assert "the expected output" not in json.dumps(stdio)


def test_test_forms_are_parsed_without_running_anything():
    assert verdict.parse_test("check_stdio('1', '2')") == verdict.StdioTest("1", "2")
    assert verdict.parse_test("check_stdio(input_text, '2')") == verdict.InProcessTest("check_stdio(input_text, '2')")
    value = verdict.parse_test("import math\nx = 2\nassert f(x) == [1, -2.5, {'a': (None,)}]")
    assert value == verdict.ValueTest("import math\nx = 2", "f(x)", ("==", [1, -2.5, {"a": (None,)}], False))
    assert verdict.parse_test("assert 3 == f()").check == ("==", 3, True)
    # an assert before the last would carry its expected value into the sandbox: the test runs in-process
    two = "assert f(1) == 2\nassert f(2) == 3"
    assert verdict.parse_test(two) == verdict.InProcessTest(two)
    assert isinstance(verdict.parse_test("assert f(1) == g(2)"), verdict.InProcessTest)
    assert isinstance(verdict.parse_test("def check(c):\n    assert c(1) == 2\ncheck(f)"), verdict.InProcessTest)
    assert isinstance(verdict.parse_test("assert f(1) == __import__('os').getpid()"), verdict.InProcessTest)
    assert isinstance(verdict.parse_test("this is not python"), verdict.InProcessTest)
    # a problem whose tests are not all stdio runs its check_stdio calls in-process (they fail there)
    mode, forms = verdict.plan(["check_stdio('1', '1')", "assert f() == 1"])
    assert mode == "module" and isinstance(forms[0], verdict.InProcessTest)


def test_decoding_is_plain_data_and_bounded():
    assert verdict.decode_value(["int", hex(10**5000)]) == 10**5000
    assert verdict.decode_value(["tuple", [["float", float.hex(0.1)], None, True]]) == (0.1, None, True)
    assert verdict.decode_value(["set", ["a", ["frozenset", []]]]) == {"a", frozenset()}
    assert verdict.decode_value(["list", [1, "x", -(10**17)]]) == [1, "x", -(10**17)]
    assert verdict.decode_value(["npbool", 1]) == True and verdict.decode_value(["npbool", 1]) is not True  # noqa: E712
    malformed = (["eval", "__import__('os')"], ["int", "not hex"], 10**19, 1.5, ["dict", [[1]]], ["float", 1], [])
    for data in malformed:
        assert isinstance(verdict.decode_value(data), verdict.Opaque), data
    deep = None
    for _ in range(500):
        deep = ["list", [deep]]
    value = verdict.decode_value(deep)  # no recursion error: below MAX_DEPTH the rest is opaque
    for _ in range(verdict.MAX_DEPTH + 1):
        value = value[0]
    assert isinstance(value, verdict.Opaque)
    opaque = verdict.Opaque()
    assert opaque != opaque and not (opaque == 1) and [opaque] != [1]
