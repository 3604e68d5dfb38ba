"""The built-in code task: one-line Python functions written from a specification with examples, judged by running
hidden tests in the sandbox.

A problem composes three integer operations, named in words and followed by two examples::

    # add 3, times 2, mod 5. f(1)=3, f(4)=4
    def f(x): x=x+3; x=x*2; return x%5

Many programs are right. A *worked* solution writes one statement per operation, in the order of the words
(``x=x+3; x=x*2; ...``, with ``x+=3`` or the last operation inside the ``return`` as stylistic variants); a *direct*
solution folds the operations into one expression with its constants computed (``return (x*2+6)%5``,
``return (2*x+6)%5``, ...). Both are correct, and the training corpus samples among them with skewed (not uniform)
weights, as word choices in general text are. The worked form copies the words one by one, which a tiny model learns
reliably; the direct form must do the arithmetic of the constants in its head (``times 9, sub 13, add 10`` is
``x*9-3``), which a tiny model gets wrong far more often (benchmarks/RESULTS.md: 8-12% against 82-92%). So, as in the
arithmetic task, a stage-1 model that often writes the direct form leaves RL a real choice between strategies that
carries to unseen problems, and the hidden tests (asserts on inputs the prompt does not show) reward only programs
that compute the function, however they are written.

Datasets (deterministic given the seed), from three disjoint pools of problems: two problems are the same when
their functions agree on every input of `PROBE_INPUTS` (so ``add 2, add 3`` and ``add 5`` are one problem, and a
reworded specification is no new problem):

- ``sft``: prompt-completion rows for stage 1 (``prompt``, ``completion``, ``tests``), several sampled solutions per
  stage-1 problem;
- ``rl``: prompt-only rows with ``tests`` for GRPO, one per RL problem (none of them a stage-1 problem);
- ``test``: prompt-only rows with ``tests`` and one sampled ``completion`` (the held-out text of the diagnostics);
  none of them a stage-1 or RL problem.

``tests`` is a list of Python statements (``assert f(7) == 20``), the MBPP ``test_list`` form that the ``code``
judge (`trl_shaped.rewards.code_reward`) runs after the completion, in the sandbox.
"""

import dataclasses
import itertools
import random
from dataclasses import dataclass
from typing import ClassVar

from datasets import Dataset, DatasetDict

from .base import draw_distinct_problems

# name -> (word, statement operator, expression operator, smallest and largest constant)
OPERATIONS = {
    "add": ("add", "+", "+", 1, 19),
    "sub": ("sub", "-", "-", 1, 19),
    "mul": ("times", "*", "*", 2, 9),
    "mod": ("mod", "%", "%", 3, 9),
}
# Skewed weights of the operations of a problem and of the stylistic choices of a solution.
OPERATION_WEIGHTS = {"add": 0.3, "sub": 0.3, "mul": 0.3, "mod": 0.1}
AUGMENTED_PROB = 0.3  # a worked step written ``x+=3`` rather than ``x=x+3``
INLINE_RETURN_PROB = 0.5  # a worked solution whose last operation is in the return (``return x%5``)
COMMUTED_PROB = 0.3  # a direct solution that writes ``6+E`` / ``2*x`` rather than ``E+6`` / ``x*2``
# Inputs on which two problems are compared (the dedup and disjointness key) and from which examples and hidden tests
# are drawn.
PROBE_INPUTS = tuple(range(-20, 21))
EXAMPLE_INPUTS = tuple(range(0, 20))
HEADER = "def f(x): "


