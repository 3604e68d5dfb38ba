"""The built-in arithmetic task: sums of signed integers, solved step by step, with several valid solution paths.

A problem is an expression such as ``7+5-3+8``. A worked solution adds the terms one at a time in some order
that keeps every running total non-negative, e.g. ``7+5=12 12-3=9 9+8=17 #### 17`` or ``8-3=5; 5+7=12; 12+5=17
#### 17``; a direct solution states only ``#### 17``. Every such solution is correct, and the training corpus
samples among them with skewed (not uniform) weights, as word choices in general text are: the next token of a
completion is genuinely uncertain at the branching points (which strategy, which term first, which separator),
while the arithmetic and the answer after ``####`` are not. That is where the shaping presets of stage 1 can change
the distribution without changing what is right, and where the exploration they leave matters to RL (the direct
strategy is valid but unreliable for a small model, so RL has a real choice to learn).

Datasets (all deterministic given the seed), drawn from three disjoint pools of problems, as in the paper's
pipeline where the RL data is not the pre-training data: RL must improve how the model solves problems it has not
memorised, and the test measures that on problems neither stage saw.

- ``sft``: prompt-completion rows for stage 1 (``prompt``, ``completion``, ``answer``), several sampled
  solutions per stage-1 problem;
- ``rl``: prompt-only rows with ``answer`` for GRPO, one per RL problem (none of them in ``sft``);
- ``test``: prompt-only rows with ``answer`` (and one sampled ``completion``, the held-out text on which the
  stage-1 distribution is measured); none of them in ``sft`` or ``rl``.
"""

import dataclasses
import itertools
import random
from dataclasses import dataclass
from typing import ClassVar

from datasets import Dataset, DatasetDict

from .base import draw_distinct_problems

# Step separators: stylistic branching that carries no information about the answer. Skewed, as word choices in
# general text are, so that a preset that concentrates or spreads probability mass has something to move.
SEPARATORS = (" ", ", ", "; ")
SEPARATOR_WEIGHTS = (0.6, 0.3, 0.1)
ANSWER_MARK = "####"


@dataclass(frozen=True)
class ArithmeticTask:
    """Generator of signed-sum problems with several worked solutions each.

    The defaults (four terms up to 9, half the solutions direct) suit a tiny model: each worked step is a one-digit
    addition it learns, while a direct answer to four terms is right far less often, so a stage-1 model that often
    answers directly leaves RL something to learn that carries to unseen problems (benchmarks/RESULTS.md).

    Args:
        min_terms (`int`): fewest terms in a problem (at least 2).
        max_terms (`int`): most terms in a problem.
        max_operand (`int`): operands are drawn from 1..max_operand.
        minus_prob (`float`): probability that a term after the first is subtracted.
        direct_prob (`float`): probability that a sampled solution states only the answer (``#### 9``), with no
            working. It is a valid but unreliable strategy for a small model, so the corpus offers RL a real choice
            between strategies as well as between orders.
        order_skew (`float`): the valid orders of a problem (left to right first) are drawn with weights
            ``1 / rank ** order_skew``: 0 is uniform, larger values favour the first orders.
        solutions_per_problem (`int`): sampled solutions per stage-1 problem in the ``sft`` split.

    A `trl_shaped.tasks.StudyTask`: judged by the exact number after ``####`` (judge ``exact``).
    """

    name: ClassVar[str] = "arithmetic"
    judge: ClassVar[str] = "exact"
    # Longest completion of the default task ("9+9=18; 18+9=27; 27+9=36 #### 36", 33 characters) plus the eos token
    # and room for a few mistakes (a BPE token covers at least one character).
    max_completion_tokens: ClassVar[int] = 40
    max_sequence_tokens: ClassVar[int] = 64

    min_terms: int = 4
    max_terms: int = 4
    max_operand: int = 9
    minus_prob: float = 0.4
    direct_prob: float = 0.5
    order_skew: float = 1.0
    solutions_per_problem: int = 4

    def __post_init__(self):
        if self.min_terms < 2:
            raise ValueError(f"min_terms must be >= 2, got {self.min_terms}")
        if self.max_terms < self.min_terms:
            raise ValueError(f"max_terms must be >= min_terms ({self.min_terms}), got {self.max_terms}")
        if self.max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {self.max_operand}")
        if not 0.0 <= self.minus_prob < 1.0:
            raise ValueError(f"minus_prob must be in [0, 1), got {self.minus_prob}")
        if not 0.0 <= self.direct_prob < 1.0:
            raise ValueError(f"direct_prob must be in [0, 1), got {self.direct_prob}")
        if not self.order_skew >= 0.0:
            raise ValueError(f"order_skew must be >= 0, got {self.order_skew}")
        if self.solutions_per_problem < 1:
            raise ValueError(f"solutions_per_problem must be >= 1, got {self.solutions_per_problem}")

    def build_datasets(self, *, num_train: int, num_rl: int, num_test: int, seed: int) -> DatasetDict:
        """The ``sft``, ``rl`` and ``test`` splits of this task (see the module-level `build_datasets`)."""
        return build_datasets(self, num_train=num_train, num_rl=num_rl, num_test=num_test, seed=seed)

    def settings(self) -> dict:
        return dataclasses.asdict(self)

    def alphabet(self) -> str:
        return task_alphabet()

    def solution_strategy(self, completion: str) -> str:
        return solution_strategy(completion)

    def sample_terms(self, rng: random.Random) -> tuple[int, ...]:
        """Signed terms of one problem (the first is positive), re-drawn until some order stays non-negative."""
        while True:
            n = rng.randint(self.min_terms, self.max_terms)
            terms = [rng.randint(1, self.max_operand)]
            for _ in range(n - 1):
                sign = -1 if rng.random() < self.minus_prob else 1
                terms.append(sign * rng.randint(1, self.max_operand))
            if solution_orders(terms):
                return tuple(terms)

    def sample_solution(self, terms, rng: random.Random) -> str:
        """One solution of ``terms``: the direct answer with probability ``direct_prob``, else a worked solution
        in a valid order drawn with weights ``1 / rank ** order_skew`` and a separator drawn by `SEPARATOR_WEIGHTS`."""
        if rng.random() < self.direct_prob:
            return format_solution(terms, None)
        orders = solution_orders(terms)
        weights = [1.0 / (rank + 1) ** self.order_skew for rank in range(len(orders))]
        order = rng.choices(orders, weights=weights)[0]
        return format_solution(terms, order, rng.choices(SEPARATORS, weights=SEPARATOR_WEIGHTS)[0])


