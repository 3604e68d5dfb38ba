"""The logic suite: reasoning-gym's composite dataset over its logic puzzles (and mini_sudoku) as prepared rows, each
scored by its own puzzle's verifier through the one `reasoning_gym` judge; prompts that keep the question and name the
answer format; refusals that name their real cause."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from reasoning_gym.composite import DatasetSpec  # noqa: E402

from trl_shaped.rewards import get_judge  # noqa: E402
from trl_shaped.rewards import reasoning_gym as rg_reward  # noqa: E402
from trl_shaped.tasks import check_disjoint, get_task  # noqa: E402
from trl_shaped.tasks.reasoning_gym import DEFAULT_CONFIGS, LOGIC_SUITE, ReasoningGymTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The question each puzzle asks, which a compact prompt must keep (the preamble every entry repeats may go).
QUESTIONS = {
    "propositional_logic": "What can we conclude from the above statements?",
    "syllogism": "Does it logically follow that:",
    "zebra_puzzles": "What is Name of the person who lives in House 1?",
    "self_reference": "please tell me the number of possible solutions",
    "circuit_logic": "What is the final output?",
    "mini_sudoku": "Format your response as the puzzle above",
}


def _judge(completions, rows):
    return get_judge("reasoning_gym")(completions, reasoning_gym=[row["reasoning_gym"] for row in rows])


@pytest.fixture(scope="module")
def suite():
    task = get_task("reasoning_gym:composite", answer_format="tags")
    return task, task.build_datasets(num_train=96, num_rl=32, num_test=32, seed=0)


def test_logic_suite_members_exist_in_the_installed_reasoning_gym():
    assert set(LOGIC_SUITE) <= set(reasoning_gym.factory.DATASETS)
    # the suite is reasoning-gym's logic category, and mini_sudoku
    logic = {name for name, (cls, _) in reasoning_gym.factory.DATASETS.items() if ".logic." in cls.__module__}
    assert set(LOGIC_SUITE) == logic | {"mini_sudoku"}


def test_suite_rows_come_from_every_member_disjoint_deterministic_and_scored_by_their_own_verifier(suite):
    task, data = suite
    assert task.name == "reasoning_gym:composite" and task.judge == "reasoning_gym"
    check_disjoint(data, key=lambda row: row["prompt"])
    entries = {s: [json.loads(row["reasoning_gym"]) for row in data[s]] for s in data}
    assert set(Counter(e["metadata"]["source_dataset"] for e in entries["sft"])) == set(LOGIC_SUITE)
    again = task.build_datasets(num_train=96, num_rl=32, num_test=32, seed=0)
    assert all(list(data[s]) == list(again[s]) for s in data)
    other = task.build_datasets(num_train=96, num_rl=32, num_test=32, seed=1)
    assert set(data["test"]["prompt"]) != set(other["test"]["prompt"])
    for split in ("sft", "test"):
        rows = list(data[split])
        assert _judge([row["completion"] for row in rows], rows) == [1.0] * len(rows)
        for row, entry in zip(rows, entries[split], strict=True):
            puzzle = entry["metadata"]["source_dataset"]
            assert reasoning_gym.get_score_answer_fn(puzzle)(row["answer"], entry) == 1.0
            assert row["completion"] == f"<answer>{row['answer']}</answer>"
    grids = [
        row for row in data["sft"] if json.loads(row["reasoning_gym"])["metadata"]["source_dataset"] == "mini_sudoku"
    ]
    assert grids and all(len(row["answer"].splitlines()) == 4 for row in grids)


def test_suite_entries_are_reasoning_gyms_composite_entries_and_score_as_its_own_score_answer(suite):
    """The rows are the composite dataset's own entries, and the judge's score on them is the composite's own
    score_answer on the original entry, right and wrong answers alike."""
    task, data = suite
    specs = [DatasetSpec(name=name, weight=1.0, config=dict(DEFAULT_CONFIGS.get(name, {}))) for name in LOGIC_SUITE]
    composite = reasoning_gym.create_dataset("composite", seed=0, size=20 * 160, datasets=specs)
    originals = {composite[i]["question"]: composite[i] for i in range(64)}
    rows = [row for row in data["sft"] if json.loads(row["reasoning_gym"])["question"] in originals]
    assert len(rows) >= 48  # the first problems of the stream, duplicates and rejected answers aside
    wrong = ["<answer>Yes</answer>", "<answer>0</answer>", "<answer>alice</answer>", "<answer>(P ∨ Q)</answer>"]
    for row in rows:
        original = originals[json.loads(row["reasoning_gym"])["question"]]
        assert original["answer"] is None or str(original["answer"]).strip() == row["answer"]
        for completion in (row["completion"], *wrong):
            answer = reasoning_gym.utils.extract_answer(completion)
            assert _judge([completion], [row]) == [composite.score_answer(answer, original)]


def test_a_named_mixture_and_its_weights(tmp_path):
    task = get_task(
        "reasoning_gym:composite",
        config={"datasets": ["syllogism", {"name": "knights_knaves", "weight": 3.0, "config": {"n_people": 2}}]},
        max_sequence_tokens=256,
    )
    data = task.build_datasets(num_train=60, num_rl=5, num_test=5, seed=0)
    entries = [json.loads(row["reasoning_gym"]) for row in data["sft"]]
    counts = Counter(e["metadata"]["source_dataset"] for e in entries)
    assert set(counts) == {"syllogism", "knights_knaves"} and counts["knights_knaves"] > counts["syllogism"]
    assert all(len(e["metadata"]["names"]) == 2 for e in entries if e["metadata"]["source_dataset"] == "knights_knaves")
    assert all(row["completion"].startswith("#### ") for row in data["sft"])  # one-line answers: the mark works


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"datasets": []}, "non-empty list"),
        ({"size": 3}, "without seed and size"),
        ({"datasets": ["syllogism", "no_such_puzzle"]}, r"config\['datasets'\]\[1\]\['name'\] must be a reasoning-gym"),
        ({"datasets": ["syllogism", "syllogism"]}, "named twice"),
        ({"datasets": [{"name": "syllogism", "config": {"seed": 1}}]}, r"\['config'\] must be a dict without seed"),
        ({"datasets": [{"name": "syllogism", "weight": 0}]}, "refused by reasoning-gym task 'composite'"),
        ({"datasets": [{"name": "syllogism", "weights": 1}]}, "a dict of name, weight, config"),
        ({"datasets": [{"name": "syllogism", "config": {"invalid_ratio": 2.0}}]}, "refused"),
    ],
)
def test_bad_mixtures_are_refused_naming_the_setting(config, message):
    with pytest.raises(ValueError, match=message):
        get_task("reasoning_gym:composite", config=config)


def test_multi_line_answers_with_the_one_line_mark_are_refused_for_that_reason():
    with pytest.raises(ValueError, match=r"answers of several lines .* use answer_format='tags'"):
        get_task("reasoning_gym:mini_sudoku").build_datasets(num_train=2, num_rl=1, num_test=1, seed=0)
    with pytest.raises(ValueError, match=r"answers of several lines"):
        get_task("reasoning_gym:composite").build_datasets(num_train=40, num_rl=1, num_test=1, seed=0)
    with pytest.raises(ValueError, match="answer_format must be one of"):
        ReasoningGymTask(answer_format="boxed")
    data = get_task("reasoning_gym:rotate_matrix", answer_format="tags").build_datasets(
        num_train=3, num_rl=1, num_test=2, seed=0
    )
    rows = list(data["sft"]) + list(data["test"])
    assert all(len(row["answer"].splitlines()) > 1 for row in rows)
    assert _judge([row["completion"] for row in rows], rows) == [1.0] * len(rows)


def test_a_verifier_that_refuses_its_own_answers_is_refused_naming_the_verifier(monkeypatch):
    # the verifier (as the judge and the diagnosis both get it) gives every reference answer 0.5
    monkeypatch.setattr(rg_reward, "_verifier", lambda source: lambda answer, entry: 0.5)
    monkeypatch.setattr(reasoning_gym, "get_score_answer_fn", lambda name: lambda answer, entry: 0.5)
    with pytest.raises(ValueError, match=r"verifier of 'syllogism' scores the reference answer '(Yes|No)' 0.5 on its"):
        get_task("reasoning_gym:syllogism").build_datasets(num_train=20, num_rl=1, num_test=1, seed=0)


@pytest.mark.parametrize("puzzle", LOGIC_SUITE)
@pytest.mark.parametrize("answer_format", ["mark", "tags"])
def test_prompts_keep_the_question_and_name_the_answer_format(puzzle, answer_format):
    if puzzle == "mini_sudoku" and answer_format == "mark":
        return  # refused: its answers are grids (the test above)
    instruction = {"mark": "Give your final answer after ####.", "tags": "<answer> and </answer> tags."}[answer_format]
    task = get_task(f"reasoning_gym:{puzzle}", answer_format=answer_format)
    rows = list(task.build_datasets(num_train=8, num_rl=1, num_test=1, seed=0)["sft"])
    questions = [json.loads(row["reasoning_gym"])["question"] for row in rows]
    for row, question in zip(rows, questions, strict=True):
        *body, last = row["prompt"].rstrip("\n").split("\n")
        assert last.endswith(instruction) and row["prompt"].endswith("\n")
        lines = [line.rstrip() for line in question.strip().splitlines() if line.strip()]
        # the prompt is the question from some line on, whole (blank lines aside)
        assert body == lines[len(lines) - len(body) :]
        if puzzle in QUESTIONS:
            assert QUESTIONS[puzzle] in "\n".join(body)
        # a dropped line is one every question of the puzzle repeats, and the line that introduces the problem stays
        dropped = lines[: len(lines) - len(body)]
        assert all(all(line.strip() in {x.strip() for x in q.splitlines()} for q in questions) for line in dropped)
    assert task.settings()["answer_format"] == answer_format


def test_prepare_script_writes_the_logic_suite_by_default(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "prepare_reasoning_gym", ROOT / "recipes" / "prepare_reasoning_gym.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.prepare(tmp_path / "logic", num_train=40, num_rl=16, num_test=16, compact=False)
    splits = {
        s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("sft", "rl", "test")
    }
    assert [len(rows) for rows in splits.values()] == [40, 16, 16]
    prompts = [row["prompt"] for rows in splits.values() for row in rows]
    assert len(set(prompts)) == len(prompts)
    puzzles = {
        json.loads(row["reasoning_gym"])["metadata"]["source_dataset"] for rows in splits.values() for row in rows
    }
    assert puzzles <= set(LOGIC_SUITE) and len(puzzles) >= 6
    for rows in splits.values():
        for row in rows:  # whole questions, then the format line
            question = json.loads(row["reasoning_gym"])["question"].strip()
            assert row["prompt"] == question + "\nGive your final answer between <answer> and </answer> tags.\n"
    rows = splits["test"]
    assert _judge([row["completion"] for row in rows], rows) == [1.0] * len(rows)
    # what RL rewards and what the evaluation counts: the same judge on the same rows
    from trl_shaped.scripts import eval as eval_script
    from trl_shaped.scripts import grpo

    script_args = grpo.make_parser().parse_args_and_config(
        ["--config", str(ROOT / "recipes" / "rl_logic.yaml"), "--bf16", "false", "--use_cpu", "true"]
    )[0]
    (config,) = eval_script.make_parser().parse_args_and_config(["--config", str(ROOT / "recipes" / "eval_logic.yaml")])
    assert grpo.resolve_reward_funcs(script_args.reward_funcs) == [get_judge(config.judge)]
