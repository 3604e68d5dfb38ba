"""Judging code outside the program: the test forms, parsed on the host, and the comparison of what a program produced.

A Python process has no memory protection, so a verdict computed inside the program's process is only as honest as
the program. Every test string of a `Program` is parsed here (with `ast`, never run) into one of three forms:

    StdioTest      ``check_stdio(stdin, expected)`` (two string literals). Only ``stdin`` enters the sandbox: each test
                   runs the program afresh as ``python3 main.py < stdin``; the harness's server (not the program)
                   hashes its standard output's whitespace-separated tokens and the host compares the hash with the
                   expected output's. Standard error is discarded; a non-zero exit fails the test.
    ValueTest      ``assert <expr> == <literal>`` (or ``<literal> == <expr>``; ``!=``, ``<``, ``<=``, ``>``, ``>=``,
                   ``<expr> in <literal>``, ``<literal> in <expr>``; a leading ``not`` flips them),
                   ``assert <expr> is [not] True/False/None``, ``assert [not] <expr>`` (truthiness),
                   ``assert math.isclose(<expr>, <literal>, rel_tol=..., abs_tol=...)`` and
                   ``assert abs(<expr> - <literal>) <(=) <tol>``, optionally after setup statements (MBPP's
                   ``import math``; no assert among them). A literal is anything `ast.literal_eval` accepts, negative
                   numbers and containers included, and ``float("inf")`` / ``float("nan")``. The setup runs in the
                   program's namespace and only ``<expr>`` is evaluated there; its value comes back ENCODED as plain
                   data (`decode_value`) and is compared here, with Python's own ``==`` (``(1, 2) == [1, 2]`` is False,
                   ``1 == 1.0`` True). The literal never enters the sandbox.
    InProcessTest  anything else (HumanEval's ``check(candidate)``, asserts with computed expectations, a
                   ``check_stdio`` call in a problem whose other tests are not stdio). It runs in the program's
                   process and its verdict is the harness's report: the weaker guarantee (see harness.py).

A problem whose tests are all stdio runs as a script (``mode: "script"``); otherwise the program runs once and its
tests run in order in its namespace (``mode: "module"``). `outcome` turns the harness's reply into a `TestOutcome`,
with per-test results and the `behaviour` digest of what the program produced on the tests judged here.
"""

import ast
import dataclasses
import functools
import hashlib
import json
import math
import operator

from .programs import STDIO_CALL, TestOutcome

MAX_DEPTH = 100  # nesting of a decoded value (the harness encodes deeper values as opaque)
ERROR_MARK = "!error"  # what an error contributes to the behaviour digest


@dataclasses.dataclass(frozen=True)
class StdioTest:
    """Run the program with `stdin`; its output must equal `expected` token by token."""

    stdin: str
    expected: str

    def request(self) -> dict:
        return {"stdin": self.stdin}


@dataclasses.dataclass(frozen=True)
class ValueTest:
    """Run `setup`, evaluate `expr` in the program's namespace, compare its value with `check` on the host.

    `check` is a tuple: ``("==", literal, reversed)``, ``("!=", literal, reversed)``, ``("cmp", op, literal,
    reversed)`` (op one of < <= > >=), ``("in", literal, reversed)`` (reversed: ``literal in <expr>``),
    ``("is", literal, negated)``, ``("truth", negated)`` (the harness returns ``bool(<expr>)``),
    ``("isclose", literal, rel_tol, abs_tol)`` or ``("absdiff", literal, op, tol)``.
    """

    setup: str
    expr: str
    check: tuple

    def request(self) -> dict:
        return {"kind": "value", "setup": self.setup, "expr": self.expr, "truth": self.check[0] == "truth"}


@dataclasses.dataclass(frozen=True)
class InProcessTest:
    """A statement run in the program's process; it passes when it returns."""

    source: str

    def request(self) -> dict:
        return {"kind": "inprocess", "source": self.source}


