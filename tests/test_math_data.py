"""recipes/prepare_math.py: MATH-500, AIME (three layouts) and GSM8K rows in their real field names become the
`problem` / `answer` / `solution` rows the math recipes read, and each reference solution scores 1.0 with the judge."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trl_shaped.evaluation import EvalConfig
from trl_shaped.rewards import exact_answer_reward, math_answer_reward

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_math = _load("prepare_math")


def _rows(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


@pytest.mark.parametrize(
    ("fixture", "answers"),
    [
        ("math_math500.jsonl", ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{14}{3}"]),
        ("math_aime_aimo.jsonl", ["204"]),  # AI-MO/aimo-validation-aime: problem, solution, answer
        ("math_aime2024.jsonl", ["204", "25"]),  # Maxwell-Jia/AIME_2024: Problem, Solution, Answer (integers)
        ("math_aime2025.jsonl", ["70"]),  # opencompass/AIME2025: question, answer
        ("math_gsm8k.jsonl", ["72", "1250"]),  # GSM8K: the number after "####", thousands commas removed
    ],
)
def test_each_layout_becomes_problem_answer_solution(fixture, answers):
    source = _rows(fixture)
    rows = [prepare_math.to_row(row) for row in source]
    assert [r["answer"] for r in rows] == answers
    for row, original in zip(rows, source, strict=True):
        problem = next(v for k, v in original.items() if k.lower() in ("problem", "question"))
        assert row["problem"] == problem.strip()
        # every other column is kept (MATH-500's subject, level, unique_id; AIME's id, url)
        named = {"problem", "question", "answer", "solution"}
        assert {k: v for k, v in original.items() if k.lower() not in named} == {
            k: v for k, v in row.items() if k not in ("problem", "answer", "solution")
        }
        if row["solution"] is not None:  # the reference solution is right by the math judge
            assert math_answer_reward([row["solution"]], [row["answer"]]) == [1.0], row["solution"]
    if fixture == "math_gsm8k.jsonl":  # the worked solution, whose "####" the exact judge reads too
        assert [r["solution"] for r in rows] == [r["answer"] for r in source]
        assert exact_answer_reward([r["solution"] for r in rows], answers) == [1.0, 1.0]
    if fixture == "math_aime2025.jsonl":
        assert rows[0]["solution"] is None


def test_prepare_writes_files_the_math_recipe_reads(tmp_path):
    sources = {name: str(FIXTURES / f"math_{name}.jsonl") for name in ("math500", "aime2024", "gsm8k")}
    paths = prepare_math.prepare(tmp_path / "math", sources)
    assert sorted(paths) == sorted(sources)
    from trl_shaped.scripts.data import load_split

    rows = list(load_split(str(paths["math500"]), "test"))
    assert {"problem", "answer", "solution", "subject", "level", "unique_id"} <= set(rows[0])
    # eval_math.yaml's columns and template read these rows
    config = EvalConfig(
        dataset_name=str(paths["math500"]), prompt_column="problem", completion_column="solution", judge="math",
        prompt_template="math",
    )  # fmt: skip
    assert config.template.instruction.endswith("\\boxed{}.")
    assert all(config.prompt_column in r and config.answer_column in r for r in rows)


def test_the_command_line_and_its_errors(tmp_path):
    script = ROOT / "recipes" / "prepare_math.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), "--source", f"aime={FIXTURES / 'math_aime2024.jsonl'}"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [json.loads(x)["answer"] for x in (tmp_path / "out" / "aime.jsonl").read_text().splitlines()] == [
        "204",
        "25",
    ]
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "bad"), "--source", f"code={FIXTURES / 'code_mbpp.jsonl'}"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2 and "needs a problem column (problem/question) and an answer column" in bad.stderr
    missing = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "bad"), "--source", "nameonly"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "--source must be NAME=SOURCE" in missing.stderr


def test_prepare_gsm8k_still_writes_the_paper_recipes_rows():
    prepare_gsm8k = _load("prepare_gsm8k")
    row = prepare_gsm8k.to_row(_rows("math_gsm8k.jsonl")[0])
    assert row["prompt"].endswith("\nAnswer: ") and row["answer"] == "72" and row["completion"].endswith("#### 72")
