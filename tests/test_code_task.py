"""The built-in code task: its splits (deterministic, disjoint up to rewordings, examples and hidden tests that agree
with an independent reading of the specification), its programs judged in the sandbox (every reference passes its
hidden tests, a wrong one fails), its settings in the cells' fingerprint, its study wiring (profile, demo command
line, real-scale recipes), and one tiny cell end to end: stage 1 -> eval -> GRPO -> eval with the programs run in
the sandbox and the judge's time logged per GRPO step."""

import json
import re
from pathlib import Path

import pytest

from trl_shaped.study.cells import cell_fingerprint
from trl_shaped.study.config import BUILTIN_PROFILES, StudyConfig
from trl_shaped.tasks import check_disjoint, get_task
from trl_shaped.tasks.code import CodeTask
from trl_shaped.tiny import build_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
WORD = re.compile(r"(add|sub|times|mod) (\d+)")


def read_spec(prompt: str):
    """The function a prompt specifies, read from its words independently of the task's generator."""
    words = WORD.findall(prompt.split(".")[0])
    apply = {
        "add": lambda x, k: x + k,
        "sub": lambda x, k: x - k,
        "times": lambda x, k: x * k,
        "mod": lambda x, k: x % k,
    }

    def f(x):
        for word, k in words:
            x = apply[word](x, int(k))
        return x

    return f


def values(prompt: str) -> tuple[int, ...]:
    f = read_spec(prompt)
    return tuple(f(x) for x in range(-30, 31))


@pytest.fixture(scope="module")
def data():
    return CodeTask().build_datasets(num_train=150, num_rl=60, num_test=30, seed=3)


def test_splits_are_deterministic_disjoint_and_agree_with_the_specification(data):
    again = CodeTask().build_datasets(num_train=150, num_rl=60, num_test=30, seed=3)
    for split in ("sft", "rl", "test"):
        assert data[split].to_list() == again[split].to_list()
    other = CodeTask().build_datasets(num_train=150, num_rl=60, num_test=30, seed=4)
    assert list(data["test"]["prompt"]) != list(other["test"]["prompt"])
    # no problem of one split in another, even reworded ("add 2, add 3" is "add 5"): compare the functions
    check_disjoint(data, lambda row: values(row["prompt"]))
    assert len({values(p) for p in data["sft"]["prompt"]}) == 150
    assert len({values(p) for p in list(data["rl"]["prompt"]) + list(data["test"]["prompt"])}) == 90
    for row in data["rl"].to_list() + data["test"].to_list():
        f = read_spec(row["prompt"])
        shown = re.findall(r"f\((-?\d+)\)=(-?\d+)", row["prompt"])
        assert len(shown) == 2 and all(f(int(x)) == int(y) for x, y in shown)
        assert len(row["tests"]) == 3
        for test in row["tests"]:
            x, y = re.fullmatch(r"assert f\((-?\d+)\) == (-?\d+)", test).groups()
            assert f(int(x)) == int(y) and x not in {s for s, _ in shown}  # hidden: inputs the prompt does not show


def test_the_corpus_offers_several_correct_forms_and_the_budgets_fit_them(data):
    task = CodeTask()
    strategies = [task.solution_strategy(c) for c in data["sft"]["completion"]]
    assert strategies.count("other") == 0
    assert 0.35 < strategies.count("direct") / len(strategies) < 0.65  # direct_prob 0.5
    by_prompt = {}
    for row in data["sft"]:
        by_prompt.setdefault(row["prompt"], set()).add(row["completion"])
    assert sum(len(forms) > 1 for forms in by_prompt.values()) > 0.8 * len(by_prompt)
    tokenizer = build_char_tokenizer(task.alphabet())  # one token per character: the worst case of the BPE
    for row in data["sft"].to_list() + data["test"].to_list():
        text = row["prompt"] + row["completion"]
        assert set(text) <= set(task.alphabet())
        assert len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) < task.max_completion_tokens
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < task.max_sequence_tokens


def test_every_reference_passes_its_hidden_tests_in_the_sandbox_and_a_wrong_one_fails(data):
    from trl_shaped.rewards.code import code_reward

    rows = data["sft"].to_list()[:120] + data["test"].to_list()
    references = [row["completion"] for row in rows]
    # off by one on every input (the last value returned plus one): wrong whatever the tests' inputs
    wrong = [re.sub(r"return (.*)$", r"return (\1)+1", c) for c in references]
    tests = [row["tests"] for row in rows]
    scores = code_reward(references + wrong, tests + tests)
    assert scores[: len(rows)] == [1.0] * len(rows)
    assert scores[len(rows) :] == [0.0] * len(rows)