@dataclass(frozen=True)
class CodeTask:
    """Generator of one-line function-writing problems with several correct programs each.

    Args:
        min_ops (`int`): fewest operations in a problem (at least 1).
        max_ops (`int`): most operations in a problem (at most 4: the budgets below grow with it).
        num_examples (`int`): input/output examples shown in the prompt.
        num_tests (`int`): hidden tests per problem (asserts on inputs the examples do not show).
        direct_prob (`float`): probability that a sampled solution is a single expression (the direct strategy)
            rather than one statement per operation (worked).
        solutions_per_problem (`int`): sampled solutions per stage-1 problem in the ``sft`` split.

    A `trl_shaped.tasks.StudyTask` judged by running the hidden tests (judge ``code``).
    """

    name: ClassVar[str] = "code"
    judge: ClassVar[str] = "code"
    # The built-in study's sizes on this task, over `trl_shaped.study.config.BUILTIN_PROFILES` (see
    # `trl_shaped.study.config.task_profile`); measured in benchmarks/RESULTS.md (code task).
    profiles: ClassVar[dict] = {"full": {"sft_steps": 1000}, "quick": {}}

    min_ops: int = 3
    max_ops: int = 3
    num_examples: int = 2
    num_tests: int = 3
    direct_prob: float = 0.5
    solutions_per_problem: int = 4

    def __post_init__(self):
        if not 1 <= self.min_ops <= 4:
            raise ValueError(f"min_ops must be in [1, 4], got {self.min_ops}")
        if not self.min_ops <= self.max_ops <= 4:
            raise ValueError(f"max_ops must be in [min_ops ({self.min_ops}), 4], got {self.max_ops}")
        if not 1 <= self.num_examples <= 4:
            raise ValueError(f"num_examples must be in [1, 4], got {self.num_examples}")
        if not 1 <= self.num_tests <= 10:
            raise ValueError(f"num_tests must be in [1, 10], got {self.num_tests}")
        if not 0.0 <= self.direct_prob <= 1.0:
            raise ValueError(f"direct_prob must be in [0, 1], got {self.direct_prob}")
        if self.solutions_per_problem < 1:
            raise ValueError(f"solutions_per_problem must be >= 1, got {self.solutions_per_problem}")

    @property
    def max_completion_tokens(self) -> int:
        """Generation budget: the longest solution of the task (a worked one with the widest constants, one
        character per token at worst) plus the eos token and room for a few mistakes."""
        return len(longest_solution(self.max_ops)) + 8

    @property
    def max_sequence_tokens(self) -> int:
        """Longest prompt + completion of stage 1 (the tiny model's context), in characters (a token covers at least
        one)."""
        widest = [("sub", 19)] * self.max_ops
        prompt = format_prompt(widest, [(-10, -1000)] * self.num_examples)
        return len(prompt) + self.max_completion_tokens

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
            lambda: self.sample_ops(rng),
            problem_key,
            {"num_train": num_train, "num_rl": num_rl, "num_test": num_test},
            widen="max_ops",
            build=lambda ops: self.sample_problem(ops, rng),
        )
        train, rl, test = problems[:num_train], problems[num_train : num_train + num_rl], problems[num_train + num_rl :]
        sft_rows = [
            {"prompt": p["prompt"], "completion": self.sample_solution(p["ops"], rng), "tests": p["tests"]}
            for p in train
            for _ in range(self.solutions_per_problem)
        ]
        rng.shuffle(sft_rows)
        rl_rows = [{"prompt": p["prompt"], "tests": p["tests"]} for p in rl]
        test_rows = [
            {"prompt": p["prompt"], "tests": p["tests"], "completion": self.sample_solution(p["ops"], rng)}
            for p in test
        ]
        return DatasetDict(
            sft=Dataset.from_list(sft_rows), rl=Dataset.from_list(rl_rows), test=Dataset.from_list(test_rows)
        )

    def settings(self) -> dict:
        return dataclasses.asdict(self)

    def alphabet(self) -> str:
        return task_alphabet()

    def solution_strategy(self, completion: str) -> str:
        return solution_strategy(completion)

    def sample_ops(self, rng: random.Random) -> tuple[tuple[str, int], ...]:
        """The operations of one problem: (name, constant) pairs applied in order."""
        names = rng.choices(
            list(OPERATION_WEIGHTS), weights=list(OPERATION_WEIGHTS.values()), k=rng.randint(self.min_ops, self.max_ops)
        )
        return tuple((name, rng.randint(*OPERATIONS[name][3:])) for name in names)

    def sample_problem(self, ops, rng: random.Random) -> dict:
        """The prompt (words and `num_examples` examples) and the hidden tests (`num_tests` other inputs) of `ops`."""
        inputs = rng.sample(EXAMPLE_INPUTS, self.num_examples + self.num_tests)
        examples = [(x, apply_ops(ops, x)) for x in inputs[: self.num_examples]]
        tests = [f"assert f({x}) == {apply_ops(ops, x)}" for x in inputs[self.num_examples :]]
        return {"ops": ops, "prompt": format_prompt(ops, examples), "tests": tests}

    def sample_solution(self, ops, rng: random.Random) -> str:
        """One correct program for `ops`: direct with probability `direct_prob`, else worked (module docstring)."""
        if rng.random() < self.direct_prob:
            return direct_solution(ops, rng)
        return worked_solution(
            ops, augmented=[rng.random() < AUGMENTED_PROB for _ in ops], inline_return=rng.random() < INLINE_RETURN_PROB
        )


