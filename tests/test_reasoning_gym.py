"""The reasoning-gym judge and task: scores by the library's own verifiers, disjoint deterministic splits, settings in
the fingerprint, the prepare script."""

import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path

import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from trl_shaped.rewards import get_judge  # noqa: E402
from trl_shaped.rewards import reasoning_gym as rg_reward  # noqa: E402
from trl_shaped.study import StudyConfig  # noqa: E402
from trl_shaped.study.cells import cell_fingerprint  # noqa: E402
from trl_shaped.tasks import check_disjoint, get_task  # noqa: E402
from trl_shaped.tasks.reasoning_gym import DEFAULT_DATASET, ReasoningGymTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _entries(name, n, **config):
    return [reasoning_gym.create_dataset(name, size=n, seed=3, **config)[i] for i in range(n)]


def _judge(completions, entries):
    return get_judge("reasoning_gym")(completions, reasoning_gym=[json.dumps(e) for e in entries])


def test_judge_is_the_library_verifier_on_right_wrong_and_garbage_answers():
    entries = _entries("knights_knaves", 6)
    verifier = reasoning_gym.get_score_answer_fn("knights_knaves")
    right = [e["answer"] for e in entries]
    # every role swapped (each entry names its own terms: hero/villain, altruist/egoist, ...)
    terms = [
        (e["metadata"]["knight_knave_terms"]["a_knight"], e["metadata"]["knight_knave_terms"]["a_knave"])
        for e in entries
    ]
    wrong = [
        a.replace(good, "\0").replace(bad, good).replace("\0", bad) for a, (good, bad) in zip(right, terms, strict=True)
    ]
    garbage = ["I don't know", "\x00" * 50, "1", "knight knight", "Alice is a knight", ")("]
    for answers in (right, wrong, garbage):
        # the verifier called directly on the library's own entry (not the JSON column) is the expected score
        expected = [verifier(a, e) for a, e in zip(answers, entries, strict=True)]
        assert _judge([f"#### {a}" for a in answers], entries) == expected
    assert _judge([f"#### {a}" for a in right], entries) == [1.0] * 6
    assert all(s < 1.0 for s in _judge([f"#### {a}" for a in wrong], entries))
    assert _judge(["", "####", "<answer> </answer>", "\n\n"], entries[:4]) == [0.0] * 4  # no answer at all


def test_answer_is_read_from_tags_then_mark_then_box_then_answer_line_also_in_conversations():
    entry = _entries("syllogism", 1)[0]
    right, other = entry["answer"], {"Yes": "No", "No": "Yes"}[entry["answer"]]
    cases = {
        f"thinking...\n<answer>{right}</answer>": 1.0,
        f"<answer>{other}</answer> then <answer>{right}</answer>": 1.0,  # the last pair
        f"<answer>{right}</answer>\n#### {other}": 1.0,  # tags come first
        f"working\n#### {right}\nmore text": 1.0,  # the mark's own line
        f"#### {other}\n#### {right}": 1.0,  # the last mark
        f"so \\boxed{{{right}}}.": 1.0,
        f"\\boxed{{{other}}} no, \\boxed{{{right}}}": 1.0,  # the last box
        f"#### {right}\n\\boxed{{{other}}}": 1.0,  # the mark before the box
        f"Let me see.\nAnswer: {right}": 1.0,
        f"**Final answer:** {right}": 1.0,
        f"Answer: {other}\nanswer: {right}": 1.0,  # the last answer line
        f"\\boxed{{{right}}}\nAnswer: {other}": 1.0,  # the box before the answer line
        # one answer per completion: a right one in a later form never rescues a wrong one in an earlier form
        f"<answer>{other}</answer>\n#### {right}\n\\boxed{{{right}}}\nAnswer: {right}": 0.0,
        f"#### {other}\n\\boxed{{{right}}}": 0.0,
        f"\\boxed{{{other}}}\nAnswer: {right}": 0.0,
        # unmarked text is no answer: not the last line, not a stated guess, not a hedge
        f"let me see\n{right}\n\n": 0.0,
        f"{right}": 0.0,
        f"The answer is {right}": 0.0,
        f"It could be {right} or {other}": 0.0,
        f"#### {other}": 0.0,
    }
    assert _judge(list(cases), [entry] * len(cases)) == list(cases.values())
    conversational = [
        [{"role": "assistant", "content": f"Therefore\n<answer>{answer}</answer>"}] for answer in (right, other)
    ]
    assert _judge(conversational, [entry, entry]) == [1.0, 0.0]
    assert _judge([None, 42, [{"role": "assistant"}], ""], [entry] * 4) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("puzzle", ["knights_knaves", "zebra_puzzles", "aiw", "circuit_logic", "self_reference"])