def test_task_settings_change_the_cells_fingerprint_and_bad_values_are_refused(tmp_path):
    base = StudyConfig(task="code", output_dir=str(tmp_path))
    fingerprint = cell_fingerprint(base, "ce", 0)
    assert fingerprint["task"] == "code" and fingerprint["task.judge"] == "code" and fingerprint["task.max_ops"] == 3
    other = cell_fingerprint(
        StudyConfig(task="code", task_args='{"direct_prob": 0.4}', output_dir=str(tmp_path)), "ce", 0
    )
    assert {k for k in fingerprint if fingerprint[k] != other[k]} == {"task.direct_prob", "task_args"}
    assert cell_fingerprint(StudyConfig(output_dir=str(tmp_path)), "ce", 0)["task"] == "arithmetic"
    for settings, name in (({"max_ops": 5}, "max_ops"), ({"direct_prob": 1.5}, "direct_prob"), ({"depth": 2}, "depth")):
        with pytest.raises(ValueError, match=name):
            get_task("code", **settings)


def test_profiles_are_per_task_and_the_demo_takes_the_task_on_its_command_line():
    from trl_shaped.scripts.demo import make_parser

    (code,) = make_parser().parse_args_and_config(["--task", "code"])
    assert code.task == "code" and code.output_dir == "demo_report_code"
    assert code.study_task().judge == "code"
    for field, value in {**BUILTIN_PROFILES["full"], **CodeTask.profiles["full"]}.items():
        assert getattr(code, field) == value
    (quick,) = make_parser().parse_args_and_config(["--task", "code", "--quick", "--sft_steps", "9"])
    assert quick.output_dir == "demo_report_code_quick" and quick.sft_steps == 9
    assert quick.num_test_problems == {**BUILTIN_PROFILES["quick"], **CodeTask.profiles["quick"]}["num_test_problems"]
    # arithmetic keeps its own sizes and directory
    (arithmetic,) = make_parser().parse_args_and_config([])
    assert arithmetic.output_dir == "demo_report"
    assert {f: getattr(arithmetic, f) for f in BUILTIN_PROFILES["full"]} == BUILTIN_PROFILES["full"]


def test_at_real_scale_the_task_picks_its_domains_recipes(monkeypatch):
    from trl_shaped.scripts.study import make_parser
    from trl_shaped.study.runner import stage_commands

    monkeypatch.chdir(ROOT)  # the recipes name files relative to the repository root
    (code,) = make_parser().parse_args_and_config(["--config", str(RECIPES / "study_qwen3_code.yaml")])
    assert not code.builtin and code.task == "code"
    commands = dict(stage_commands(code, "precision", 42, Path("cell")))
    assert commands["rl"][:3] == ["grpo", "--config", "recipes/rl_code.yaml"]
    assert commands["eval_rl"][:3] == ["eval", "--suite", "recipes/eval_suite.yaml"]  # the paper's table
    (math,) = make_parser().parse_args_and_config(["--config", str(RECIPES / "study_qwen3.yaml")])
    assert math.task == "arithmetic" and math.rl_recipe == "recipes/rl_paper.yaml"
    # the defaults follow the task when the recipes are not named
    config = StudyConfig(model_name_or_path="Qwen/Qwen3-0.6B-Base", task="code")
    assert (config.rl_recipe, config.eval_recipe) == ("recipes/rl_code.yaml", "recipes/eval_code.yaml")


def test_a_tiny_code_cell_runs_its_programs_in_the_sandbox_end_to_end(tmp_path):
    from trl_shaped.study.builtin_cell import run_cell

    config = StudyConfig(
        task="code",
        output_dir=str(tmp_path),
        presets="ce",
        num_seeds=1,
        num_train_problems=40,
        num_rl_problems=8,
        num_test_problems=6,
        hidden_size=32,
        sft_steps=30,
        sft_batch_size=16,
        grpo_steps=2,
        grpo_prompts_per_step=2,
        num_generations=4,
        eval_num_samples=4,
        checkpoints_per_stage=1,
    )
    result = run_cell(config, "ce", 0, tmp_path / "cell")
    for stage in ("eval_stage1", "eval_rl"):
        samples = json.loads((tmp_path / "cell" / f"{stage}_samples.json").read_text())
        assert samples["settings"]["judge"] == "code"
        for record in samples["per_problem"]:
            assert record["num_correct"] == sum(score == 1.0 for score in record["scores"])
        total = sum(r["num_correct"] for r in samples["per_problem"]) / (6 * 4)
        assert result[stage]["avg_at_n"] == pytest.approx(total)
    # the judge ran each GRPO step, in the sandbox, and its time is in the log of every step
    steps = [log for log in result["rl"]["log_history"] if "reward" in log]
    assert len(steps) == 2 and all(log["judge_seconds"] > 0 for log in steps)
    assert sum(log["judge_seconds"] for log in steps) == pytest.approx(result["rl"]["judge_seconds"])


def test_the_code_study_recipe_parses(monkeypatch):
    from trl_shaped.scripts.study import make_parser

    monkeypatch.chdir(ROOT)
    (study,) = make_parser().parse_args_and_config(["--config", str(RECIPES / "study_code.yaml")])
    assert study.builtin and study.task == "code" and len(study.preset_names()) == 5 and study.num_seeds == 6
    assert study.sft_steps == CodeTask.profiles["full"]["sft_steps"] and study.eval_num_samples == 32
