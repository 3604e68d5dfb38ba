"""The fill-sum task (trl_shaped/tasks/fill_sum.py), built for the study of the paper's central claim: its data, the
skewed many-solution structure of its corpus (measured here from the samples, against an independent enumeration),
its judge, its profiles and recipes, and a tiny study cell on it."""

import itertools
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from trl_shaped.rewards import get_judge
from trl_shaped.study import StudyConfig
from trl_shaped.study.cells import cell_fingerprint
from trl_shaped.study.config import BUILTIN_PROFILES
from trl_shaped.tasks import TASKS, get_task
from trl_shaped.tasks.fill_sum import FillSumTask, fill_sum_reward

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
PROMPT = re.compile(r"^(\d+)((?:\+\?)+)=(\d+)\n$")


def read_prompt(prompt: str) -> tuple[int, int, int]:
    """(start, blanks, target) read back from the prompt text alone."""
    match = PROMPT.match(prompt)
    assert match, prompt
    return int(match[1]), len(match[2]) // 2, int(match[3])


def check_solution(start: int, blanks: int, target: int, completion: str, max_part: int = 9) -> list[int]:
    """Independent checker (no regular expression, nothing of the model's evaluated): every equation must be true;
    returns the parts or raises."""
    assert completion.isascii(), completion
    equations = completion.split()
    parts, total = [], start
    for equation in equations:
        left, right = equation.split("=")
        terms = [int(t) for t in left.split("+")]
        assert all(t.isdigit() and not t.startswith("0") for t in [*left.split("+"), right]), completion
        assert terms[0] == total and sum(terms) == int(right), completion
        parts += terms[1:]
        total = int(right)
    assert len(parts) == blanks and all(1 <= p <= max_part for p in parts) and total == target, completion
    return parts


def exact_parts_distribution(task: FillSumTask, start: int, blanks: int, target: int) -> dict[tuple, float]:
    """The corpus's distribution over whole solutions by brute force: every tuple of parts in 1..max_part that
    reaches the target, with the probability of drawing it part by part (weight 1 / v ** skew among the parts that
    keep the rest reachable)."""
    m, skew = task.max_part, task.part_skew

    def reachable(rest, left):
        return left <= rest <= left * m

    out = {}
    for parts in itertools.product(range(1, m + 1), repeat=blanks):
        if start + sum(parts) != target:
            continue
        p, rest = 1.0, target - start
        for i, v in enumerate(parts[:-1]):
            options = [u for u in range(1, m + 1) if reachable(rest - u, blanks - i - 1)]
            p *= (1 / v**skew) / sum(1 / u**skew for u in options)
            rest -= v
        out[parts] = p
    return out


@pytest.fixture(scope="module")
def data():
    return get_task("fill_sum").build_datasets(num_train=300, num_rl=100, num_test=60, seed=3)


def test_the_task_is_registered_and_its_data_is_deterministic_per_seed(data):
    assert TASKS["fill_sum"] == "trl_shaped.tasks.fill_sum:FillSumTask"
    again = get_task("fill_sum").build_datasets(num_train=300, num_rl=100, num_test=60, seed=3)
    other = get_task("fill_sum").build_datasets(num_train=300, num_rl=100, num_test=60, seed=4)
    for split in ("sft", "rl", "test"):
        assert data[split].to_list() == again[split].to_list()
        assert data[split].to_list() != other[split].to_list()
    assert len(data["sft"]) == 300 * 4 and len(data["rl"]) == 100 and len(data["test"]) == 60


def test_splits_are_disjoint_and_every_reference_is_right(data):
    problems = {split: {read_prompt(p) for p in data[split]["prompt"]} for split in ("sft", "rl", "test")}
    assert len(problems["sft"]) == 300 and len(problems["rl"]) == 100 and len(problems["test"]) == 60
    assert not problems["sft"] & problems["rl"] and not problems["sft"] & problems["test"]
    assert not problems["rl"] & problems["test"]
    for split in ("sft", "rl", "test"):
        for row in data[split]:
            assert read_prompt(row["prompt"]) == (row["start"], row["blanks"], row["target"])
            if "completion" in row:
                check_solution(row["start"], row["blanks"], row["target"], row["completion"])
    # both forms are in the corpus, about half each (direct_prob 0.5)
    forms = Counter(len(c.split()) > 1 for c in data["sft"]["completion"])
    assert 0.4 < forms[True] / len(data["sft"]) < 0.6


