"""Converters from the code benchmarks' own test formats to the ``tests`` column the code judge reads.

Every converter returns a list of Python test statements, in the forms the sandbox judges outside the program
where the data allows it (the expected value never enters the program's process):

    check_stdio(stdin, expected)          standard input/output: the program runs afresh as a script per test and its
                                          output is compared with ``expected`` token by token (whitespace split)
    [setup statements] assert <call> == <literal>
                                          a value test: the call's value is compared with the literal (``repr`` of
                                          the JSON-decoded expected value) by Python's ``==``

and otherwise statements that run in the program's process (HumanEval's ``check(candidate)``).

    mbpp_tests(test_list, test_setup_code, test_imports)   MBPP (full and sanitized): the asserts as they are, after
                                          the setup code and the imports
    humaneval_tests(test, entry_point)    HumanEval: one statement, the test code (defining ``check``) then
                                          ``check(<entry_point>)``; all or nothing, in-process
    stdio_tests(inputs, outputs)          one ``check_stdio`` per input/output pair
    call_tests(function, arguments, expected, value)
                                          one value test per call: ``assert value(function(*arguments)) == expected``
    apps_tests(input_output, starter_code)
                                          APPS and TACO: call-based with ``fn_name``, else standard input/output
    codecontests_tests(*groups)           CodeContests: its public, private and generated tests (standard I/O)
    livecodebench_tests(cases, metadata)  LiveCodeBench: ``functional`` cases as value tests on
                                          ``Solution().<func_name>``, ``stdin`` cases as standard input/output
    decode_livecodebench_tests(value)     LiveCodeBench's test cases: JSON, or (its private tests) base64 of zlib of a
                                          pickled JSON string, unpickled with no class allowed

``APPS_IMPORTS`` and ``LIVECODEBENCH_IMPORTS`` are the imports those benchmarks' own harnesses put before every
program (right programs may rely on them, e.g. ``List[int]`` without importing ``typing``); `recipes/prepare_code.py`
writes them as the ``code_prefix`` column, which the code judge runs before the program.

The benchmarks' checkers accept a little more than ``==``; what is matched here:

- APPS (and TACO) store call-based outputs wrapped in a one-element list (``[[0, 1]]`` for ``[0, 1]``), though not
  always; their checker accepts the result equal to the stored output or to its first element, with tuples (a tuple
  result, tuples inside a list result) as lists. The tests compare `apps_value` of the result (its definition is the
  test's setup) with `apps_value` of the stored output: tuples as lists, every top level of one-element list
  removed. Every result APPS accepts passes; beyond it, so do results that differ from an accepted one only by
  one-element lists around them (``[[5]]`` where APPS takes ``5`` or ``[5]``).
- LiveCodeBench compares with ``==`` after turning a tuple result into a list: `livecodebench_value` does the same.
- Standard output is compared token by token (APPS's and LiveCodeBench's main rule); their further fallbacks (floats
  within a tolerance, lines as sets) are not applied.
"""

import ast
import base64
import inspect
import io
import json
import pickle
import zlib

from ..sandbox.programs import STDIO_CALL

# APPS's testing_util.py puts this before every program (TACO's checker too); numpy is optional in the sandbox.
APPS_IMPORTS = (
    "import sys\nimport time\nimport itertools\nfrom itertools import accumulate, product, permutations, combinations\n"
    "import collections\nfrom collections import Counter, OrderedDict, deque, defaultdict, ChainMap\n"
    "from functools import lru_cache\nimport math\nfrom math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, "
    "log, log2\nimport fractions\nfrom typing import List, Tuple\ntry:\n    import numpy as np\nexcept ImportError:\n"
    "    pass\nimport random\nimport heapq\nfrom heapq import *\n"
)
# LiveCodeBench's testing_util.py puts this before every program.
LIVECODEBENCH_IMPORTS = (
    "".join(
        f"from {m} import *\n"
        for m in "string re datetime collections heapq bisect copy math random statistics itertools functools operator io "
        "sys json builtins typing".split()
    )
    + "".join(
        f"import {m}\n"
        for m in "string re datetime collections heapq bisect copy math random statistics itertools functools operator io "
        "sys json".split()
    )
    + "sys.setrecursionlimit(50000)\n"
)


def livecodebench_value(result):
    """LiveCodeBench's checker turns a tuple result into a list (JSON has no tuples)."""
    return list(result) if isinstance(result, tuple) else result