def apply_ops(ops, x: int) -> int:
    """The value of the problem's function at `x` (Python's integer semantics, as the judged program has)."""
    for name, k in ops:
        x = {"add": x + k, "sub": x - k, "mul": x * k, "mod": x % k}[name]
    return x


def problem_key(ops) -> tuple[int, ...]:
    """What identifies a problem: its function's values on `PROBE_INPUTS` (sees through rewordings)."""
    return tuple(apply_ops(ops, x) for x in PROBE_INPUTS)


def format_prompt(ops, examples) -> str:
    """``[("add", 3), ("mul", 2)], [(1, 8)]`` -> ``"# add 3, times 2. f(1)=8\\n"``."""
    words = ", ".join(f"{OPERATIONS[name][0]} {k}" for name, k in ops)
    shown = ", ".join(f"f({x})={y}" for x, y in examples)
    return f"# {words}. {shown}\n"


def worked_solution(ops, augmented, inline_return: bool) -> str:
    """One statement per operation (``x=x+3`` or, where `augmented`, ``x+=3``), then ``return x``; with
    `inline_return`, the last operation is written in the return (``return x%5``)."""
    steps = [f"x{op}={k}" if aug else f"x=x{op}{k}" for (name, k), aug in zip(ops, augmented, strict=True)
             for op in [OPERATIONS[name][1]]]  # fmt: skip
    if inline_return:
        name, k = ops[-1]
        return HEADER + "".join(s + "; " for s in steps[:-1]) + f"return x{OPERATIONS[name][1]}{k}"
    return HEADER + "; ".join(steps) + "; return x"


def direct_solution(ops, rng: random.Random | None = None) -> str:
    """The whole composition as one expression with its constants folded: each run of additions and products becomes
    ``x*a+b`` (``add 3, times 2`` -> ``x*2+6``), closed by a modulo (``(x*2+6)%5``). With `rng`, each product and sum
    is written either way round (``2*x``, ``6+x*2``) with probability `COMMUTED_PROB`."""

    def swap() -> bool:
        return rng is not None and rng.random() < COMMUTED_PROB

    expr, level, a, b = "x", 3, 1, 0  # the expression so far is a*expr+b; level: 3 atom, 2 product/modulo, 1 sum
    for name, k in [*ops, ("end", 0)]:
        if name == "add":
            b += k
        elif name == "sub":
            b -= k
        elif name == "mul":
            a, b = a * k, b * k
        else:  # a modulo, or the end: write out a*expr+b
            if a != 1:
                expr = (f"{a}*{expr}" if level == 3 else f"{a}*({expr})") if swap() else f"{expr}*{a}"
                level = 2
            if b:
                expr = f"{b}+{expr}" if b > 0 and swap() else f"{expr}{b:+d}"
                level = 1
            if name == "mod":
                expr, level = (f"{expr}%{k}" if level >= 2 else f"({expr})%{k}"), 2
            a, b = 1, 0
    return HEADER + f"return {expr}"


def longest_solution(max_ops: int) -> str:
    """The longest program the task writes with at most `max_ops` operations: over every sequence of operations with
    their widest constants, the worked form with no step augmented and the direct form (its commuted variants add at
    most two parentheses)."""
    widest = {name: OPERATIONS[name][4] for name in OPERATIONS}
    candidates = []
    for names in itertools.product(OPERATIONS, repeat=max_ops):
        ops = [(name, widest[name]) for name in names]
        candidates += [worked_solution(ops, [False] * max_ops, inline_return=False), direct_solution(ops) + "()"]
    return max(candidates, key=len)


def task_alphabet() -> str:
    """Every character the task writes."""
    words = "".join(OPERATIONS[name][0] for name in OPERATIONS) + HEADER + "return"
    return "".join(sorted(set(words + "0123456789+-*%=();,.# \n")))


def solution_strategy(completion: str) -> str:
    """``"worked"`` for one statement per operation (a ``;`` after the header), ``"direct"`` for a single
    ``return <expression>``, else ``"other"``."""
    text = completion.strip()
    if not text.startswith(HEADER.strip()):
        return "other"
    body = text[len(HEADER.strip()) :].strip()
    if body.startswith("return ") and ";" not in body:
        return "direct"
    return "worked" if ";" in body and "return" in body else "other"