def test_the_corpus_has_many_right_continuations_with_skewed_weights():
    """Measured from the samples: on a problem with room to choose, the solutions drawn match the brute-force
    distribution, spread over many right answers with a clear favourite (skewed, neither one answer nor uniform)."""
    task = FillSumTask(direct_prob=0.0, solutions_per_problem=1)
    start, blanks, target = 20, 4, 40
    exact = exact_parts_distribution(task, start, blanks, target)
    assert sum(exact.values()) == pytest.approx(1.0)
    import random

    rng = random.Random(0)
    draws = 20000
    counts = Counter(
        tuple(check_solution(start, blanks, target, task.sample_solution((start, blanks, target), rng)))
        for _ in range(draws)
    )
    assert set(counts) <= set(exact)
    # the empirical frequencies agree with the enumeration (3 standard errors on the common solutions)
    for parts, p in exact.items():
        if p > 0.01:
            assert abs(counts[parts] / draws - p) < 3 * math.sqrt(p * (1 - p) / draws) + 1e-3, parts
    entropy = -sum(c / draws * math.log(c / draws) for c in counts.values())
    exact_entropy = -sum(p * math.log(p) for p in exact.values() if p > 0)
    assert entropy == pytest.approx(exact_entropy, abs=0.05)
    assert task.conditional_entropy((start, blanks, target)) == pytest.approx(exact_entropy, rel=1e-9)
    assert len(counts) > 50 and entropy > 3.0  # many right answers, more than 3 nats of choice per problem
    # skewed: the first part has a favourite well above uniform and well below certainty
    first = Counter()
    for parts, c in counts.items():
        first[parts[0]] += c
    top = max(first.values()) / draws
    assert len(first) == 9 and 0.25 < top < 0.6 and top > 2 / 9


def test_the_stage1_corpus_offers_a_choice_at_most_steps(data):
    """Over the training corpus itself: the next part given the problem and the parts so far (the plug-in entropy of
    its empirical distribution, over prefixes seen at least 40 times in a corpus with many solutions per problem) is
    spread over several values at the free steps, as the task promises."""
    task = FillSumTask(solutions_per_problem=200)
    corpus = task.build_datasets(num_train=12, num_rl=1, num_test=1, seed=0)["sft"]
    next_part = defaultdict(Counter)
    for row in corpus:
        parts = check_solution(row["start"], row["blanks"], row["target"], row["completion"])
        for i in range(len(parts) - 1):  # the last part is forced
            next_part[(row["prompt"], tuple(parts[:i]))][parts[i]] += 1
    entropies = []
    for counter in next_part.values():
        n = sum(counter.values())
        if n >= 40:
            entropies.append(-sum(c / n * math.log(c / n) for c in counter.values()))
    assert len(entropies) >= 12
    mean = sum(entropies) / len(entropies)
    assert mean > 0.8 and sum(h > 0.5 for h in entropies) / len(entropies) > 0.6


def test_the_judge_scores_right_and_wrong_answers():
    judge = get_judge(FillSumTask.judge)
    assert judge is fill_sum_reward
    cases = {
        "17+9=26 26+8=34 34+9=43": 1.0,  # worked
        "17+9+8+9=43": 1.0,  # direct
        "17+9=26 26+8+9=43": 1.0,  # mixed chain
        " 17+1+9+9=36 \n": 0.0,  # right arithmetic, wrong target
        "17+9=26 26+8=34 34+9=44": 0.0,  # wrong arithmetic
        "17+9=26 25+9=34 34+9=43": 0.0,  # chain broken
        "17+8+9+9+0=43": 0.0,  # a part out of range (and one part too many)
        "17+5+10+11=43": 0.0,  # parts above max_part
        "17+13+13=43": 0.0,  # too few parts
        "16+10+8+9=43": 0.0,  # wrong start
        "17+9+8+9=43 junk": 0.0,
        "": 0.0,
        "####": 0.0,
        "1" * 400: 0.0,
        "17+\u0669+8+9=43": 0.0,  # a non-ASCII digit (Arabic-Indic nine)
        "17+09+8+9=43": 0.0,  # a leading zero
    }
    completions = list(cases)
    n = len(completions)
    scores = judge(completions, start=[17] * n, blanks=[3] * n, target=[43] * n, max_part=[9] * n)
    assert dict(zip(completions, scores, strict=True)) == cases
    # conversational completions, and the dataset's own columns as TRL passes them
    assert judge(
        [[{"role": "assistant", "content": "1+1+1+1=4"}]], start=[1], blanks=[3], target=[4], max_part=[9]
    ) == [1.0]


