"""`StudyTask`: what the study, its built-in cell and its fingerprint need of a task, and `get_task` to name one.

A task generates three disjoint pools of problems from a seed, as in the paper's pipeline where RL does not see the
pre-training data and the test sees neither:

- ``sft``: prompt-completion rows for stage 1 (``prompt``, ``completion``, and the judge's columns);
- ``rl``: prompt-only rows with the judge's columns, for GRPO (none of them a stage-1 problem);
- ``test``: prompt-only rows with the judge's columns and one reference ``completion`` (the held-out text on which
  the stage-1 distribution is measured); none of them a stage-1 or RL problem.

The task names its judge (`trl_shaped.rewards.judges`): the same function is GRPO's reward and the evaluation's
correctness. `settings()` is everything that changes the generated data: the study's fingerprint records it, so a
changed setting recomputes the cells that used it, and the report prints it. A task may also carry `profiles`, the
built-in study's sizes on it (`trl_shaped.study.config.task_profile`).
"""

import importlib
from typing import Protocol, runtime_checkable

from datasets import DatasetDict

# name -> "module:class"; a name "<task>:<argument>" (reasoning_gym:knights_knaves) passes the argument to the class
TASKS = {
    "arithmetic": "trl_shaped.tasks.arithmetic:ArithmeticTask",
    "code": "trl_shaped.tasks.code:CodeTask",
    "fill_sum": "trl_shaped.tasks.fill_sum:FillSumTask",
    "reasoning_gym": "trl_shaped.tasks.reasoning_gym:ReasoningGymTask",
}


@runtime_checkable
class StudyTask(Protocol):
    """The interface of a study task (see the module docstring).

    Attributes:
        name (`str`): the task's name as `get_task` takes it (``arithmetic``, ``code``, ``reasoning_gym:<name>``).
        judge (`str`): the judge of its answers, a name of `trl_shaped.rewards.JUDGES` or a dotted path.
        max_completion_tokens (`int`): generation budget of GRPO and the evaluations (its longest reference
            solution, with room for a few mistakes).
        max_sequence_tokens (`int`): longest prompt + completion of stage 1 (the tiny model's context).
    """

    name: str
    judge: str
    max_completion_tokens: int
    max_sequence_tokens: int

    def build_datasets(self, *, num_train: int, num_rl: int, num_test: int, seed: int) -> DatasetDict:
        """The ``sft``, ``rl`` and ``test`` splits (module docstring), deterministic given `seed`."""
        ...

    def settings(self) -> dict:
        """Everything that changes the generated data, as JSON values (recorded in the fingerprint and report)."""
        ...

    def alphabet(self) -> str | None:
        """Every character the task writes (for a one-id-per-character tokenizer), or None when unbounded."""
        ...

    def solution_strategy(self, completion: str) -> str:
        """A short label of how `completion` goes about the problem (the report counts them), else ``"other"``."""
        ...


def get_task(name: str, **settings) -> StudyTask:
    """The task called `name`, built with `settings` (its constructor's keyword arguments).

    Args:
        name (`str`): a key of `TASKS`, or ``<key>:<argument>`` for a task that takes one (``reasoning_gym:<dataset>``).
        **settings: the task's own settings (e.g. a reasoning-gym task's difficulty).

    Raises:
        ValueError: naming `name` and the known tasks, or the setting the task refuses.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"task must be one of {sorted(TASKS)} (or reasoning_gym:<name>), got {name!r}")
    key, _, argument = name.strip().partition(":")
    if key not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)} (or reasoning_gym:<name>), got {name!r}")
    module_path, class_name = TASKS[key].split(":")
    cls = getattr(importlib.import_module(module_path), class_name)
    if argument:
        settings = {**settings, cls.ARGUMENT: argument}
    try:
        return cls(**settings)
    except TypeError as error:  # an unknown setting
        raise ValueError(f"task {name!r}: {error}") from None


def draw_distinct_problems(draw, key, sizes: dict[str, int], *, widen: str, build=None) -> list:
    """`sum(sizes)` problems with distinct keys, the pool every split is cut from.

    Args:
        draw: a call that proposes one problem (from the task's random generator).
        key: `key(problem)` identifies a problem up to what the model would see as the same one.
        sizes (`dict[str, int]`): the split sizes by argument name (num_train, num_rl, num_test), each at least 1.
        widen (`str`): the task settings that make more problems, named in the error when there are too few.
        build (*optional*): turns a new proposal into the problem; called only for new ones, right after the draw,
            so the generator's draws stay in the order a task without it would make them.

    Raises:
        ValueError: a size below 1, or fewer distinct problems than asked (given up after 50 draws per problem
            rather than looping forever).
    """
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    total = sum(sizes.values())
    problems, seen = [], set()
    for _ in range(50 * total):
        candidate = draw()
        problem_key = key(candidate)
        if problem_key not in seen:
            seen.add(problem_key)
            problems.append(build(candidate) if build else candidate)
            if len(problems) == total:
                return problems
    raise ValueError(
        f"the task has fewer than {' + '.join(sizes)} = {total} distinct problems; lower them or widen the task "
        f"({widen})"
    )


def check_disjoint(data: DatasetDict, key) -> None:
    """Raise a ValueError when a problem of one split also appears in another; `key(row)` is what identifies a
    problem (e.g. its prompt, or its terms up to their order)."""
    seen = {}
    for split in ("sft", "rl", "test"):
        for row in data[split]:
            problem = key(row)
            first = seen.setdefault(problem, split)
            if first != split:
                raise ValueError(f"problem {problem!r} is in both the {first} and {split} splits")
