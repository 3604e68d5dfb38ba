"""The built-in fill-sum task: fill the blanks of a sum, ``17+?+?+?=43``, with parts of at most `max_part`.

Unlike the arithmetic and code tasks, whose completions are mostly determined by the problem (a few branching points
in an otherwise fixed text), nearly every choice here is free: any parts in ``1..max_part`` that reach the target are
right, and the training corpus draws each free part from a skewed (Zipf) distribution, small parts more often, as
words are in natural text. That is the structure the shaping presets of stage 1 act on (many right continuations
with skewed weights at almost every step), so that their held-out entropies can separate; the sum constraint makes
every answer checkable and the last part a computation (the target minus the running total), which a tiny model gets
wrong often enough that RL has room and a good share of the problems stays out of its reach (measured with the full
profile, 3 to 6 blanks, ce over 3 seeds: held-out Avg@16 22% after stage 1, 28% after GRPO; Pass@8 of 16 80% and 81%).

A *worked* solution adds the parts one at a time, writing the running total; a *direct* one writes the whole equation:

    prompt      17+?+?+?=43
    worked      17+9=26 26+8=34 34+9=43
    direct      17+9+8+9=43

Each free part is drawn from the parts that still leave the rest reachable (each later part in ``1..max_part``),
with weights ``1 / part ** part_skew`` renormalised over them; the last part is what remains. Both forms are right,
and a *direct* solution (the whole equation at once, the running totals in the head) is right less often for a tiny
model (17-20% of its samples against 30-34% worked, ce stage 1, up to 5 blanks), so, as in the other tasks, RL has a real choice of
strategy to learn (it drops the direct share from about 40% to 8-14%) as well as the choice of parts.

Datasets (deterministic given the seed), from three disjoint pools of problems (a problem is its start, number of
blanks and target):

- ``sft``: prompt-completion rows for stage 1 (``prompt``, ``completion`` and the judge's columns ``start``,
  ``blanks``, ``target``, ``max_part``), several sampled solutions per stage-1 problem;
- ``rl``: prompt-only rows with the judge's columns for GRPO, one per RL problem (none of them a stage-1 problem);
- ``test``: prompt-only rows with the judge's columns and one sampled ``completion`` (the held-out text on which the
  stage-1 distribution is measured); none of them a stage-1 or RL problem.

The judge (`fill_sum_reward`, named by its import path) gives 1.0 to a completion whose equations are all true, chain
from the start (each after the first begins with the previous total), add exactly ``blanks`` parts, each in
``1..max_part``, and end at the target; else 0.0.
"""

import dataclasses
import math
import random
import re
from dataclasses import dataclass
from typing import ClassVar

from datasets import Dataset, DatasetDict

from ..rewards.answers import completion_text
from .base import draw_distinct_problems

# The built-in study's cell on this task (see `trl_shaped.study.config.task_profile`): stage 1 long enough that a
# tiny model works sums out (2,000 steps: ce Avg@16 26% on held-out problems; 1,000 steps gave 13%), GRPO long enough
# to move it, 300 test problems x 16 samples (Pass@8 is the paper's k = n/2). The quick profile is the same cell on 2
# seeds (ce, precision, diversity: 6 cells of about 155 s, under 10 minutes on 2 idle cores): enough to see the shape
# (the order of the stage-1 entropy means, ce's Pass@8 after RL), not to resolve it. The full study sizes its seeds
# from a pilot in recipes/study_claim.yaml.
FULL_PROFILE = {
    "num_seeds": 3,
    "num_train_problems": 2000,
    "num_rl_problems": 600,
    "num_test_problems": 300,
    "hidden_size": 128,
    "sft_steps": 2000,
    "grpo_steps": 100,
    "eval_num_samples": 16,
}
# One equation of a solution: positive ASCII integers without leading zeros (at most 4 digits: longer is degenerate
# output).
EQUATION = re.compile(r"^([1-9][0-9]{0,3}(?:\+[1-9][0-9]{0,3})+)=([1-9][0-9]{0,3})$")


