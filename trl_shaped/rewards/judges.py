"""Judges: one reward function per domain, named once and used for RL and for evaluation alike.

A judge is a TRL reward function, ``judge(completions, **dataset_columns) -> list[float]``, with scores in [0, 1].
GRPO uses the score as the reward; the evaluator counts a sample as correct when its score is 1.0 (its full score: a
program that passes every test, an answer that is right), so Avg@n, Cons@n and Pass@k measure what RL optimised.
Each judge reads its own dataset columns, which reach it as keyword arguments, one value per completion, as TRL
passes them:

    name            function (also accepted as a name)          columns it reads     judge_args
    exact           rewards.exact_answer_reward (the default)   answer: the number   -
    math            rewards.math_answer_reward                  answer: LaTeX/plain  anchored
    code            rewards.code_reward                         tests                all_or_nothing, limits, workers
    reasoning_gym   rewards.reasoning_gym_reward                answer, reasoning_gym

`trl-shaped grpo --reward_funcs` and `trl-shaped eval --judge` take the same names through `get_judge`: the short
names above, the functions' names (``math_answer_reward``), the reward functions of `trl.rewards`
(``accuracy_reward``, ``think_format_reward``, ...), and dotted import paths to a function of the same signature
(``my_pkg.rewards.my_judge`` or ``my_pkg.rewards:my_judge``; a class there is built with the judge args).

`judge_args` (a mapping, the same in both commands) sets a judge's options: the registered judges build their class
with them (``math``: `MathAnswerReward(anchored=...)`; ``code``: `CodeReward(all_or_nothing=..., limits=
SandboxLimits(**limits), workers=...)`); a function gets them as keyword arguments. Unknown options fail when the
config is built, naming the judge and the options it takes.
"""

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping

# name -> "module:attribute", imported on first use (the code and reasoning-gym judges pull in optional parts)
JUDGES = {
    "exact": "trl_shaped.rewards.answers:exact_answer_reward",
    "math": "trl_shaped.rewards.answers:math_answer_reward",
    "code": "trl_shaped.rewards.code:code_reward",
    "reasoning_gym": "trl_shaped.rewards.reasoning_gym:reasoning_gym_reward",
}
# the class whose instance is the judge built with `judge_args`
JUDGE_CLASSES = {
    "math": "trl_shaped.rewards.answers:MathAnswerReward",
    "code": "trl_shaped.rewards.code:CodeReward",
}
# the functions' own names, accepted as the judge's name
ALIASES = {target.rsplit(":", 1)[1]: name for name, target in JUDGES.items()}
DEFAULT_JUDGE = "exact"
# what TRL passes to every reward function besides the dataset's columns: never a judge option
TRAINER_ARGUMENTS = ("completions", "prompts", "completion_ids", "trainer_state", "log_extra", "log_metric")


def _usage(name) -> str:
    return (
        f"judge must be one of {sorted(JUDGES)}, a function name ({sorted(ALIASES)}), a reward function of "
        f"trl.rewards (accuracy_reward, ...) or a dotted import path, got {name!r}"
    )


def _import(target: str, name: str):
    module_path, attr = target.split(":", 1) if ":" in target else target.rsplit(".", 1)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # lets a recipe name a rewards file beside it
    try:
        return getattr(importlib.import_module(module_path), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"judge {name!r} does not import ({error}); {_usage(name)}") from None


def _trl_reward(name: str):
    try:
        import trl.rewards
    except ImportError:
        return None
    func = getattr(trl.rewards, name, None)
    return func if callable(func) and not inspect.isclass(func) else None


def canonical_judge_name(name: str) -> str:
    """The registered name of `name` when it is one or a function's name (``math_answer_reward`` -> ``math``), else
    `name` itself (a TRL reward or a dotted path)."""
    name = name.strip()
    return ALIASES.get(name, name)