def apps_value(result):
    """APPS's checker (and TACO's) turns a tuple result, and tuples inside a list result, into lists, and accepts the
    stored output or its first element (outputs are stored wrapped in a one-element list, not always): here both
    sides are read with every top level of one-element list removed."""
    for _ in range(100):  # bounded: a list may contain itself
        if isinstance(result, tuple):
            result = list(result)
        if not isinstance(result, list):
            return result
        result = [list(x) if isinstance(x, tuple) else x for x in result]
        if len(result) != 1:
            return result
        result = result[0]
    return result


# LiveCodeBench's private tests can be large (tens of MB); more than this is refused rather than unpacked.
MAX_DECODED_TEST_BYTES = 1 << 30


def _statements(name: str, value) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings, got {type(value).__name__}")
    return list(value)


def _json(name: str, value):
    """A JSON-string column decoded (datasets often store nested data as JSON strings); other values as they are."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as error:
            raise ValueError(f"{name} must be JSON, got {value[:80]!r}: {error}") from None
    return value


def mbpp_tests(test_list, test_setup_code: str = "", test_imports=()) -> list[str]:
    """MBPP's ``test_list`` (assert statements), each preceded by MBPP-sanitized's ``test_imports`` (import statements)
    and full MBPP's ``test_setup_code`` when there are some."""
    tests = _statements("test_list", test_list)
    imports = _statements("test_imports", list(test_imports or ()))
    if not isinstance(test_setup_code, str):
        raise ValueError(f"test_setup_code must be a string, got {type(test_setup_code).__name__}")
    setup = "\n".join([*(line.strip() for line in imports), test_setup_code.strip()]).strip()
    return [f"{setup}\n{test}" if setup else test for test in tests]


def humaneval_tests(test: str, entry_point: str) -> list[str]:
    """HumanEval's ``test`` (code defining ``check(candidate)``) and ``entry_point`` (the function's name) as one
    statement that defines ``check`` and calls it on the program's function."""
    if not isinstance(test, str) or not test.strip():
        raise ValueError("test must be HumanEval's non-empty test code (defining check(candidate))")
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
    return [f"{test.rstrip()}\n\ncheck({entry_point})"]


def stdio_tests(inputs, outputs) -> list[str]:
    """One ``check_stdio(stdin, expected_stdout)`` statement per input/output pair."""
    inputs, outputs = _statements("inputs", inputs), _statements("outputs", outputs)
    if len(inputs) != len(outputs):
        raise ValueError(f"inputs and outputs must pair up, got {len(inputs)} inputs and {len(outputs)} outputs")
    return [f"{STDIO_CALL}{stdin!r}, {expected!r})" for stdin, expected in zip(inputs, outputs, strict=True)]


def _source(function) -> str:
    """The source of a function of this module without its docstring (the setup of a value test)."""
    definition = ast.parse(inspect.getsource(function)).body[0]
    if ast.get_docstring(definition) is not None:
        definition.body = definition.body[1:]
    return ast.unparse(definition)


def call_tests(function: str, arguments, expected, value=None) -> list[str]:
    """One value test per call: ``assert function(*arguments[i]) == expected[i]``, the values written as literals.

    Args:
        function (`str`): what is called: a function name (``add``) or ``Solution().method``.
        arguments: for each test, the list of positional arguments (JSON-decoded values).
        expected: for each test, the expected value.
        value (*optional*): a function of this module the call's result goes through (`apps_value`,
            `livecodebench_value`: the benchmarks' checkers' own leniencies); its source is the test's setup.
    """
    if not isinstance(arguments, (list, tuple)) or not isinstance(expected, (list, tuple)):
        raise ValueError("arguments and expected must be lists, one entry per test")
    if len(arguments) != len(expected):
        raise ValueError(f"arguments and expected must pair up, got {len(arguments)} and {len(expected)}")
    setup, name = (_source(value), value.__name__) if value is not None else ("", "")
    tests = []
    for args, result in zip(arguments, expected, strict=True):
        args = args if isinstance(args, (list, tuple)) else [args]
        call = f"{function}({', '.join(repr(a) for a in args)})"
        test = f"assert {name}({call}) == {result!r}" if name else f"assert {call} == {result!r}"
        tests.append(f"{setup}\n{test}" if setup else test)
    return tests


def solution_callable(starter_code: str | None, fn_name: str) -> str:
    """What a call-based test calls: ``Solution().fn_name`` when the starter code is a LeetCode class, else
    ``fn_name`` (APPS's checker does the same)."""
    if not isinstance(fn_name, str) or not fn_name.isidentifier():
        raise ValueError(f"fn_name must be a Python identifier, got {fn_name!r}")
    return f"Solution().{fn_name}" if "class Solution" in (starter_code or "") else fn_name


