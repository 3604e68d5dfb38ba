"""Judges: one reward function per domain, named once and used for RL and for evaluation alike.

A judge is a TRL reward function, ``judge(completions, **dataset_columns) -> list[float]``, with scores in [0, 1].
GRPO uses the score as the reward; the evaluator counts a sample as correct when its score is 1.0 (its full score: a
program that passes every test, an answer that is right), so Avg@n, Cons@n and Pass@k measure what RL optimised.
Each judge reads its own dataset columns, which reach it as keyword arguments, one value per completion, as TRL
passes them:

    name            function                                    columns it reads
    exact           rewards.exact_answer_reward (the default)   answer: the gold number
    math            rewards.math_answer_reward                  answer: the gold answer (LaTeX or plain)
    code            rewards.code_reward                         tests: a list of Python statements per problem
    reasoning_gym   rewards.reasoning_gym_reward                answer, reasoning_gym: the task's entry (JSON)

Anything else is a dotted import path to a function of the same signature (``my_pkg.rewards.my_judge`` or
``my_pkg.rewards:my_judge``).
"""

import importlib
import os
import sys
from collections.abc import Callable

# name -> "module:attribute", imported on first use (the code and reasoning-gym judges pull in optional parts)
JUDGES = {
    "exact": "trl_shaped.rewards.answers:exact_answer_reward",
    "math": "trl_shaped.rewards.answers:math_answer_reward",
    "code": "trl_shaped.rewards.code:code_reward",
    "reasoning_gym": "trl_shaped.rewards.reasoning_gym:reasoning_gym_reward",
}
DEFAULT_JUDGE = "exact"


def get_judge(name: str) -> Callable:
    """The reward function of judge `name`: a name of `JUDGES` or a dotted import path to a callable.

    Args:
        name (`str`): ``exact``, ``math``, ``code``, ``reasoning_gym``, or ``package.module.function`` /
            ``package.module:function`` (a module beside the working directory is found too).

    Raises:
        ValueError: naming the argument and the registered judges, for an unknown name or a path that does not
            import to a callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"judge must be one of {sorted(JUDGES)} or a dotted import path, got {name!r}")
    target = JUDGES.get(name.strip(), name.strip())
    if ":" in target:
        module_path, attr = target.split(":", 1)
    elif "." in target:
        module_path, attr = target.rsplit(".", 1)
    else:
        raise ValueError(f"judge must be one of {sorted(JUDGES)} or a dotted import path, got {name!r}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # lets a recipe name a rewards file beside it
    try:
        func = getattr(importlib.import_module(module_path), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"judge {name!r} does not import ({error}); use one of {sorted(JUDGES)} or a dotted import path"
        ) from None
    if not callable(func):
        raise ValueError(f"judge {name!r} is not callable: {type(func).__name__}")
    return func


def judge_name(judge) -> str:
    """The name a report gives `judge`: its `JUDGES` name when registered, else ``module.qualname``."""
    if isinstance(judge, str):
        return judge
    module = getattr(judge, "__module__", None) or type(judge).__module__
    qualname = getattr(judge, "__name__", None) or type(judge).__name__
    for name, target in JUDGES.items():
        if target == f"{module}:{qualname}":
            return name
    return f"{module}.{qualname}"
