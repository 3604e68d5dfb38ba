"""The code judge: code extraction, scores of right, partial and wrong programs run for real in the sandbox, the
converters and recipes/prepare_code.py on the fixture files, the limits' checks, the opt-in without isolation, and
GRPO with code_reward on a tiny model. Hostile programs: tests/hostile/test_code_programs.py."""

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from _grpo_common import grpo_config
from datasets import Dataset

from trl_shaped import ShapedGRPOTrainer
from trl_shaped.rewards import code_reward, extract_code, get_judge, judge_name
from trl_shaped.rewards.code import CodeReward, normalized_code
from trl_shaped.rewards.code_tests import humaneval_tests, mbpp_tests, stdio_tests
from trl_shaped.sandbox import LocalSandbox, Program, SandboxLimits
from trl_shaped.sandbox import isolation as isolation_module
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
LIMITS = SandboxLimits(wall_time_s=2, cpu_time_s=2, memory_bytes=256 << 20, tmp_bytes=8 << 20)
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4", "assert add(-3, 1) == -2"]


@pytest.fixture(scope="module")
def sandbox():
    box = LocalSandbox(LIMITS, workers=2)
    yield box
    box.close()


@pytest.fixture(scope="module")
def reward(sandbox):
    return CodeReward(sandbox=sandbox)