def _joined(value) -> str:
    """APPS stores some standard inputs and outputs as lists of lines; its checker joins them with newlines."""
    return "\n".join(str(v) for v in value) if isinstance(value, list) else str(value)


def apps_tests(input_output, starter_code: str | None = "") -> list[str]:
    """APPS / TACO ``input_output`` (a JSON string of ``{"inputs", "outputs"}`` and, for call-based problems,
    ``"fn_name"``) as tests: value tests on the function (or ``Solution()`` method) with ``fn_name``, else standard
    input/output tests. Empty when the row has no tests (some APPS rows)."""
    spec = _json("input_output", input_output) if input_output not in (None, "") else {}
    if not isinstance(spec, dict):
        raise ValueError(f"input_output must be a JSON object of inputs and outputs, got {type(spec).__name__}")
    inputs, outputs = spec.get("inputs") or [], spec.get("outputs") or []
    if spec.get("fn_name"):
        # the stored output without APPS's wrapping list, then read as APPS_VALUE reads the result
        expected = [apps_value(o) for o in outputs]
        return call_tests(solution_callable(starter_code, spec["fn_name"]), inputs, expected, apps_value)
    return stdio_tests([_joined(i) for i in inputs], [_joined(o) for o in outputs])


def codecontests_tests(*groups, max_tests: int | None = None) -> list[str]:
    """CodeContests' test groups (``public_tests``, ``private_tests``, ``generated_tests``: each ``{"input": [...],
    "output": [...]}``) as standard input/output tests, in that order, a repeated input once, at most `max_tests`."""
    inputs, outputs, seen = [], [], set()
    for number, group in enumerate(groups):
        group = _json(f"test group {number}", group) or {}
        for stdin, expected in zip(group.get("input") or [], group.get("output") or [], strict=True):
            if stdin not in seen:
                seen.add(stdin)
                inputs.append(stdin)
                outputs.append(expected)
    if max_tests is not None:
        inputs, outputs = inputs[:max_tests], outputs[:max_tests]
    return stdio_tests(inputs, outputs)


class _NoClassUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference (the way a pickle runs code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused {module}.{name}: LiveCodeBench's tests are a pickled string")


def decode_livecodebench_tests(value, max_bytes: int = MAX_DECODED_TEST_BYTES) -> list[dict]:
    """LiveCodeBench's test cases: a JSON string (``public_test_cases``), or base64 of zlib of a pickled JSON string
    (``private_test_cases`` of code_generation_lite). The pickle may hold nothing but a string: no class is ever
    loaded, so decoding cannot run code."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise ValueError(f"LiveCodeBench test cases must be a string, got {type(value).__name__}")
    if not value.strip():
        return []
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        unpacker = zlib.decompressobj()
        raw = unpacker.decompress(base64.b64decode(value, validate=False), max_bytes)
        if unpacker.unconsumed_tail:
            raise ValueError(f"LiveCodeBench test cases unpack to more than {max_bytes} bytes")
        text = _NoClassUnpickler(io.BytesIO(raw)).load()
    except (zlib.error, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"LiveCodeBench test cases are neither JSON nor base64/zlib/pickle: {error}") from None
    if not isinstance(text, str):
        raise ValueError(f"LiveCodeBench's pickled test cases must be a JSON string, got {type(text).__name__}")
    return json.loads(text)


def livecodebench_tests(cases, metadata=None, starter_code: str | None = "") -> list[str]:
    """LiveCodeBench test cases (decoded, or as stored) as tests: ``functional`` cases (LeetCode) call
    ``Solution().<func_name>`` (``metadata``'s ``func_name``) with one argument per line of the input, each a JSON
    value, and expect the JSON-decoded output; ``stdin`` cases are standard input/output tests."""
    cases = decode_livecodebench_tests(cases)
    metadata = _json("metadata", metadata) or {}
    functional = [c for c in cases if c.get("testtype") == "functional"]
    if functional:
        if not metadata.get("func_name"):
            raise ValueError("functional LiveCodeBench tests need metadata's func_name")
        function = solution_callable(starter_code if starter_code else "class Solution", metadata["func_name"])
        arguments = [[json.loads(line) for line in c["input"].split("\n") if line.strip()] for c in functional]
        expected = [json.loads(c["output"]) for c in functional]
        tests = call_tests(function, arguments, expected, livecodebench_value)
    else:
        tests = []
    stdin = [c for c in cases if c.get("testtype", "stdin") == "stdin"]
    return tests + stdio_tests([c["input"] for c in stdin], [c["output"] for c in stdin])
