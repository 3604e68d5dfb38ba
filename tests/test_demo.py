"""The built-in demo: the generated task, the configuration, the report's conclusions, the quick demo end to end."""

import ast
import dataclasses
import json
import math
import operator
import re
from collections import Counter, defaultdict

import pytest
import torch

from trl_shaped.demo import DemoConfig
from trl_shaped.demo.report import findings, start_end
from trl_shaped.demo.task import ArithmeticTask, build_datasets, solution_orders, task_alphabet
from trl_shaped.tiny import DEFAULT_ALPHABET, build_char_tokenizer

STEP = re.compile(r"^(\d+)([+-])(\d+)=(\d+)$")


def evaluate_expression(text: str) -> int:
    """Independent evaluator of the prompt's expression (Python's own parser, integers, + and - only)."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub}

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unexpected expression {text!r}")

    return walk(ast.parse(text, mode="eval").body)


def signed_terms(expression: str) -> list[int]:
    return [int(t) for t in re.findall(r"[+-]?\d+", expression)]


def check_solution(prompt: str, completion: str, answer: str) -> str:
    """Re-derive a worked solution step by step; returns "direct" or "worked", raises AssertionError if wrong."""
    assert prompt.endswith("=?\n"), prompt
    expression = prompt[: -len("=?\n")]
    value = evaluate_expression(expression)
    assert answer == str(value)
    work, mark, final = completion.partition("####")
    assert mark and final.strip() == answer, completion
    if not work.strip():
        return "direct"
    steps = [s for s in re.split(r"[ ,;]+", work.strip()) if s]
    used, running = [], None
    for step in steps:
        match = STEP.match(step)
        assert match, f"malformed step {step!r} in {completion!r}"
        left, op, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        if running is None:
            used.append(left)
        else:
            assert left == running, f"step {step!r} does not continue from {running} in {completion!r}"
        assert result == (left + right if op == "+" else left - right), f"wrong arithmetic in {step!r}"
        assert result >= 0
        used.append(right if op == "+" else -right)
        running = result
    assert sorted(used) == sorted(signed_terms(expression)), f"{completion!r} does not use the terms of {expression!r}"
    assert running == value
    return "worked"


@pytest.fixture(scope="module")
def data():
    return build_datasets(num_train=400, num_test=60, seed=1)


def test_task_is_deterministic_given_the_seed(data):
    again = build_datasets(num_train=400, num_test=60, seed=1)
    other = build_datasets(num_train=400, num_test=60, seed=2)
    for split in ("sft", "rl", "test"):
        assert data[split].to_list() == again[split].to_list()
    assert data["sft"].to_list() != other["sft"].to_list()


def test_every_solution_checks_out_with_an_independent_evaluator(data):
    kinds = Counter()
    for split in ("sft", "test"):
        for row in data[split]:
            kinds[check_solution(row["prompt"], row["completion"], row["answer"])] += 1
    for row in data["rl"]:
        assert row["answer"] == str(evaluate_expression(row["prompt"][: -len("=?\n")]))
    # both strategies are present, in about the configured proportion
    direct = kinds["direct"] / sum(kinds.values())
    assert abs(direct - ArithmeticTask().direct_prob) < 0.05


def test_the_corpus_branches_between_several_valid_solutions(data):
    by_prompt = defaultdict(set)
    first_chars = defaultdict(Counter)
    for row in data["sft"]:
        # separators are stylistic: compare the arithmetic path only
        by_prompt[row["prompt"]].add(re.sub(r"[,;]? ", " ", row["completion"]))
        first_chars[row["prompt"]][row["completion"][0]] += 1
    distinct = [len(paths) for paths in by_prompt.values()]
    assert sum(d >= 2 for d in distinct) / len(distinct) > 0.6
    assert max(distinct) >= 4
    # the very first completion token is uncertain for most problems (direct answer or which term to start from)
    assert sum(len(c) >= 2 for c in first_chars.values()) / len(first_chars) > 0.6
    separators = Counter(sep for row in data["sft"] for sep in re.findall(r"\d([,;]? )\d", row["completion"]))
    assert set(separators) == {" ", ", ", "; "}


def test_solution_orders_are_the_valid_commutations():
    # 7+5-3: the orders that start with a positive term and never go below zero
    texts = {tuple((7, 5, -3)[i] for i in order) for order in solution_orders((7, 5, -3))}
    assert texts == {(7, 5, -3), (7, -3, 5), (5, 7, -3), (5, -3, 7)}
    # 2-5+9: starting from 2 then -5 goes negative
    texts = {tuple((2, -5, 9)[i] for i in order) for order in solution_orders((2, -5, 9))}
    assert texts == {(2, 9, -5), (9, 2, -5), (9, -5, 2)}
    assert solution_orders((1, -5)) == []


def test_train_and_test_problems_are_disjoint(data):
    train = set(data["rl"]["prompt"])
    assert len(train) == len(data["rl"])
    assert set(data["sft"]["prompt"]) == train
    test = data["test"]["prompt"]
    assert len(set(test)) == len(test)
    assert not train & set(test)


def test_task_alphabet_covers_the_text_and_fits_the_default_tokenizer(data):
    alphabet = set(task_alphabet())
    assert alphabet <= set(DEFAULT_ALPHABET)
    text = "".join(r["prompt"] + r["completion"] for r in data["sft"])
    assert set(text) <= alphabet
    tokenizer = build_char_tokenizer(task_alphabet())
    ids = tokenizer(text[:500], add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text[:500]


def test_task_and_config_reject_bad_values():
    with pytest.raises(ValueError, match="max_terms"):
        ArithmeticTask(min_terms=3, max_terms=2)
    with pytest.raises(ValueError, match="direct_prob"):
        ArithmeticTask(direct_prob=1.0)
    with pytest.raises(ValueError, match="num_train"):
        build_datasets(ArithmeticTask(min_terms=2, max_terms=2, max_operand=2), num_train=50, num_test=5)
    with pytest.raises(ValueError, match="presets"):
        DemoConfig(presets="ce,nope")
    with pytest.raises(ValueError, match="sft_steps"):
        DemoConfig(sft_steps=0)
    with pytest.raises(ValueError, match="num_generations"):
        DemoConfig(num_generations=1)


def test_config_profiles_and_parser():
    from trl import TrlParser

    assert DemoConfig(presets="all").preset_names() == ["ce", "precision", "diversity", "tail_penalty", "head_reward"]
    quick, full = DemoConfig(quick=True), DemoConfig()
    assert quick.sft_steps < full.sft_steps and quick.grpo_steps < full.grpo_steps
    (parsed,) = TrlParser(DemoConfig).parse_args_and_config(
        ["--quick", "--sft_steps", "7", "--presets", "ce,diversity"]
    )
    assert parsed.quick and parsed.sft_steps == 7 and parsed.grpo_steps == quick.grpo_steps
    assert parsed.preset_names() == ["ce", "diversity"]


def _fake_runs(entropy: dict, pass_n: dict, rl_entropy: dict):
    """Minimal run records with chosen numbers, to check that the conclusions follow the numbers."""
    runs = {}
    for preset, stage1_entropy in entropy.items():
        evaluation = {
            "num_samples": 4,
            "num_problems": 10,
            "avg_at_n": pass_n[preset] / 2,
            "avg_at_n_stderr": 0.01,
            "pass_at_k": {"2": pass_n[preset], "4": 1.0},
            "pass_at_k_stderr": {"2": 0.01, "4": 0.0},
        }
        runs[preset] = {
            "eval_stage1": {**evaluation, "avg_at_n": 0.1, "first_token_entropy": stage1_entropy},
            "eval_rl": evaluation,
            "rl": {"log_history": [{"step": i, "entropy": e} for i, e in enumerate(rl_entropy[preset])]},
        }
    summary = {
        p: {
            "heldout_stage1": {"entropy": entropy[p], "nll": 1.0, "tail_mass": 0.1},
            "rl_curves": {
                "entropy": dict(zip(("start", "end"), start_end(rl_entropy[p]))),
                "completions/mean_length": {"start": 10.0, "end": 9.0},
            },
        }
        for p in entropy
    }
    return runs, summary


def test_findings_follow_the_numbers_either_way():
    paper_like = _fake_runs(
        {"ce": 0.5, "precision": 0.4, "diversity": 0.6},
        {"ce": 0.5, "precision": 0.7, "diversity": 0.4},
        {"ce": [1.0, 0.9], "precision": [1.0, 0.95], "diversity": [1.0, 0.5]},
    )
    text = " ".join(findings(*paper_like))
    assert "entropy ordering (precision lowest, diversity highest, CE between) appears" in text
    assert "the paper's ordering appears there." in text
    assert "give the best Pass@k after RL appears" in text
    assert "collapses its entropy most under RL appears" in text
    reversed_ = _fake_runs(
        {"ce": 0.5, "precision": 0.6, "diversity": 0.4},
        {"ce": 0.5, "precision": 0.3, "diversity": 0.6},
        {"ce": [1.0, 0.5], "precision": [1.0, 0.95], "diversity": [1.0, 0.9]},
    )
    text = " ".join(findings(*reversed_))
    assert "does NOT appear at this scale." in text
    assert "the paper's ordering does NOT appear there." in text
    assert "give the best Pass@k after RL does NOT appear" in text
    assert "largest decrease or smallest increase: ce" in text
    close = _fake_runs(
        {"ce": 0.5, "precision": 0.4, "diversity": 0.6},
        {"ce": 0.51, "precision": 0.5, "diversity": 0.3},
        {"ce": [1.0, 0.9], "precision": [1.0, 0.95], "diversity": [1.0, 0.5]},
    )
    text = " ".join(findings(*close))
    assert "after RL is not resolved at this scale: precision vs ce differ by -1.0 points" in text


# ---------------------------------------------------------------------------------------------------------------------
# The quick demo, end to end
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    from trl_shaped.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "report"
    assert run_demo(DemoConfig(quick=True, output_dir=str(out))) == out
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_demo_writes_every_file_of_its_report(quick_report):
    out, results = quick_report
    for name in ("report.md", "results.json", "stage1.png", "rl_curves.png", "pass_at_k.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("stage1.png", "rl_curves.png", "pass_at_k.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    presets = DemoConfig(quick=True).preset_names()
    assert list(results["presets"]) == presets
    for preset in presets:
        run = out / "runs" / preset
        for stage in ("stage1", "rl"):
            assert (run / stage / "model.safetensors").is_file() and (run / stage / "trainer_state.json").is_file()
        assert (run / "eval_stage1.json").is_file() and (run / "eval_rl.json").is_file()
    report = (out / "report.md").read_text()
    for sentence in results["findings"]:
        assert sentence in report


@pytest.mark.slow
def test_quick_demo_numbers_come_from_its_runs(quick_report):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, results = quick_report
    config = DemoConfig(quick=True)
    test = build_datasets(num_train=config.num_train_problems, num_test=config.num_test_problems, seed=config.seed)[
        "test"
    ]
    report = (out / "report.md").read_text()
    for preset, run in results["presets"].items():
        run_dir = out / "runs" / preset
        # the settings quoted are those the trainers ran with, as saved with their checkpoints
        stage1_args = torch.load(run_dir / "stage1" / "training_args.bin", weights_only=False)
        assert stage1_args.shaping_preset == preset
        assert run["stage1"]["settings"]["shaping"] == dataclasses.asdict(stage1_args.shaping)
        rl_args = torch.load(run_dir / "rl" / "training_args.bin", weights_only=False)
        assert rl_args.prior_model_name_or_path == run["stage1"]["checkpoint"]
        assert run["rl"]["settings"]["learning_rate"] == rl_args.learning_rate

        # the curves are the trainers' own log histories, as saved with their checkpoints
        for stage in ("stage1", "rl"):
            saved = json.loads((run_dir / stage / "trainer_state.json").read_text())["log_history"]
            assert run[stage]["log_history"] == saved
        rewards = [e["reward"] for e in run["rl"]["log_history"] if "reward" in e]
        assert len(rewards) >= 2
        assert results["summary"][preset]["rl_curves"]["reward"]["start"] == pytest.approx(start_end(rewards)[0])

        # Avg@n re-judged from the saved samples, with this test's own answer check
        for stage in ("stage1", "rl"):
            samples = json.loads((run_dir / f"eval_{stage}.json").read_text())["per_problem"]
            correct = [
                sum(c.partition("####")[2].strip() == gold for c in record["completions"]) / len(record["completions"])
                for record, gold in zip(samples, test["answer"])
            ]
            avg = sum(correct) / len(correct)
            assert run[f"eval_{stage}"]["avg_at_n"] == pytest.approx(avg)
            assert f"{100 * avg:.1f} ±" in report

        # the held-out statistics of stage 1 are those of the saved stage-1 checkpoint: recompute NLL and entropy
        model = AutoModelForCausalLM.from_pretrained(run_dir / "stage1").eval()
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "stage1")
        rows = []
        for row in test:
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
            rows.append((prompt, completion + [tokenizer.eos_token_id]))
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        scored = torch.zeros(len(rows), width - 1, dtype=torch.bool)  # positions that predict a completion token
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            scored[i, len(p) - 1 : len(p) + len(c) - 1] = True
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].double(), dim=-1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0][scored]
        entropy = -(logp.exp() * logp).sum(-1)[scored]
        nll_sum, entropy_sum, count = nll.sum().item(), entropy.sum().item(), int(scored.sum())
        diagnostics = run["eval_stage1"]["diagnostics"]
        assert diagnostics["nll"] == pytest.approx(nll_sum / count, rel=1e-4)
        assert diagnostics["entropy"] == pytest.approx(entropy_sum / count, rel=1e-4)
        assert diagnostics["perplexity"] == pytest.approx(math.exp(nll_sum / count), rel=1e-4)
        assert f"{diagnostics['nll']:.4f}" in report

        # RL moved the policy away from its stage-1 prior
        policy = AutoModelForCausalLM.from_pretrained(run_dir / "rl")
        assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), model.parameters()))