def test_every_answer_form_of_the_reference_scores_what_the_verifier_gives_it(puzzle):
    """\\boxed{gold} and "Answer: gold" score as the verifier scores gold (full marks), as <answer> and #### do."""
    entries = _entries(puzzle, 4)
    verifier = reasoning_gym.get_score_answer_fn(puzzle)
    golds = [e["answer"] for e in entries]
    assert [verifier(g, e) for g, e in zip(golds, entries, strict=True)] == [1.0] * 4
    for form in ("<answer>{}</answer>", "Reasoning first.\n#### {}", "So \\boxed{{{}}}.", "Working.\nAnswer: {}"):
        assert _judge([form.format(g) for g in golds], entries) == [1.0] * 4, form


@pytest.mark.parametrize("puzzle", ["mini_sudoku", "rotate_matrix"])
def test_multi_line_answers_are_read_whole_from_answer_tags(puzzle):
    entries = _entries(puzzle, 4)
    verifier = reasoning_gym.get_score_answer_fn(puzzle)
    grids = [e["answer"] for e in entries]
    assert all(len(g.splitlines()) > 1 for g in grids)
    assert _judge([f"Thinking.\n<answer>\n{g}\n</answer>" for g in grids], entries) == [1.0] * 4
    # a wrong grid scores what the verifier gives it
    wrong = ["\n".join(reversed(g.splitlines())) for g in grids]
    assert _judge([f"<answer>{w}</answer>" for w in wrong], entries) == [
        verifier(w, e) for w, e in zip(wrong, entries, strict=True)
    ]
    # the one-line mark reads the first row only, which is never the whole grid
    assert all(s < 1.0 for s in _judge([f"#### {g}" for g in grids], entries))


def test_unscorable_entries_and_raising_or_hanging_verifiers_score_zero(monkeypatch):
    entry = _entries("syllogism", 1)[0]
    judge = get_judge("reasoning_gym")
    assert judge(["#### Yes"] * 3, reasoning_gym=["not json", json.dumps({"answer": "Yes"}), "{}"]) == [0.0] * 3

    def raising(answer, entry):
        raise RuntimeError("verifier bug")

    def hanging(answer, entry):
        time.sleep(3)
        return 1.0

    monkeypatch.setattr(rg_reward, "VERIFIER_TIMEOUT_S", 0.2)
    for verifier in (raising, hanging, lambda answer, entry: float("nan"), lambda answer, entry: "high"):
        monkeypatch.setattr(rg_reward, "_verifier", lambda source, verifier=verifier: verifier)
        assert judge([f"#### {entry['answer']}"], reasoning_gym=[json.dumps(entry)]) == [0.0]
    monkeypatch.setattr(rg_reward, "_verifier", lambda source: lambda answer, entry: 7.0)
    assert judge(["#### Yes"], reasoning_gym=[json.dumps(entry)]) == [1.0]  # clipped to the judge's range