def format_problem(terms) -> str:
    """``(7, 5, -3)`` -> ``"7+5-3"``."""
    text = str(terms[0])
    for t in terms[1:]:
        text += f"+{t}" if t > 0 else f"-{-t}"
    return text


def format_prompt(terms) -> str:
    return format_problem(terms) + "=?\n"


def solution_orders(terms) -> list[tuple[int, ...]]:
    """All orders of the term indices whose first term is positive and whose running totals stay >= 0, in
    lexicographic order of the indices (so left to right comes first when it is valid).

    Orders that only swap equal terms give the same text, so they are listed once.
    """
    seen, orders = set(), []
    for order in itertools.permutations(range(len(terms))):
        values = tuple(terms[i] for i in order)
        if values in seen or values[0] < 0:
            continue
        totals = itertools.accumulate(values)
        if all(total >= 0 for total in totals):
            seen.add(values)
            orders.append(order)
    return orders


def format_solution(terms, order, separator: str = " ") -> str:
    """The worked solution that adds ``terms`` in ``order``, ending with ``#### <answer>``; with ``order=None``,
    the direct answer ``#### <answer>`` alone."""
    if order is None:
        return f"{ANSWER_MARK} {sum(terms)}"
    values = [terms[i] for i in order]
    steps, total = [], values[0]
    for value in values[1:]:
        new_total = total + value
        op = "+" if value > 0 else "-"
        steps.append(f"{total}{op}{abs(value)}={new_total}")
        total = new_total
    return separator.join(steps) + f" {ANSWER_MARK} {total}"


def build_datasets(
    task: ArithmeticTask | None = None,
    *,
    num_train: int = 1000,
    num_rl: int = 500,
    num_test: int = 100,
    solutions_per_problem: int | None = None,
    seed: int = 0,
) -> DatasetDict:
    """Generate the ``sft``, ``rl`` and ``test`` splits described in the module docstring.

    Args:
        task (`ArithmeticTask`, *optional*): the problem generator; the default one when `None`.
        num_train (`int`): distinct stage-1 problems (the ``sft`` split).
        num_rl (`int`): distinct RL problems, none of which is a stage-1 problem.
        num_test (`int`): distinct held-out problems, none of which is a stage-1 or RL problem.
        solutions_per_problem (`int`, *optional*): sampled solutions per stage-1 problem in the ``sft`` split
            (default: the task's).
        seed (`int`): seed of everything random here.
    """
    task = task or ArithmeticTask()
    if solutions_per_problem is None:
        solutions_per_problem = task.solutions_per_problem
    if solutions_per_problem < 1:
        raise ValueError(f"solutions_per_problem must be >= 1, got {solutions_per_problem}")
    rng = random.Random(seed)
    # Distinct problems up to the order of their terms (a worked solution of 7+5-3 adds 5+7, so 5+7-3 is the same
    # problem to the model).
    problems = draw_distinct_problems(
        lambda: task.sample_terms(rng),
        lambda terms: tuple(sorted(terms)),
        {"num_train": num_train, "num_rl": num_rl, "num_test": num_test},
        widen="max_operand, max_terms",
    )
    train, rl, test = problems[:num_train], problems[num_train : num_train + num_rl], problems[num_train + num_rl :]

    sft_rows = []
    for terms in train:
        answer = str(sum(terms))
        for _ in range(solutions_per_problem):
            sft_rows.append(
                {"prompt": format_prompt(terms), "completion": task.sample_solution(terms, rng), "answer": answer}
            )
    rng.shuffle(sft_rows)
    rl_rows = [{"prompt": format_prompt(t), "answer": str(sum(t))} for t in rl]
    test_rows = [
        {"prompt": format_prompt(t), "answer": str(sum(t)), "completion": task.sample_solution(t, rng)} for t in test
    ]
    return DatasetDict(
        sft=Dataset.from_list(sft_rows), rl=Dataset.from_list(rl_rows), test=Dataset.from_list(test_rows)
    )


def task_alphabet() -> str:
    """Every character the task writes (a subset of ``trl_shaped.tiny.DEFAULT_ALPHABET``)."""
    return "0123456789+-=?#,; \n"


def solution_strategy(completion: str) -> str:
    """``"direct"`` for a bare ``#### <answer>``, ``"worked"`` when steps come before ``####``, else ``"other"``."""
    head, mark, _ = completion.strip().partition(ANSWER_MARK)
    if not mark:
        return "other"
    return "worked" if head.strip() else "direct"