@dataclass(frozen=True)
class FillSumTask:
    """Generator of fill-the-blanks sums with many right solutions each, drawn with skewed weights.

    Args:
        min_blanks (`int`): fewest blanks in a problem (at least 3, so that the worked and direct forms differ).
        max_blanks (`int`): most blanks in a problem (at most 6).
        max_part (`int`): a part is in ``1..max_part`` (2 to 19).
        max_start (`int`): the start is drawn from ``1..max_start``.
        part_skew (`float`): a free part ``v`` is drawn with weight ``1 / v ** part_skew`` among the parts that keep
            the rest reachable: 0 is uniform, larger values favour small parts more.
        direct_prob (`float`): probability that a sampled solution is the direct form (the whole equation at once)
            rather than the worked chain of running totals.
        solutions_per_problem (`int`): sampled solutions per stage-1 problem in the ``sft`` split.

    A `trl_shaped.tasks.StudyTask` judged by `fill_sum_reward` (judge ``trl_shaped.tasks.fill_sum:fill_sum_reward``).
    """

    name: ClassVar[str] = "fill_sum"
    judge: ClassVar[str] = "trl_shaped.tasks.fill_sum:fill_sum_reward"
    # The built-in study's sizes on this task (`FULL_PROFILE`), over `trl_shaped.study.config.BUILTIN_PROFILES`.
    profiles: ClassVar[dict] = {"full": FULL_PROFILE, "quick": {**FULL_PROFILE, "num_seeds": 2}}

    min_blanks: int = 3
    # 6, not 5: with up to 5 blanks ce's Pass@8 after RL was 87% (3 seeds), above the 40-85% where a better prior
    # can show; up to 6 gave 81% [78, 85] (benchmarks/RESULTS.md, fill the sum).
    max_blanks: int = 6
    max_part: int = 9
    max_start: int = 50
    part_skew: float = 1.0
    direct_prob: float = 0.5
    solutions_per_problem: int = 4

    def __post_init__(self):
        if not 3 <= self.min_blanks <= 6:
            raise ValueError(f"min_blanks must be in [3, 6], got {self.min_blanks}")
        if not self.min_blanks <= self.max_blanks <= 6:
            raise ValueError(f"max_blanks must be in [min_blanks ({self.min_blanks}), 6], got {self.max_blanks}")
        if not 2 <= self.max_part <= 19:
            raise ValueError(f"max_part must be in [2, 19], got {self.max_part}")
        if not 1 <= self.max_start <= 999:
            raise ValueError(f"max_start must be in [1, 999], got {self.max_start}")
        if not (isinstance(self.part_skew, (int, float)) and 0.0 <= self.part_skew <= 5.0):
            raise ValueError(f"part_skew must be in [0, 5], got {self.part_skew}")
        if not 0.0 <= self.direct_prob <= 1.0:
            raise ValueError(f"direct_prob must be in [0, 1], got {self.direct_prob}")
        if self.solutions_per_problem < 1:
            raise ValueError(f"solutions_per_problem must be >= 1, got {self.solutions_per_problem}")

    @property
    def max_completion_tokens(self) -> int:
        """Generation budget: the longest worked solution (one character per token at worst) plus the eos token and
        room for a few mistakes."""
        return len(worked_solution(self.max_start, [self.max_part] * self.max_blanks)) + 8

    @property
    def max_sequence_tokens(self) -> int:
        """Longest prompt + completion of stage 1 (the tiny model's context), in characters."""
        widest = format_prompt(self.max_start, self.max_blanks, self.max_start + self.max_blanks * self.max_part)
        return len(widest) + self.max_completion_tokens

    def build_datasets(self, *, num_train: int, num_rl: int, num_test: int, seed: int) -> DatasetDict:
        """The ``sft``, ``rl`` and ``test`` splits described in the module docstring.

        Args:
            num_train (`int`): distinct stage-1 problems (the ``sft`` split).
            num_rl (`int`): distinct RL problems, none of which is a stage-1 problem.
            num_test (`int`): distinct held-out problems, none of which is a stage-1 or RL problem.
            seed (`int`): seed of everything random here.
        """
        rng = random.Random(seed)
        problems = draw_distinct_problems(
            lambda: self.sample_problem(rng),
            lambda problem: problem,
            {"num_train": num_train, "num_rl": num_rl, "num_test": num_test},
            widen="max_start, max_blanks, max_part",
        )
        train, rl, test = problems[:num_train], problems[num_train : num_train + num_rl], problems[num_train + num_rl :]
        sft_rows = [
            {**self.row(problem), "completion": self.sample_solution(problem, rng)}
            for problem in train
            for _ in range(self.solutions_per_problem)
        ]
        rng.shuffle(sft_rows)
        rl_rows = [self.row(problem) for problem in rl]
        test_rows = [{**self.row(problem), "completion": self.sample_solution(problem, rng)} for problem in test]
        return DatasetDict(
            sft=Dataset.from_list(sft_rows), rl=Dataset.from_list(rl_rows), test=Dataset.from_list(test_rows)
        )

    def settings(self) -> dict:
        return dataclasses.asdict(self)

    def alphabet(self) -> str:
        return task_alphabet()

    def solution_strategy(self, completion: str) -> str:
        return solution_strategy(completion)

    def row(self, problem: tuple[int, int, int]) -> dict:
        """The prompt and the judge's columns of `problem` (start, blanks, target)."""
        start, blanks, target = problem
        return {
            "prompt": format_prompt(start, blanks, target),
            "start": start,
            "blanks": blanks,
            "target": target,
            "max_part": self.max_part,
        }

    def sample_problem(self, rng: random.Random) -> tuple[int, int, int]:
        """(start, blanks, target): the parts' sum is drawn uniformly from every reachable one (``blanks`` to
        ``blanks * max_part``)."""
        start = rng.randint(1, self.max_start)
        blanks = rng.randint(self.min_blanks, self.max_blanks)
        return start, blanks, start + rng.randint(blanks, blanks * self.max_part)

    def part_distribution(self, remaining: int, blanks_left: int) -> dict[int, float]:
        """The corpus's distribution of the next part, with `remaining` still to add in `blanks_left` parts: the
        parts that leave the rest reachable, weighted ``1 / part ** part_skew`` (the last part is what remains)."""
        low = max(1, remaining - (blanks_left - 1) * self.max_part)
        high = min(self.max_part, remaining - (blanks_left - 1))
        if low > high:
            raise ValueError(f"{remaining} cannot be split into {blanks_left} parts of 1..{self.max_part}")
        weights = {v: 1.0 / v**self.part_skew for v in range(low, high + 1)}
        total = sum(weights.values())
        return {v: w / total for v, w in weights.items()}

    def sample_parts(self, problem: tuple[int, int, int], rng: random.Random) -> list[int]:
        """The parts of one solution, drawn one at a time from `part_distribution`."""
        start, blanks, target = problem
        parts, remaining = [], target - start
        for left in range(blanks, 0, -1):
            distribution = self.part_distribution(remaining, left)
            part = rng.choices(list(distribution), weights=list(distribution.values()))[0]
            parts.append(part)
            remaining -= part
        return parts

    def sample_solution(self, problem: tuple[int, int, int], rng: random.Random) -> str:
        """One right solution of `problem`: direct with probability `direct_prob`, else worked (module docstring)."""
        direct = rng.random() < self.direct_prob
        parts = self.sample_parts(problem, rng)
        return direct_solution(problem[0], parts) if direct else worked_solution(problem[0], parts)

    def conditional_entropy(self, problem: tuple[int, int, int]) -> float:
        """Exact entropy (nats) of the corpus's parts given `problem`, summed over the blanks: the choice a solution
        has, before its form (worked or direct)."""
        start, blanks, target = problem

        def walk(remaining: int, left: int) -> float:
            if left == 1:
                return 0.0
            distribution = self.part_distribution(remaining, left)
            return sum(p * (-math.log(p) + walk(remaining - v, left - 1)) for v, p in distribution.items())

        return walk(target - start, blanks)


