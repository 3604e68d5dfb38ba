"""The reasoning-gym task: any of reasoning-gym's procedurally generated puzzles as a study task (judge
``reasoning_gym``, the puzzle's own verifier).

``get_task("reasoning_gym:knights_knaves")`` names the puzzle; ``get_task("reasoning_gym")`` runs the default,
`DEFAULT_DATASET`: propositional logic, where a few premises over two to four variables are given and any conclusion
they entail that is not a bare variable or a tautology is right (the verifier checks entailment by truth table), so a
problem has many right answers, as in the arithmetic task's many worked solutions, and the verifier gives partial
credit (0.25 for a trivial conclusion, 0.05 for a wrong one) that GRPO sees and the evaluation does not count.
Its settings pass through: ``config`` is the puzzle's own configuration (its difficulty: ``{"n_people": 3}`` for
knights_knaves, ``{"max_vars": 3}`` for propositional_logic), so ``trl-shaped demo --task
reasoning_gym:knights_knaves --task_args '{"config": {"n_people": 3}, "max_sequence_tokens": 256}'``.

Problems come from ``reasoning_gym.create_dataset(dataset, seed=seed, **config)``, read in index order and
de-duplicated by prompt: the first ``num_train`` distinct ones are the ``sft`` split, the next ``num_rl`` the ``rl``
split and the next ``num_test`` the ``test`` split, so the splits are disjoint and the same for the same seed.

Each row has ``prompt``, ``answer`` (the reference answer) and ``reasoning_gym`` (the entry as JSON, what the judge
scores against); ``sft`` and ``test`` rows also have the reference ``completion`` ``#### <answer>`` (the answer mark
of the project's other tasks; the judge also reads ``<answer>...</answer>`` tags and, failing both, the last line:
`trl_shaped.rewards.reasoning_gym`). A puzzle whose entries carry no answer (propositional logic, whose right answers
are many) uses the example answer of its metadata.

Compact prompts: reasoning-gym's questions are English texts that repeat the same instructions in every entry,
which a tiny model on a CPU pays for in every sequence. With ``compact=True`` (the default) the prompt keeps only
the question's lines that vary: a line found in every question of a fixed probe sample of the puzzle (same
configuration) is instruction boilerplate and is dropped, as are blank lines. A propositional-logic question of 17
lines (what the task is, the notation of the connectives, "Given:", the premises, "What can we conclude from the
above statements?") becomes its premises alone: ``1. (P ∨ Q)\n.2. ¬P\n`` (the stray full stops are
reasoning-gym's). The verifier scores the answer against the full entry, which the ``reasoning_gym`` column keeps; a
puzzle whose question is one paragraph (knights_knaves) is left whole. ``compact=False`` keeps every question whole.
"""

import importlib.metadata
import json
from dataclasses import dataclass
from typing import ClassVar

from datasets import Dataset, DatasetDict

from ..rewards.reasoning_gym import extract_reasoning_gym_answer, import_reasoning_gym, reasoning_gym_reward

DEFAULT_DATASET = "propositional_logic"
# A puzzle's configuration when none is given: reasoning-gym's own, except where noted. Propositional logic with
# reasoning-gym's 2-4 premises is often inconsistent (anything follows), so that a random well-formed conclusion is
# right about half the time; with 1-2 premises a random conclusion is right a quarter of the time (measured on 3000
# random candidates, benchmarks/RESULTS.md), which leaves a tiny model something to learn.
DEFAULT_CONFIGS = {"propositional_logic": {"min_statements": 1, "max_statements": 2}}
ANSWER_MARK = "####"
# Questions of the probe sample that decides which lines are boilerplate (from a fixed seed, so that the prompt form
# depends on the puzzle and its configuration only).
PROBE_SIZE = 64
PROBE_SEED = 1234
# Entries read per requested problem before giving up on finding enough distinct ones.
DRAWS_PER_PROBLEM = 20
# Rejected reference answers with none accepted before a puzzle is refused (its entries do not survive JSON).
REJECTS_BEFORE_REFUSAL = 16