def test_a_dataset_without_the_entry_column_is_refused():
    with pytest.raises(TypeError, match="reasoning_gym"):
        get_judge("reasoning_gym")(["#### Yes"], answer=["Yes"])
    with pytest.raises(ValueError, match="reasoning_gym"):
        get_judge("reasoning_gym")(["#### Yes"], reasoning_gym=None)
    # the evaluator names the missing column before it samples anything
    from trl_shaped.evaluation.metrics import missing_judge_columns

    assert missing_judge_columns(get_judge("reasoning_gym"), ["answer"]) == ["reasoning_gym"]
    assert missing_judge_columns(get_judge("reasoning_gym"), ["answer", "reasoning_gym"]) == []
    with pytest.raises(ValueError, match="one entry per completion"):
        get_judge("reasoning_gym")(["#### Yes"] * 2, reasoning_gym=["{}"] * 3)


def test_answer_key_normalises_the_extracted_answer_for_the_majority_vote():
    key = get_judge("reasoning_gym").answer_key
    assert key("#### Alice is a knight, and  Bob is a knave.") == key(
        "<answer>alice is a Knight, and Bob is a knave</answer>"
    )
    assert key("#### Yes") != key("#### No")
    assert key("") is None and key(None) is None and key("####") is None


def test_default_task_splits_are_disjoint_deterministic_and_scored_right_by_their_verifier():
    task = get_task("reasoning_gym")
    assert task.name == f"reasoning_gym:{DEFAULT_DATASET}" and task.judge == "reasoning_gym"
    data = task.build_datasets(num_train=300, num_rl=100, num_test=50, seed=0)
    assert (len(data["sft"]), len(data["rl"]), len(data["test"])) == (300, 100, 50)
    check_disjoint(data, key=lambda row: row["prompt"])
    again = task.build_datasets(num_train=300, num_rl=100, num_test=50, seed=0)
    assert all(list(data[s]) == list(again[s]) for s in data)
    other = task.build_datasets(num_train=300, num_rl=100, num_test=50, seed=1)
    assert set(data["test"]["prompt"]) != set(other["test"]["prompt"])
    verifier = reasoning_gym.get_score_answer_fn(DEFAULT_DATASET)
    for split in ("sft", "test"):
        rows = list(data[split])
        assert get_judge("reasoning_gym")(
            [r["completion"] for r in rows], reasoning_gym=[r["reasoning_gym"] for r in rows]
        ) == [1.0] * len(rows)
        for row in rows[:20]:
            entry = json.loads(row["reasoning_gym"])
            assert verifier(row["answer"], entry) == 1.0
            # the compact prompt: "Given:", the premises and the question, then the answer format; the instruction
            # preamble (what the task is, the notation) is gone
            question = [line for line in entry["question"].splitlines() if line.strip()]
            start = question.index("Given:")
            assert row["prompt"] == "\n".join([*question[start:], "Give your final answer after ####."]) + "\n"
            assert row["prompt"].splitlines()[-2] == ".What can we conclude from the above statements?"
            assert "FORMAT INSTRUCTIONS:" in entry["question"] and "FORMAT INSTRUCTIONS:" not in row["prompt"]
            assert task.solution_strategy(row["completion"]) == "direct"
    assert task.solution_strategy("hmm\n#### Yes") == "worked" and task.solution_strategy("Yes") == "other"
    assert task.solution_strategy("<answer>Yes</answer>") == "direct"
    assert task.solution_strategy("so \\boxed{Yes}") == "worked"


def test_full_questions_and_a_named_task_with_its_difficulty():
    whole = get_task("reasoning_gym:syllogism", compact=False).build_datasets(num_train=5, num_rl=5, num_test=5, seed=0)
    instruction = "Give your final answer after ####.\n"
    assert all(
        row["prompt"] == json.loads(row["reasoning_gym"])["question"].strip() + "\n" + instruction
        for row in whole["rl"]
    )
    task = get_task("reasoning_gym:knights_knaves", config={"n_people": 3}, max_sequence_tokens=256)
    data = task.build_datasets(num_train=4, num_rl=4, num_test=4, seed=0)
    entries = [json.loads(row["reasoning_gym"]) for row in data["test"]]
    assert all(len(entry["metadata"]["names"]) == 3 for entry in entries)
    # one paragraph: the compact prompt is the question whole
    assert all(
        json.loads(row["reasoning_gym"])["question"].strip() + "\n" + instruction == row["prompt"]
        for row in data["test"]
    )