def format_prompt(start: int, blanks: int, target: int) -> str:
    """``(17, 3, 43)`` -> ``"17+?+?+?=43\\n"``."""
    return f"{start}" + "+?" * blanks + f"={target}\n"


def worked_solution(start: int, parts: list[int]) -> str:
    """``17, [9, 8, 9]`` -> ``"17+9=26 26+8=34 34+9=43"``: one equation per part, each from the running total."""
    steps, total = [], start
    for part in parts:
        steps.append(f"{total}+{part}={total + part}")
        total += part
    return " ".join(steps)


def direct_solution(start: int, parts: list[int]) -> str:
    """``17, [9, 8, 9]`` -> ``"17+9+8+9=43"``: the whole equation at once."""
    return "+".join(str(v) for v in [start, *parts]) + f"={start + sum(parts)}"


def parse_parts(text: str, start: int) -> list[int] | None:
    """The parts a completion adds to `start`, or None when it is not a chain of true equations from `start`.

    The completion is one or more equations ``a+b+...=c`` separated by whitespace; each must be true, the first must
    begin with `start` and each later one with the previous total.
    """
    equations = text.split()
    if not equations:
        return None
    parts, total = [], start
    for equation in equations:
        match = EQUATION.match(equation)
        if not match:
            return None
        terms = [int(t) for t in match[1].split("+")]
        if terms[0] != total or sum(terms) != int(match[2]):
            return None
        parts += terms[1:]
        total = int(match[2])
    return parts


def fill_sum_reward(completions, start, blanks, target, max_part, **kwargs) -> list[float]:
    """The fill-sum judge, a TRL reward function: 1.0 for a completion that fills the blanks rightly (module
    docstring), else 0.0.

    Args:
        completions: the completions (strings or conversational message lists).
        start, blanks, target, max_part: the problem's columns, one value per completion.
    """
    scores = []
    for completion, s, b, t, m in zip(completions, start, blanks, target, max_part, strict=True):
        parts = parse_parts(completion_text(completion), int(s))
        right = (
            parts is not None
            and len(parts) == int(b)
            and all(1 <= v <= int(m) for v in parts)
            and int(s) + sum(parts) == int(t)
        )
        scores.append(1.0 if right else 0.0)
    return scores


def task_alphabet() -> str:
    """Every character the task writes."""
    return "0123456789+=? \n"


def solution_strategy(completion: str) -> str:
    """``"worked"`` for a chain of two or more equations, ``"direct"`` for a single equation with three or more
    terms, else ``"other"``."""
    equations = completion.split()
    if not equations or not all(EQUATION.match(e) for e in equations):
        return "other"
    if len(equations) >= 2:
        return "worked"
    return "direct" if equations[0].count("+") >= 2 else "other"