# The built-in study's sizes on the default puzzle, by profile (`StudyConfig` fills the fields left `None` from
# them): measured in benchmarks/RESULTS.md (logic task).
PROFILES = {
    "full": {
        "num_seeds": 3,
        "num_train_problems": 2000,
        "num_rl_problems": 600,
        "num_test_problems": 200,
        "hidden_size": 128,
        "sft_steps": 300,
        "grpo_steps": 40,
        "eval_num_samples": 8,
    },
    "quick": {
        "num_seeds": 2,
        "num_train_problems": 400,
        "num_rl_problems": 200,
        "num_test_problems": 50,
        "hidden_size": 64,
        "sft_steps": 150,
        "grpo_steps": 10,
        "eval_num_samples": 8,
    },
}


def _json_value(value):
    """`value` as JSON can hold it (sets as sorted lists, tuples as lists), for the ``reasoning_gym`` column."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_json_value(v) for v in value), key=repr)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


@dataclass(frozen=True)
class ReasoningGymTask:
    """A reasoning-gym puzzle as a study task (module docstring).

    Args:
        dataset (`str`): the puzzle's reasoning-gym name (``reasoning_gym.factory.DATASETS``); default `DEFAULT_DATASET`.
        config (`dict`, *optional*): the puzzle's configuration (its config dataclass's fields, e.g. difficulty);
            ``seed`` and ``size`` are set by the task. Default: `DEFAULT_CONFIGS` for the puzzle, else reasoning-gym's
            own (``{}``).
        compact (`bool`): drop the question's instruction lines that every entry repeats (module docstring).
        max_completion_tokens (`int`): generation budget of GRPO and the evaluations.
        max_sequence_tokens (`int`): longest prompt + completion of stage 1 (the tiny model's context). The defaults
            fit the default puzzle's compact prompts; a puzzle with longer questions needs more.

    A `trl_shaped.tasks.StudyTask`, judged by the puzzle's own verifier (judge ``reasoning_gym``).

    Raises:
        ImportError: with the install hint, when reasoning-gym is not installed.
        ValueError: for an unknown puzzle, a configuration the puzzle refuses, or a limit below 1.
    """

    ARGUMENT: ClassVar[str] = "dataset"  # get_task("reasoning_gym:<dataset>")
    judge: ClassVar[str] = "reasoning_gym"
    profiles: ClassVar[dict] = PROFILES

    dataset: str = DEFAULT_DATASET
    config: dict | None = None
    compact: bool = True
    max_completion_tokens: int = 16
    max_sequence_tokens: int = 96

    def __post_init__(self):
        rg = import_reasoning_gym()
        if self.config is None:  # frozen: set the resolved default once
            object.__setattr__(self, "config", dict(DEFAULT_CONFIGS.get(self.dataset, {})))
        if self.dataset not in rg.factory.DATASETS:
            raise ValueError(
                f"dataset must be a reasoning-gym task ({', '.join(sorted(rg.factory.DATASETS))}), got {self.dataset!r}"
            )
        if not isinstance(self.config, dict) or {"seed", "size"} & set(self.config):
            raise ValueError(
                f"config must be a dict of the puzzle's settings without seed and size, got {self.config!r}"
            )
        for name in ("max_completion_tokens", "max_sequence_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        self.source(seed=0, size=1)  # the puzzle accepts its configuration

    @property
    def name(self) -> str:
        return f"reasoning_gym:{self.dataset}"

    def source(self, *, seed: int, size: int):
        """The reasoning-gym dataset of this puzzle and configuration; a refused configuration is a ValueError."""
        rg = import_reasoning_gym()
        try:
            return rg.create_dataset(self.dataset, seed=seed, size=size, **self.config)
        except (TypeError, ValueError, AssertionError) as error:
            raise ValueError(
                f"config {self.config!r} is refused by reasoning-gym task {self.dataset!r}: {error}"
            ) from None

    def boilerplate(self) -> frozenset[str]:
        """The question lines every entry of the probe sample repeats (dropped from compact prompts)."""
        if not self.compact:
            return frozenset()
        probe = self.source(seed=PROBE_SEED, size=PROBE_SIZE)
        common = None
        for entry in probe:
            lines = {line.strip() for line in entry["question"].splitlines() if line.strip()}
            common = lines if common is None else common & lines
        return frozenset(common or ())

    def prompt(self, question: str, boilerplate: frozenset[str]) -> str:
        """The model's prompt for `question`: its lines but the `boilerplate` ones and blank ones, then a newline."""
        if not self.compact:
            return question.strip() + "\n"
        kept = [line.strip() for line in question.splitlines() if line.strip() and line.strip() not in boilerplate]
        return "\n".join(kept) + "\n"

    def reference_answer(self, entry: dict) -> str:
        answer = entry.get("answer")
        if answer is None:  # puzzles with many right answers give an example one
            answer = entry.get("metadata", {}).get("example_answer")
        if answer is None:
            raise ValueError(f"reasoning-gym task {self.dataset!r} gives no reference answer: it cannot make a corpus")
        return str(answer).strip()

    def build_datasets(self, *, num_train: int, num_rl: int, num_test: int, seed: int) -> DatasetDict:
        """The ``sft``, ``rl`` and ``test`` splits (module docstring), deterministic given `seed`.

        Raises:
            ValueError: for a split size below 1, when the puzzle has too few distinct problems for them, or when
                the puzzle's verifier does not give its own reference answers full score through the JSON column.

        Problems whose reference answer the judge does not give full score are skipped (1% of propositional_logic's
        example answers do not follow from its premises).
        """
        for name, value in (("num_train", num_train), ("num_rl", num_rl), ("num_test", num_test)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        total = num_train + num_rl + num_test
        boilerplate = self.boilerplate()
        source = self.source(seed=seed, size=DRAWS_PER_PROBLEM * total)
        rows, seen, rejected = [], set(), 0
        for index in range(len(source)):
            entry = source[index]
            prompt = self.prompt(entry["question"], boilerplate)
            if prompt in seen:
                continue
            seen.add(prompt)
            row = self._row(prompt, entry)
            if row is None:
                rejected += 1
                if rejected == REJECTS_BEFORE_REFUSAL and not rows:
                    raise ValueError(
                        f"reasoning-gym task {self.dataset!r}: its verifier gives none of its first {rejected} "
                        "reference answers full score through the JSON entry; it cannot be used as a study task"
                    )
                continue
            rows.append(row)
            if len(rows) == total:
                break
        else:
            raise ValueError(
                f"reasoning-gym task {self.dataset!r} gave fewer than num_train + num_rl + num_test = {total} distinct "
                f"problems in {len(source)} draws; lower them or widen its config"
            )
        sft = [{**row, "completion": f"{ANSWER_MARK} {row['answer']}"} for row in rows[:num_train]]
        rl = rows[num_train : num_train + num_rl]
        test = [{**row, "completion": f"{ANSWER_MARK} {row['answer']}"} for row in rows[num_train + num_rl :]]
        return DatasetDict(sft=Dataset.from_list(sft), rl=Dataset.from_list(rl), test=Dataset.from_list(test))

    def _row(self, prompt: str, entry: dict) -> dict | None:
        """The row of `entry`, or None when the judge does not give its reference answer full score (the example
        answers of some puzzles are sometimes wrong: a corpus and a reference completion must be right)."""
        answer = self.reference_answer(entry)
        entry = {key: _json_value(entry.get(key)) for key in ("question", "answer", "metadata")}
        row = {"prompt": prompt, "answer": answer, "reasoning_gym": json.dumps(entry, ensure_ascii=False)}
        (score,) = reasoning_gym_reward([f"{ANSWER_MARK} {answer}"], reasoning_gym=[row["reasoning_gym"]])
        return row if score == 1.0 else None

    def settings(self) -> dict:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "compact": self.compact,
            "max_completion_tokens": self.max_completion_tokens,
            "max_sequence_tokens": self.max_sequence_tokens,
            # a new release may generate other problems from the same seed (the distribution's version: the module's
            # own __version__ is not kept up to date)
            "reasoning_gym_version": importlib.metadata.version("reasoning-gym"),
        }

    def alphabet(self) -> None:
        return None  # English text: use the BPE tokenizer

    def solution_strategy(self, completion: str) -> str:
        """``"direct"`` for an answer alone, ``"worked"`` for text before the answer, ``"other"`` without one."""
        text = completion.strip()
        if extract_reasoning_gym_answer(text) is None or (ANSWER_MARK not in text and "<answer>" not in text):
            return "other"
        head = text.rsplit("<answer>", 1)[0] if "<answer>" in text else text.rsplit(ANSWER_MARK, 1)[0]
        return "worked" if head.strip() else "direct"
