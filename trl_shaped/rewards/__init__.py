"""Verifiable rewards for RLVR, with TRL's reward-function signature, and the judges built on them.

A TRL reward function is called as ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns)`` and
returns one float per completion. A *judge* is such a function named once (`judges.JUDGES`) and used for both the RL
reward and the evaluation's correctness, so that an evaluation measures what RL optimised:

    answers.py        exact_answer_reward (numbers), math_answer_reward (math-verify), extract_answer, ...
    judges.py         JUDGES (name -> reward function), get_judge(name, judge_args): the names both stages take
    code.py           code_reward: runs the completion's code against the problem's tests in the sandbox
    code_tests.py     the tests column from MBPP, HumanEval and standard input/output pairs
    reasoning_gym.py  reasoning_gym_reward: a reasoning-gym task's own verifier

Reward functions never raise on model output: a completion that cannot be scored scores 0.0.
"""

from .answers import (
    MATH_VERIFY_MAX_CHARS,
    MathAnswerReward,
    completion_text,
    exact_answer_reward,
    extract_answer,
    math_answer_reward,
    normalize_answer,
)
from .code import CodeReward, code_reward, extract_code
from .judges import JUDGES, check_judge_args, get_judge, judge_name
from .reasoning_gym import extract_reasoning_gym_answer, reasoning_gym_reward