def check_judge_args(judge_args, what: str = "judge_args") -> dict:
    """`judge_args` as a dict: None -> {}, a mapping as is, a JSON / YAML string (the command line's form) parsed.

    Raises:
        ValueError: naming `what` when it is not a mapping with string keys.
    """
    if judge_args is None or judge_args == "":
        return {}
    if isinstance(judge_args, str):
        import yaml

        try:
            judge_args = yaml.safe_load(judge_args)
        except yaml.YAMLError as error:
            raise ValueError(f"{what} must be a mapping (JSON or YAML), got {judge_args!r}: {error}") from None
        if judge_args is None:
            return {}
    if not isinstance(judge_args, Mapping) or not all(isinstance(k, str) for k in judge_args):
        raise ValueError(f"{what} must be a mapping of option names to values, got {judge_args!r}")
    return dict(judge_args)


def _options(func) -> tuple[list[str], bool]:
    """The named options `func` (or a class's __init__) takes besides TRL's arguments, and whether they are unknown
    (no signature). A reward function's **kwargs swallow what TRL passes, so they do not count as options."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return [], True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in kinds and p.name not in TRAINER_ARGUMENTS], False


def _with_args(func, judge_args: dict, name: str):
    """A judge function with `judge_args` bound as keyword arguments (keeping its name: TRL logs rewards by it)."""
    options, open_ended = _options(func)
    unknown = [key for key in judge_args if key not in options]
    if unknown and not open_ended:
        raise ValueError(f"judge_args: judge {name!r} takes no option {unknown}; its options: {options or 'none'}")
    return functools.update_wrapper(functools.partial(func, **judge_args), func)


def _build_class(cls, judge_args: dict, name: str):
    from ..sandbox import SandboxLimits

    options, open_ended = _options(cls)
    unknown = [key for key in judge_args if key not in options]
    if unknown and not open_ended:
        raise ValueError(f"judge_args: judge {name!r} takes no option {unknown}; its options: {options}")
    kwargs = dict(judge_args)
    if "limits" in options and isinstance(kwargs.get("limits"), Mapping):  # the sandbox limits of a recipe
        try:
            kwargs["limits"] = SandboxLimits(**kwargs["limits"])
        except TypeError as error:
            raise ValueError(f"judge_args: limits of judge {name!r}: {error}") from None
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"judge_args: judge {name!r}: {error}") from None


def get_judge(name: str, judge_args=None) -> Callable:
    """The reward function of judge `name`, built with `judge_args` when given.

    Args:
        name (`str`): ``exact``, ``math``, ``code``, ``reasoning_gym``, a function's name (``math_answer_reward``,
            ``exact_answer_reward``, ``code_reward``, ``reasoning_gym_reward``), a reward function of `trl.rewards`
            (``accuracy_reward``), or ``package.module.function`` / ``package.module:function`` (a module beside the
            working directory is found too).
        judge_args (`dict`, *optional*): the judge's options (see the module docstring), e.g. ``{"anchored": False}``
            for math or ``{"limits": {"wall_time_s": 2}, "all_or_nothing": True}`` for code.

    Raises:
        ValueError: naming the argument and the accepted names, for an unknown name, a path that does not import
            to a callable, or options the judge does not take.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(_usage(name))
    judge_args = check_judge_args(judge_args)
    key = canonical_judge_name(name)
    if key in JUDGES:
        if not judge_args:
            return _import(JUDGES[key], name)
        if key in JUDGE_CLASSES:
            return _build_class(_import(JUDGE_CLASSES[key], name), judge_args, name)
        return _with_args(_import(JUDGES[key], name), judge_args, name)
    func = _trl_reward(key) if "." not in key and ":" not in key else None
    if func is None:
        if "." not in key and ":" not in key:
            raise ValueError(_usage(name))
        func = _import(key, name)
    if inspect.isclass(func):  # a judge class at a dotted path: its instance is the judge
        return _build_class(func, judge_args, name)
    if not callable(func):
        raise ValueError(f"judge {name!r} is not callable: {type(func).__name__}")
    return _with_args(func, judge_args, name) if judge_args else func


def judge_name(judge) -> str:
    """The name a report gives `judge`: its `JUDGES` name when registered, else ``module.qualname``."""
    if isinstance(judge, str):
        return canonical_judge_name(judge)
    if isinstance(judge, functools.partial):
        judge = judge.func
    module = getattr(judge, "__module__", None) or type(judge).__module__
    qualname = getattr(judge, "__name__", None) or type(judge).__name__
    for name, target in JUDGES.items():
        if target == f"{module}:{qualname}":
            return name
    return f"{module}.{qualname}"
