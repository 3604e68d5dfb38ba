import sys

import pytest

from trl_shaped.rewards import exact_answer_reward, extract_answer, math_answer_reward, normalize_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 4 = 7\n#### 7", "7"),
        ("#### 1\nthen #### 2  \nmore text", "2"),
        ("the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{ 42 }", "42"),
        ("\\boxed{1} #### 5", "5"),  # "####" wins over \boxed
        ("no answer here", None),
        ("####", None),
        ("#### \n", None),
        ("\\boxed{unclosed", None),
        ("", None),
        (None, None),
        (12, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_exact_answer_normalisation():
    completions = ["#### 12", "#### 12.0", "####  12 ", "#### $12", "#### 1,2", "#### 12.", "#### 13", "#### 012"]
    assert exact_answer_reward(completions, answer="12") == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    # the gold side is normalised too, and compared per completion
    assert exact_answer_reward(["#### 5", "#### 5"], answer=[" 5.00", "6"]) == [1.0, 0.0]


MALFORMED = [
    "",
    "####",
    "#### twelve",
    "#### 1e99999999",  # exponent too large to be a sensible answer
    "#### nan",
    "#### inf",
    "\\boxed{",
    "\\boxed{}}}}",
    "#### 1/0",
    "\x00\xff\ud800",
    None,
    42,
    [{"role": "assistant"}],
    [{"role": "assistant", "content": None}],
    {"weird": "dict"},
]


@pytest.mark.parametrize("reward_func", [exact_answer_reward, math_answer_reward])
def test_malformed_and_empty_completions_score_zero(reward_func):
    rewards = reward_func(MALFORMED, answer=["12"] * len(MALFORMED))
    assert rewards == [0.0] * len(MALFORMED)
    # a missing or empty gold answer never matches, and never raises
    assert reward_func(["#### 12", "#### "], answer=[None, ""]) == [0.0, 0.0]


@pytest.mark.parametrize("reward_func", [exact_answer_reward, math_answer_reward])
def test_enormous_completions(reward_func):
    enormous_right = "7 " * 500_000 + "#### 12"
    enormous_digits = "9" * 1_000_000
    enormous_brackets = "(" * 200_000 + "\\boxed{" * 1000
    rewards = reward_func([enormous_right, enormous_digits, enormous_brackets], answer="12")
    assert rewards == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("reward_func", [exact_answer_reward, math_answer_reward])
def test_conversational_completions(reward_func):
    completions = [
        [{"role": "assistant", "content": "2 * 6 = 12\n#### 12"}],
        [{"role": "assistant", "content": "#### 11"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "#### 12"}]}],
    ]
    assert reward_func(completions, answer=["12", "12", "12"]) == [1.0, 0.0, 1.0]


def test_trl_call_signature():
    # TRL passes prompts, completion_ids, trainer_state, log_metric ... and every dataset column as keywords.
    kwargs = dict(prompts=["p", "p"], completion_ids=[[1], [2]], trainer_state=None, other_column=[1, 2])
    assert exact_answer_reward(completions=["#### 3", "#### 4"], answer=["3", "3"], **kwargs) == [1.0, 0.0]
    assert math_answer_reward(completions=["#### 3", "#### 4"], answer=["3", "3"], **kwargs) == [1.0, 0.0]


def test_answer_length_mismatch_is_a_caller_error():
    with pytest.raises(ValueError, match="answer"):
        exact_answer_reward(["#### 1", "#### 2"], answer=["1"])


def test_math_verify_equivalences():
    pytest.importorskip("math_verify")  # the optional extra; the fallback path is tested below without it
    completions = ["\\boxed{\\frac{1}{2}}", "#### 0.5", "#### \\frac{2}{4}", "#### 1/3", "\\boxed{\\sqrt{4}}"]
    golds = ["\\frac{1}{2}", "\\frac{1}{2}", "0.5", "\\frac{1}{2}", "2"]
    assert math_answer_reward(completions, answer=golds) == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_math_answer_reward_falls_back_without_math_verify(monkeypatch):
    # A None entry in sys.modules makes `import math_verify` raise ImportError, as if the extra were absent.
    monkeypatch.setitem(sys.modules, "math_verify", None)
    completions = ["#### 12.0", "\\boxed{\\frac{1}{2}}", "#### \\frac{2}{4}", "#### $ X + 1 $.", "nothing", None]
    golds = ["12", "\\frac{1}{2}", "\\frac{1}{2}", "x+1", "12", "12"]
    # string match: equal after normalisation, and no mathematical equivalence (2/4 != 1/2 as strings)
    assert math_answer_reward(completions, answer=golds) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_normalize_answer():
    assert normalize_answer(" 12.50 ") == normalize_answer("12.5") == "12.5"
    assert normalize_answer("0.0") == "0"
    assert normalize_answer("\\boxed{ABC}") == "abc"
    assert normalize_answer("") is None