def test_bad_settings_are_refused_before_any_data():
    with pytest.raises(ValueError, match="dataset must be a reasoning-gym task"):
        get_task("reasoning_gym:no_such_puzzle")
    with pytest.raises(ValueError, match="refused by reasoning-gym task 'syllogism'"):
        get_task("reasoning_gym:syllogism", config={"invalid_ratio": 2.0})
    with pytest.raises(ValueError, match="refused"):
        get_task("reasoning_gym", config={"no_such_setting": 1})
    with pytest.raises(ValueError, match="without seed and size"):
        ReasoningGymTask(config={"seed": 3})
    with pytest.raises(ValueError, match="max_sequence_tokens"):
        ReasoningGymTask(max_sequence_tokens=0)
    with pytest.raises(ValueError, match="num_test"):
        ReasoningGymTask().build_datasets(num_train=1, num_rl=1, num_test=0, seed=0)
    with pytest.raises(ValueError, match="distinct problems"):  # gcd of two numbers in 1..3: 9 problems at most
        get_task("reasoning_gym:gcd", config={"max_value": 3}).build_datasets(num_train=5, num_rl=5, num_test=5, seed=0)


def test_task_settings_change_the_cell_fingerprint():
    def fingerprint(**fields):
        return cell_fingerprint(StudyConfig(quick=True, output_dir="unused", **fields), "ce", 0)

    default = fingerprint(task="reasoning_gym")
    assert default == fingerprint(task=f"reasoning_gym:{DEFAULT_DATASET}")
    assert default["task.reasoning_gym_version"] == importlib.metadata.version("reasoning-gym")
    for changed in (
        fingerprint(task="reasoning_gym:knights_knaves"),
        fingerprint(task="reasoning_gym", task_args='{"config": {"max_vars": 3}}'),
        fingerprint(task="reasoning_gym", task_args='{"compact": false}'),
        fingerprint(task="reasoning_gym", task_args='{"answer_format": "tags"}'),
    ):
        assert changed != default


def test_prepare_script_writes_disjoint_jsonl_splits_the_judge_scores(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "prepare_reasoning_gym", ROOT / "recipes" / "prepare_reasoning_gym.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.prepare(
        tmp_path / "kk", task="knights_knaves", config={"n_people": 2}, num_train=6, num_rl=5, num_test=4
    )
    splits = {
        s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("sft", "rl", "test")
    }
    assert [len(rows) for rows in splits.values()] == [6, 5, 4]
    prompts = [row["prompt"] for rows in splits.values() for row in rows]
    assert len(set(prompts)) == len(prompts)
    assert set(splits["rl"][0]) == {"prompt", "answer", "reasoning_gym"}
    for split in ("sft", "test"):
        rows = splits[split]
        assert set(rows[0]) == {"prompt", "completion", "answer", "reasoning_gym"}
        # reasoning-gym's own answer form, which the prompts name
        assert all(r["completion"] == f"<answer>{r['answer']}</answer>" for r in rows)
        assert all(r["prompt"].endswith("between <answer> and </answer> tags.\n") for r in rows)
        scores = get_judge("reasoning_gym")(
            [r["completion"] for r in rows], reasoning_gym=[r["reasoning_gym"] for r in rows]
        )
        assert scores == [1.0] * len(rows)