def test_extract_code_takes_the_last_python_block():
    text = "First:\n```python\nx = 1\n```\nA shell line:\n```bash\nls\n```\nFinal:\n```\ny = 2\n```\nDone."
    assert extract_code(text) == "y = 2"
    assert extract_code("```py\nz = 3\n```") == "z = 3"
    assert extract_code("```Python3\nw = 4\n```") == "w = 4"
    assert extract_code("cut off:\n```python\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("only ```bash\nls\n```") == "only ```bash\nls\n```"  # no python block: the whole text
    assert extract_code("def g(): pass") == "def g(): pass"
    assert extract_code(None) == ""


def test_right_partial_and_wrong_programs_score_the_fraction_of_tests_passed(reward):
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    positive_only = "```python\ndef add(a, b):\n    return abs(a) + abs(b)\n```"  # fails only the -3 + 1 test
    wrong = "```python\ndef add(a, b):\n    return a * b\n```"  # right for 0 + 0 and 2 + 2 only
    broken = "```python\ndef add(a, b) return a + b\n```"
    scores = reward([right, positive_only, wrong, broken], tests=[ADD_TESTS] * 4)
    assert scores == [1.0, 0.75, 0.5, 0.0]
    strict = CodeReward(all_or_nothing=True, sandbox=reward.sandbox)
    assert strict([right, positive_only, wrong, broken], tests=[ADD_TESTS] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_conversational_and_unfenced_completions(reward):
    completions = [
        [{"role": "assistant", "content": "Here:\n```python\ndef add(a, b):\n    return a + b\n```"}],
        [{"role": "assistant", "content": "def add(a, b):\n    return b + a"}],
        "def add(a, b):\n    return a - b",
    ]
    assert reward(completions, tests=[ADD_TESTS] * 3) == [1.0, 1.0, 0.25]
    # one problem's tests for every completion (a direct call), and tests stored as JSON strings (a CSV column)
    assert reward(completions[:1], tests=ADD_TESTS) == [1.0]
    assert reward(completions, tests=[json.dumps(ADD_TESTS)] * 3) == [1.0, 1.0, 0.25]


def test_tests_column_and_options_are_checked():
    with pytest.raises(ValueError, match="tests must be"):
        code_reward(["x = 1"], tests=5)
    with pytest.raises(ValueError, match="tests must be"):
        code_reward(["x = 1", "y = 2"], tests=[["assert True"]] * 3)
    with pytest.raises(ValueError, match="all_or_nothing"):
        CodeReward(all_or_nothing="yes")
    with pytest.raises(ValueError, match="workers"):
        CodeReward(workers=0)
    with pytest.raises(ValueError, match="wall_time_s must be > 0"):
        SandboxLimits(wall_time_s=0)
    with pytest.raises(ValueError, match="memory_bytes must be >= 67108864"):
        SandboxLimits(memory_bytes=1000)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=0)
    with pytest.raises(ValueError, match="isolation must be one of"):
        SandboxLimits(isolation="docker")


def test_code_reward_is_the_registered_judge_with_a_vote_key():
    assert get_judge("code") is code_reward
    assert code_reward.__name__ == "code_reward" and judge_name(code_reward) == "code"
    first = "Sure.\n```python\ndef f(x):\n    # double\n    return 2 * x   \n\n```"
    second = "```python\ndef f(x):\n    return 2 * x\n```\nThat's it."
    assert code_reward.answer_key(first) == code_reward.answer_key(second) == "def f(x):\n    return 2 * x"
    assert code_reward.answer_key([{"role": "assistant", "content": second}]) == normalized_code(second)
    assert code_reward.answer_key("```python\n# nothing\n```") is None


def test_converters_make_statements_the_sandbox_runs(sandbox):
    assert mbpp_tests(["assert f() == 1"], "import math") == ["import math\nassert f() == 1"]
    humaneval = humaneval_tests(
        "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 10\n", "double"
    )
    stdio = stdio_tests(["2 3\n", "1 1\n"], ["5\n", "2"])
    assert stdio == ["check_stdio('2 3\\n', '5\\n')", "check_stdio('1 1\\n', '2')"]
    programs = [
        Program("def double(x):\n    return 2 * x", humaneval),
        Program("def double(x):\n    return x + 2", humaneval),  # right for 2 only: HumanEval is all or nothing
        Program("print(sum(map(int, input().split())))", stdio),
        Program("import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())) + 1)\nsys.exit(0)", stdio),
        Program("a, b = map(int, input().split())\nprint(a * b if a == 1 else a + b)", stdio),  # right for 2 3 only
    ]
    fractions = [o.fraction for o in sandbox.run_tests(programs)]
    assert fractions == [1.0, 0.0, 1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="inputs and outputs must pair up"):
        stdio_tests(["1"], [])
    with pytest.raises(ValueError, match="entry_point"):
        humaneval_tests("def check(c): pass", "not an identifier")


def _prepare_code():
    spec = importlib.util.spec_from_file_location("prepare_code", ROOT / "recipes" / "prepare_code.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["mbpp", "humaneval", "stdio"])
def test_prepare_code_on_the_fixtures(tmp_path, reward, name):
    out = _prepare_code().prepare(ROOT / "tests" / "fixtures" / f"code_{name}.jsonl", tmp_path / f"{name}.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all({"prompt", "tests", "completion"} <= set(row) for row in rows)
    tests = [row["tests"] for row in rows]
    # the reference solutions pass every test; an empty program passes none
    assert reward([row["completion"] for row in rows], tests=tests) == [1.0] * len(rows)
    assert reward(["```python\npass\n```"] * len(rows), tests=tests) == [0.0] * len(rows)


def test_prepare_code_rejects_an_unknown_format():
    module = _prepare_code()
    with pytest.raises(ValueError, match="cannot tell the format"):
        module.to_row({"question": "no tests"})
    with pytest.raises(ValueError, match="format must be one of"):
        module.prepare("in.jsonl", "out.jsonl", format="fortran")


def test_without_namespaces_the_sandbox_refuses_unless_opted_out(monkeypatch, caplog):
    # a bubblewrap that cannot start, as on a machine without user namespaces
    monkeypatch.setattr(isolation_module, "bwrap_path", lambda: "/bin/false")
    refusing = LocalSandbox(LIMITS, workers=1)
    with pytest.raises(RuntimeError, match="isolation='none'"):
        refusing.run_tests([Program("x = 1", ["assert x == 1"])])
    # the opt-in runs programs (still scored by the harness) and warns on every run
    unisolated = LocalSandbox(SandboxLimits(wall_time_s=2, isolation="none"), workers=1)
    try:
        for _ in range(2):
            with caplog.at_level(logging.WARNING, logger="trl_shaped.sandbox.local"):
                caplog.clear()
                outcomes = unisolated.run_tests([Program("x = 1", ["assert x == 1", "assert x == 2"])])
            assert [o.passed for o in outcomes] == [1]
            assert any("WITHOUT a sandbox" in r.message for r in caplog.records)
    finally:
        unisolated.close()


def _runs_cleanly(code: str) -> bool:
    """Independent of the sandbox: does `code` run without an error as a plain script?"""
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=60).returncode == 0


def test_grpo_with_code_reward_scores_generated_programs(tmp_path, sandbox):
    """A tiny policy over digits and operators writes expressions; a completion scores 1.0 exactly when it is a
    program that runs (tests: one statement that always holds), so rewards vary and come from real execution."""
    tokenizer = build_char_tokenizer("0123456789+-*( )")
    model = build_tiny_model(len(tokenizer), hidden_size=32, num_layers=1, tokenizer=tokenizer, seed=0)
    dataset = Dataset.from_dict({"prompt": ["1+", "(2", "3*", "4"] * 2, "tests": [["assert True"]] * 8})
    seen = []
    judge = CodeReward(sandbox=sandbox)

    def recorded_code_reward(completions, tests, **kwargs):
        scores = judge(completions, tests=tests, **kwargs)
        seen.append((list(completions), scores))
        return scores

    recorded_code_reward.__name__ = "code_reward"
    args = grpo_config(tmp_path, max_steps=2, per_device_train_batch_size=8, num_generations=4, max_completion_length=6)
    trainer = ShapedGRPOTrainer(model, [recorded_code_reward], args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    completions = [c for batch, _ in seen for c in batch]
    scores = [s for _, batch in seen for s in batch]
    assert len(completions) >= 16
    assert scores == [1.0 if _runs_cleanly(c) else 0.0 for c in completions]
    assert 0.0 in scores and 1.0 in scores, completions  # both kinds occur, so the reward is not a constant
    logged = [h["rewards/code_reward/mean"] for h in trainer.state.log_history if "rewards/code_reward/mean" in h]
    assert logged and min(logged) >= 0.0 and max(logged) <= 1.0