def _string(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _literal(node):
    """(True, value) when `node` is a literal (ast.literal_eval, or float('inf'/'nan'), possibly negated), else
    (False, None). Never runs anything."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        ok, value = _literal(node.operand)
        if ok and isinstance(value, (int, float, complex)) and not isinstance(value, bool):
            return True, -value if isinstance(node.op, ast.USub) else +value
        return False, None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "float"
        and len(node.args) == 1
        and not node.keywords
        and _string(node.args[0]) is not None
    ):
        text = node.args[0].value.strip().lower()
        if text in ("inf", "+inf", "-inf", "infinity", "-infinity", "nan", "+nan", "-nan"):
            return True, float(text)
        return False, None
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _number_literal(node):
    ok, value = _literal(node)
    return (True, value) if ok and isinstance(value, (int, float)) and not isinstance(value, bool) else (False, None)


_NEGATED = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
_OPERATORS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


def _value_check(test: ast.expr):
    """(expr node, check) for an assert's test that a ValueTest can judge, else None."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _value_check(test.operand)
        if inner is None:
            return None
        expr, check = inner
        if check[0] in ("truth", "is"):
            return expr, (*check[:-1], not check[-1])
        if check[0] in ("==", "!="):
            return expr, (_NEGATED[check[0]], *check[1:])
        if check[0] == "cmp":
            return expr, ("cmp", _NEGATED[check[1]], *check[2:])
        return None
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        return _compare_check(test.left, test.ops[0], test.comparators[0])
    if isinstance(test, ast.Call) and _is_isclose(test.func) and len(test.args) == 2:
        tolerances = {"rel_tol": 1e-09, "abs_tol": 0.0}
        for keyword in test.keywords:
            ok, value = _number_literal(keyword.value)
            if keyword.arg not in tolerances or not ok:
                return None
            tolerances[keyword.arg] = value
        for expr, other in ((test.args[0], test.args[1]), (test.args[1], test.args[0])):
            ok, value = _number_literal(other)
            if ok and not _number_literal(expr)[0]:
                return expr, ("isclose", value, tolerances["rel_tol"], tolerances["abs_tol"])
        return None
    return test, ("truth", False)


def _compare_check(left, op, right):
    if isinstance(op, (ast.Eq, ast.NotEq)):
        name = "==" if isinstance(op, ast.Eq) else "!="
        ok, value = _literal(right)
        if ok:
            return left, (name, value, False)
        ok, value = _literal(left)
        return (right, (name, value, True)) if ok else None
    if isinstance(op, (ast.Is, ast.IsNot)) and isinstance(right, ast.Constant):
        if right.value is None or isinstance(right.value, bool):
            return left, ("is", right.value, isinstance(op, ast.IsNot))
        return None
    if isinstance(op, ast.In):
        ok, value = _literal(right)
        if ok and isinstance(value, (tuple, list, set, frozenset, dict, str, bytes)):
            return left, ("in", value, False)
        ok, value = _literal(left)
        return (right, ("in", value, True)) if ok else None
    if type(op) in _OPERATORS:
        name = _OPERATORS[type(op)]
        absolute = _absolute_difference(left)  # abs(<expr> - <literal>) < tol: the literal stays outside too
        if absolute is not None and name in ("<", "<="):
            ok, tol = _number_literal(right)
            return (absolute[0], ("absdiff", absolute[1], name, tol)) if ok else None
        ok, value = _literal(right)
        if ok:
            return left, ("cmp", name, value, False)
        ok, value = _literal(left)
        return (right, ("cmp", name, value, True)) if ok else None
    return None


def _absolute_difference(node):
    """(expr, literal) for ``abs(<expr> - <literal>)`` or ``abs(<literal> - <expr>)``, else None."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "abs"
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.BinOp)
        and isinstance(node.args[0].op, ast.Sub)
    ):
        return None
    difference = node.args[0]
    for expr, other in ((difference.left, difference.right), (difference.right, difference.left)):
        ok, value = _number_literal(other)
        if ok and not _number_literal(expr)[0]:
            return expr, value
    return None


def _is_isclose(func) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "isclose" and isinstance(func.value, ast.Name) and func.value.id == "math"
    return isinstance(func, ast.Name) and func.id == "isclose"


CACHED_TEST_CHARS = 100_000  # tests up to this length are parsed once for all completions of their problem


def parse_test(test: str):
    """The form of one test statement: `StdioTest`, `ValueTest` or `InProcessTest` (short tests are cached: a
    problem's tests are parsed once for all its completions; long stdin/stdout data is parsed each time, so that
    the cache stays small)."""
    return _parse_cached(test) if len(test) <= CACHED_TEST_CHARS else _parse(test)


@functools.lru_cache(maxsize=1 << 14)
def _parse_cached(test: str):
    return _parse(test)


def _parse(test: str):
    try:
        module = ast.parse(test)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return InProcessTest(test)
    body = module.body
    if len(body) == 1 and isinstance(body[0], ast.Expr) and test.lstrip().startswith(STDIO_CALL):
        call = body[0].value
        if isinstance(call, ast.Call) and len(call.args) == 2 and not call.keywords:
            stdin, expected = _string(call.args[0]), _string(call.args[1])
            if stdin is not None and expected is not None:
                return StdioTest(stdin, expected)
    if not body or not isinstance(body[-1], ast.Assert):
        return InProcessTest(test)
    setup = body[:-1]
    if any(isinstance(node, ast.Assert) for statement in setup for node in ast.walk(statement)):
        return InProcessTest(test)  # an earlier assert would carry its expected value into the sandbox
    found = _value_check(body[-1].test)
    if found is None:
        return InProcessTest(test)
    expr, check = found
    try:
        setup_source = ast.unparse(ast.Module(body=setup, type_ignores=[])) if setup else ""
        return ValueTest(setup_source, ast.unparse(expr), check)
    except (ValueError, RecursionError):
        return InProcessTest(test)


def plan(tests) -> tuple[str, list]:
    """The run mode (``script`` when every test is stdio, else ``module``) and each test's form for that mode."""
    tests = [test if isinstance(test, str) else "raise TypeError('a test must be a string')" for test in tests]
    forms = [parse_test(test) for test in tests]
    if forms and all(isinstance(form, StdioTest) for form in forms):
        return "script", forms
    return "module", [
        InProcessTest(test) if isinstance(f, StdioTest) else f for f, test in zip(forms, tests, strict=True)
    ]


def stdout_digest(text: str) -> str:
    """SHA-256 of the whitespace-separated tokens of `text` (the harness hashes a program's output the same way)."""
    return hashlib.sha256("\n".join(text.split()).encode("utf-8", errors="surrogatepass")).hexdigest()


class Opaque:
    """A value the harness could not encode as plain data: it equals nothing (itself included)."""

    def __init__(self, name: str = ""):
        self.name = name

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<opaque {self.name}>"


class ScalarBool(int):
    """numpy's bool: equal to 0/1 (and False/True) like the original, yet not ``True``/``False`` themselves."""

    def __repr__(self) -> str:
        return f"ScalarBool({int(self)})"


def _float(text) -> float:
    if not isinstance(text, str):
        raise ValueError("float")
    return float.fromhex(text)


_SMALL = 10**18  # integers below this size travel as JSON numbers, larger ones as hex


def decode_value(data, depth: int = 0):
    """A Python value from the harness's tagged JSON (see harness._make_encoder): plain data only, never eval or
    pickle; malformed or too deep parts become `Opaque`."""
    kind = type(data)
    if kind is str or kind is bool or data is None:
        return data
    if kind is int:
        return data if -_SMALL < data < _SMALL else Opaque("malformed")
    if depth > MAX_DEPTH or kind is not list or not data or type(data[0]) is not str:
        return Opaque("malformed")
    tag, rest = data[0], data[1:]
    try:
        if tag in ("list", "tuple", "set", "frozenset") and len(rest) == 1 and type(rest[0]) is list:
            items = [
                item
                if type(item) is str or (type(item) is int and -_SMALL < item < _SMALL)
                else decode_value(item, depth + 1)
                for item in rest[0]
            ]
            return items if tag == "list" else {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        if tag == "dict" and len(rest) == 1 and type(rest[0]) is list:
            pairs = rest[0]
            if all(type(pair) is list and len(pair) == 2 for pair in pairs):
                return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in pairs}
        if tag == "int" and len(rest) == 1 and type(rest[0]) is str:
            return int(rest[0], 16)
        if tag == "float" and len(rest) == 1:
            return _float(rest[0])
        if tag == "complex" and len(rest) == 2:
            return complex(_float(rest[0]), _float(rest[1]))
        if tag in ("bytes", "bytearray") and len(rest) == 1 and type(rest[0]) is str:
            raw = rest[0].encode("latin-1")
            return raw if tag == "bytes" else bytearray(raw)
        if tag == "npbool" and rest in ([0], [1]):
            return ScalarBool(rest[0])
        if tag == "opaque":
            return Opaque(str(rest[0])[:100] if rest else "")
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        pass
    return Opaque("malformed")


def _canonical(data, depth: int = 0):
    """An encoded value with the elements of sets and dicts sorted (their order follows the per-interpreter string
    hash), for the behaviour digest: programs whose values are equal as data get the same text."""
    if type(data) is not list or len(data) != 2 or type(data[1]) is not list or depth > MAX_DEPTH:
        return data
    if data[0] in ("list", "tuple"):
        return [data[0], [item if type(item) is not list else _canonical(item, depth + 1) for item in data[1]]]
    if data[0] in ("set", "frozenset", "dict"):
        items = [_canonical(item, depth + 1) for item in data[1]]
        return [data[0], sorted(items, key=lambda item: json.dumps(item, separators=(",", ":")))]
    return data


_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def judge_value(check: tuple, value) -> bool:
    """Whether `value` (decoded) passes `check`, computed as plain Python would in the test's assert."""
    kind = check[0]
    try:
        if kind in ("==", "!="):
            compare = operator.eq if kind == "==" else operator.ne
            result = compare(check[1], value) if check[2] else compare(value, check[1])
        elif kind == "cmp":
            compare = _COMPARE[check[1]]
            result = compare(check[2], value) if check[3] else compare(value, check[2])
        elif kind == "in":
            result = (check[1] in value) if check[2] else (value in check[1])
        elif kind == "is":
            result = (value is not check[1]) if check[2] else (value is check[1])
        elif kind == "truth":  # the harness sent bool(<expr>)
            result = isinstance(value, bool) and value is not check[1]
        elif kind == "isclose":
            result = math.isclose(value, check[1], rel_tol=check[2], abs_tol=check[3])
        elif kind == "absdiff":
            result = _COMPARE[check[2]](abs(value - check[1]), check[3])
        else:
            return False
        return result is True or (isinstance(result, int) and bool(result))
    except (TypeError, ValueError, OverflowError, RecursionError, ArithmeticError):
        return False


def outcome(forms: list, reply: dict) -> TestOutcome:
    """The `TestOutcome` of a harness reply ``{"status", "detail", "results"}`` for tests of these `forms`."""
    total = len(forms)
    status, detail = reply.get("status"), str(reply.get("detail", ""))[:300]
    items = reply.get("results")
    failed = TestOutcome(0, total, str(status), detail or "no result", (False,) * total, None)
    if status != "ok" or not isinstance(items, list) or len(items) != total:
        if status == "ok":
            return TestOutcome(0, total, "error", "malformed reply", (False,) * total, None)
        return failed
    results, seen, first_wrong = [], [], ""
    for number, (form, item) in enumerate(zip(forms, items, strict=True)):
        tag = item[0] if isinstance(item, list) and item and isinstance(item[0], str) else None
        right, mark = False, ERROR_MARK
        if isinstance(form, StdioTest):
            if tag == "o" and len(item) == 2 and isinstance(item[1], str):
                right, mark = item[1] == stdout_digest(form.expected), "o" + item[1]
        elif isinstance(form, ValueTest):
            if tag == "v" and len(item) == 2:
                right = judge_value(form.check, decode_value(item[1]))
                mark = "v" + json.dumps(_canonical(item[1]), separators=(",", ":"))
        else:
            right = tag == "p" and item[1:] == [True]
        if not isinstance(form, InProcessTest):
            seen.append(mark)
        if not right and not first_wrong and tag != "e":
            first_wrong = f"test {number}: " + ("wrong output" if isinstance(form, StdioTest) else "wrong value")
        results.append(right)
    behaviour = hashlib.sha256("\n".join(seen).encode()).hexdigest() if seen else None
    return TestOutcome(sum(results), total, "ok", detail or first_wrong, tuple(results), behaviour)


def request(code: str, tests, limits: dict) -> tuple[dict, list]:
    """The harness request for `code` with `tests` (strings), and the tests' forms for `outcome`."""
    mode, forms = plan(tests)
    return {"code": code, "mode": mode, "tests": [form.request() for form in forms], "limits": limits}, forms