def test_logic_recipes_are_the_paper_recipes_with_the_reasoning_gym_judge():
    from trl_shaped import ShapedGRPOConfig
    from trl_shaped.scripts import eval as eval_script
    from trl_shaped.scripts import grpo

    no_gpu = ["--bf16", "false", "--use_cpu", "true"]
    script_args, args, _, _ = grpo.make_parser().parse_args_and_config(
        ["--config", str(ROOT / "recipes" / "rl_logic.yaml"), *no_gpu]
    )
    paper = grpo.make_parser().parse_args_and_config(["--config", str(ROOT / "recipes" / "rl_paper.yaml"), *no_gpu])[1]
    for name in (*ShapedGRPOConfig.PAPER_RECIPE, "per_device_train_batch_size", "gradient_accumulation_steps"):
        assert getattr(args, name) == getattr(paper, name), name
    assert grpo.resolve_reward_funcs(script_args.reward_funcs) == [rg_reward.reasoning_gym_reward]
    (config,) = eval_script.make_parser().parse_args_and_config(["--config", str(ROOT / "recipes" / "eval_logic.yaml")])
    (paper_eval,) = eval_script.make_parser().parse_args_and_config(
        ["--config", str(ROOT / "recipes" / "eval_paper.yaml")]
    )
    # both stages read the logic suite's splits of one prepared folder, scored by the same judge
    assert config.judge == "reasoning_gym" and config.dataset_name == "data/logic/test.jsonl"
    assert script_args.dataset_data_files == ["train=data/logic/rl.jsonl", "test=data/logic/test.jsonl"]
    for name in ("num_samples", "temperature", "top_p", "pass_k", "diagnostics_top_k", "seed"):
        assert getattr(config, name) == getattr(paper_eval, name), name


def test_a_cell_of_the_study_on_the_default_logic_task_end_to_end(tmp_path):
    """stage 1 -> evaluation -> GRPO -> evaluation on a tiny profile, the judge being the puzzle's verifier in both."""
    from trl_shaped.study.builtin_cell import run_cell

    config = StudyConfig(
        task="reasoning_gym", presets="ce", num_seeds=1, num_train_problems=40, num_rl_problems=8, num_test_problems=6,
        hidden_size=32, sft_steps=4, grpo_steps=2, eval_num_samples=3, num_generations=2, grpo_prompts_per_step=2,
        shaping_top_k=4, output_dir=str(tmp_path),
    )  # fmt: skip
    result = run_cell(config, "ce", 0, tmp_path / "cell")
    test = config.study_task().build_datasets(num_train=40, num_rl=8, num_test=6, seed=0)["test"]
    verifier = reasoning_gym.get_score_answer_fn(DEFAULT_DATASET)
    for stage in ("stage1", "rl"):
        assert result[f"eval_{stage}"]["judge"] == "reasoning_gym"
        samples = json.loads((tmp_path / "cell" / f"eval_{stage}_samples.json").read_text())["per_problem"]
        assert len(samples) == 6
        for record, row in zip(samples, test, strict=True):
            # recount with the library's verifier on the text after the last "####" (the form the task's prompts ask
            # for and its corpus writes; the tiny model writes none of the judge's other forms, checked here)
            entry = json.loads(row["reasoning_gym"])
            for c in record["completions"]:
                assert "<answer>" not in c and "boxed{" not in c
                assert not any(line.strip().lower().startswith("answer:") for line in c.splitlines())
            answers = [
                c.rsplit("####", 1)[1].strip().split("\n")[0].strip() for c in record["completions"] if "####" in c
            ]
            expected = sum(a != "" and verifier(a, entry) == 1.0 for a in answers)
            assert record["num_correct"] == expected
    rewards = [log["reward"] for log in result["rl"]["log_history"] if "reward" in log]
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)


def test_study_logic_recipe_runs_the_default_logic_task_with_its_profile():
    from trl_shaped.scripts.study import make_parser

    (config,) = make_parser().parse_args_and_config(["--config", str(ROOT / "recipes" / "study_logic.yaml")])
    assert config.task == "reasoning_gym" and config.study_task().name == f"reasoning_gym:{DEFAULT_DATASET}"
    assert config.presets == "all" and config.num_seeds == 6 and config.eval_num_samples == 32


def test_without_reasoning_gym_the_judge_and_the_task_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "reasoning_gym", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'trl_shaped\[reasoning\]'"):
        get_judge("reasoning_gym")(["#### Yes"], reasoning_gym=["{}"])
    with pytest.raises(ImportError, match=r"pip install 'trl_shaped\[reasoning\]'"):
        get_task("reasoning_gym")