def test_settings_reach_the_fingerprint_and_bad_values_are_refused(tmp_path):
    base = cell_fingerprint(StudyConfig(task="fill_sum", output_dir=str(tmp_path)), "ce", 0)
    assert base["task"] == "fill_sum" and base["task.judge"] == FillSumTask.judge and base["task.part_skew"] == 1.0
    other = cell_fingerprint(
        StudyConfig(task="fill_sum", task_args='{"part_skew": 1.5}', output_dir=str(tmp_path)), "ce", 0
    )
    assert {k for k in base if base[k] != other[k]} == {"task.part_skew", "task_args"}
    for settings, name in (
        ({"min_blanks": 2}, "min_blanks"),
        ({"max_blanks": 7}, "max_blanks"),
        ({"max_part": 1}, "max_part"),
        ({"part_skew": -1}, "part_skew"),
        ({"direct_prob": 2}, "direct_prob"),
        ({"colour": 1}, "colour"),
    ):
        with pytest.raises(ValueError, match=name):
            get_task("fill_sum", **settings)
    with pytest.raises(ValueError, match="max_start"):
        FillSumTask(max_start=2, min_blanks=3, max_blanks=3, max_part=2).build_datasets(
            num_train=50, num_rl=5, num_test=5, seed=0
        )


def test_budgets_fit_the_longest_solution():
    task = FillSumTask()
    longest = "50+9=59 59+9=68 68+9=77 77+9=86 86+9=95"
    assert check_solution(50, 5, 95, longest) and task.max_completion_tokens >= len(longest) + 1
    assert task.max_sequence_tokens >= len("50+?+?+?+?+?=95\n") + len(longest) + 1


def test_profiles_and_recipes_name_the_task(monkeypatch):
    from trl_shaped.scripts.study import make_parser

    monkeypatch.chdir(ROOT)
    (full,) = make_parser().parse_args_and_config(["--config", str(RECIPES / "study_claim.yaml")])
    assert full.builtin and full.task == "fill_sum" and "dft" in full.preset_names()
    assert set(full.preset_names()) == {"ce", "precision", "diversity", "tail_penalty", "head_reward", "dft"}
    for name, value in {**BUILTIN_PROFILES["full"], **FillSumTask.profiles["full"]}.items():
        if name != "num_seeds":  # the recipe sizes the seeds from the pilot
            assert getattr(full, name) == value, name
    (quick,) = make_parser().parse_args_and_config(["--config", str(RECIPES / "study_claim_quick.yaml")])
    assert quick.quick and quick.task == "fill_sum" and quick.grpo_temperature == full.grpo_temperature
    for name, value in {**BUILTIN_PROFILES["quick"], **FillSumTask.profiles["quick"]}.items():
        assert getattr(quick, name) == value, name


def test_a_tiny_fill_sum_cell_runs_end_to_end_and_its_scores_check_out(tmp_path):
    from trl_shaped.study.builtin_cell import run_cell

    config = StudyConfig(
        task="fill_sum",
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
    test = config.study_task().build_datasets(num_train=40, num_rl=8, num_test=6, seed=0)["test"]
    for stage in ("eval_stage1", "eval_rl"):
        samples = json.loads((tmp_path / "cell" / f"{stage}_samples.json").read_text())
        assert samples["settings"]["judge"] == FillSumTask.judge
        correct = 0
        for row, record in zip(test, samples["per_problem"], strict=True):  # in the test split's order
            for text, score in zip(record["completions"], record["scores"], strict=True):
                try:
                    check_solution(row["start"], row["blanks"], row["target"], text)
                    right = 1.0
                except (AssertionError, ValueError, SyntaxError):
                    right = 0.0
                assert score == right, text
                correct += right
        assert result[stage]["avg_at_n"] == pytest.approx(correct / (6 * 4))
        assert result[stage]["diagnostics"]["entropy"] > 0
    assert len([log for log in result["rl"]["log_history"] if "reward" in log]) == 2
    # the evaluator hands the judge the problem's columns: the reference solutions score 1, a wrong one 0
    from trl_shaped.evaluation import EvalConfig, judge_scores
    from trl_shaped.evaluation.evaluator import judge_columns

    columns = judge_columns(test.to_list(), EvalConfig(judge=FillSumTask.judge))
    scores = judge_scores(
        [[ref, ref.replace("=", "+1=", 1)] for ref in test["completion"]], columns, judge=FillSumTask.judge
    )
    assert scores == [[1.0, 0.0]] * len(test)
