"""The built-in demo: the generated task, its tokenizers (character and byte-level BPE), the configuration.

The demo runs as a study: its end-to-end test is in `tests/test_study_runner.py`, its verdicts in
`tests/test_study_claims.py`.
"""

import ast
import operator
import re
from collections import Counter, defaultdict

import pytest

from trl_shaped.study import DemoConfig
from trl_shaped.tasks.arithmetic import ArithmeticTask, build_datasets, solution_orders, task_alphabet
from trl_shaped.tiny import DEFAULT_ALPHABET, build_bpe_tokenizer, build_char_tokenizer

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
    return build_datasets(num_train=400, num_rl=150, num_test=60, seed=1)


def test_task_is_deterministic_given_the_seed(data):
    again = build_datasets(num_train=400, num_rl=150, num_test=60, seed=1)
    other = build_datasets(num_train=400, num_rl=150, num_test=60, seed=2)
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


def _expressions(text: str) -> set[str]:
    """Every expression written as a problem in `text` (what precedes "=?")."""
    return set(re.findall(r"(\d+(?:[+-]\d+)+)=\?", text))


@pytest.mark.parametrize("profile", [{}, {"quick": True}])
def test_rl_and_test_problems_never_occur_in_the_stage1_corpus(profile, tmp_path):
    """On the data a study's cells actually train on: no RL or held-out problem is written anywhere in the stage-1
    text (prompts and completions), and the held-out problems are not RL problems."""
    from trl_shaped.study.builtin_cell import task_data

    config = DemoConfig(output_dir=str(tmp_path), **profile)
    data = task_data(config)
    assert (len(data["rl"]), len(data["test"])) == (config.num_rl_problems, config.num_test_problems)
    corpus = "\n".join(row["prompt"] + row["completion"] for row in data["sft"])
    seen = _expressions(corpus)
    assert len(seen) == config.num_train_problems
    rl = [p.removesuffix("=?\n") for p in data["rl"]["prompt"]]
    test = [p.removesuffix("=?\n") for p in data["test"]["prompt"]]
    assert len(set(rl)) == len(rl) and len(set(test)) == len(test)
    # the same sum with its terms in another order is the same problem for the model's purposes: compare term
    # multisets, not only strings
    seen_terms = {tuple(sorted(signed_terms(e))) for e in seen}
    for expression in rl + test:
        assert f"{expression}=" not in corpus, expression
        assert tuple(sorted(signed_terms(expression))) not in seen_terms, expression
    assert not {tuple(sorted(signed_terms(e))) for e in rl} & {tuple(sorted(signed_terms(e))) for e in test}


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
        build_datasets(ArithmeticTask(min_terms=2, max_terms=2, max_operand=2), num_train=50, num_rl=5, num_test=5)
    with pytest.raises(ValueError, match="num_rl"):
        build_datasets(num_train=50, num_rl=0, num_test=5)
    with pytest.raises(ValueError, match="presets"):
        DemoConfig(presets="ce,nope")
    with pytest.raises(ValueError, match="tokenizer"):
        DemoConfig(tokenizer="words")
    with pytest.raises(ValueError, match="sft_steps"):
        DemoConfig(sft_steps=0)
    with pytest.raises(ValueError, match="num_generations"):
        DemoConfig(num_generations=1)


def test_config_profiles_and_parser():
    from trl import TrlParser

    assert DemoConfig(presets="all").preset_names() == ["ce", "precision", "diversity", "tail_penalty", "head_reward"]
    quick, full = DemoConfig(quick=True), DemoConfig()
    assert quick.sft_steps < full.sft_steps and quick.grpo_steps < full.grpo_steps
    # the demo is a small study: three presets, at least three seeds in the full profile, BPE with the paper's k
    assert full.preset_names() == ["ce", "precision", "diversity"] and full.num_seeds >= 3
    assert full.tokenizer == "bpe" and full.shaping_top_k == 100 and full.bpe_vocab_size >= 512
    (parsed,) = TrlParser(DemoConfig).parse_args_and_config(
        ["--quick", "--sft_steps", "7", "--presets", "ce,diversity"]
    )
    assert parsed.quick and parsed.sft_steps == 7 and parsed.grpo_steps == quick.grpo_steps
    assert parsed.preset_names() == ["ce", "diversity"]


def test_bpe_tokenizer_round_trips_the_task_text_and_has_real_subwords(data):
    corpus = [row["prompt"] + row["completion"] for row in data["sft"]]
    tokenizer = build_bpe_tokenizer(corpus, vocab_size=512)
    assert len(tokenizer) >= 512
    # held-out text (not seen in training) and every training text decode back exactly
    for text in corpus + [row["prompt"] + row["completion"] for row in data["test"]]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    # prompt and completion tokenised apart (as the trainers and evaluation do) still give the text back
    row = data["test"][0]
    parts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (row["prompt"], row["completion"])]
    assert tokenizer.decode(parts[0] + parts[1]) == row["prompt"] + row["completion"]
    # subwords: far fewer tokens than characters, and k = 100 is well below the vocabulary the text uses
    used = {i for text in corpus for i in tokenizer(text, add_special_tokens=False)["input_ids"]}
    total_chars = sum(len(t) for t in corpus)
    total_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in corpus)
    assert total_tokens < 0.6 * total_chars
    assert len(used) > 200
    # special tokens exist and eos is not a piece of text
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=True) == ""
    with pytest.raises(ValueError, match="vocab_size"):
        build_bpe_tokenizer(corpus, vocab_size=100)
