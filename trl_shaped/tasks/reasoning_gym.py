"""The reasoning-gym task: any of reasoning-gym's procedurally generated puzzles, or a mixture of them, as a study task
(judge ``reasoning_gym``, the puzzle's own verifier).

``get_task("reasoning_gym:knights_knaves")`` names the puzzle; ``get_task("reasoning_gym")`` runs the default,
`DEFAULT_DATASET`: propositional logic, where a few premises over two to four variables are given and any conclusion
they entail that is not a bare variable or a tautology is right (the verifier checks entailment by truth table), so a
problem has many right answers, as in the arithmetic task's many worked solutions, and the verifier gives partial
credit (0.25 for a trivial conclusion, 0.05 for a wrong one) that GRPO sees and the evaluation does not count.
Its settings pass through: ``config`` is the puzzle's own configuration (its difficulty: ``{"n_people": 3}`` for
knights_knaves, ``{"max_vars": 3}`` for propositional_logic), so ``trl-shaped demo --task
reasoning_gym:knights_knaves --task_args '{"config": {"n_people": 3}, "max_sequence_tokens": 256}'``.

The logic suite: ``get_task("reasoning_gym:composite")`` is reasoning-gym's composite dataset (``CompositeDataset``,
each problem drawn from one member puzzle by weight) over `LOGIC_SUITE`, every member at weight 1 with the
configuration this task gives it by default (`DEFAULT_CONFIGS`); ``config={"datasets": [...]}`` names another mixture
in reasoning-gym's own ``DatasetSpec`` layout (``{"name": ..., "weight": 1.0, "config": {...}}``, or a bare name for
weight 1 and the default configuration). Each entry keeps its member's name in ``metadata.source_dataset``, so the
judge scores it with that member's verifier, in RL and in evaluation alike.

Problems come from ``reasoning_gym.create_dataset(dataset, seed=seed, **config)``, read in index order and
de-duplicated by prompt: the first ``num_train`` distinct ones are the ``sft`` split, the next ``num_rl`` the ``rl``
split and the next ``num_test`` the ``test`` split, so the splits are disjoint and the same for the same seed.

Each row has ``prompt``, ``answer`` (the reference answer) and ``reasoning_gym`` (the entry as JSON, what the judge
scores against); ``sft`` and ``test`` rows also have the reference ``completion`` in the task's ``answer_format``:
``"mark"`` (the default, the answer mark of the project's other tasks: ``#### <answer>``, one line) or ``"tags"``
(reasoning-gym's own: ``<answer>answer</answer>``, which also holds the grids of mini_sudoku or rotate_matrix).
A puzzle whose entries carry no answer (propositional logic, whose right answers are many) uses the example answer
of its metadata.

Prompts keep the question and name the answer format: every prompt ends with the line `FORMAT_INSTRUCTIONS` gives
the task's answer format (``Give your final answer after ####.``). With ``compact=True`` (the default) the prompt
drops the instruction preamble that reasoning-gym repeats in every entry, which a tiny model on a CPU pays for in
every sequence: the leading lines that every question of a fixed probe sample of the puzzle (same configuration; per
member for a mixture) repeats, except the last of them, which introduces the problem; blank lines go too.
Everything after the preamble stays, repeated or not, so the question asked after the problem and its own format
instructions are kept (zebra_puzzles' "What is Name of the person who lives in House 1?", syllogism's "Does it
logically follow that:", mini_sudoku's "Format your response as the puzzle above ..."). A propositional-logic
question of 17 lines (what the task is, the notation of the connectives, "Given:", the premises, "What can we
conclude from the above statements?") becomes ``Given:\n1. (P ∨ Q)\n.2. ¬P\n.What can we conclude from the above
statements?\nGive your final answer after ####.\n`` (the stray full stops are reasoning-gym's). The verifier
scores the answer against the full entry, which the ``reasoning_gym`` column keeps; a puzzle whose question is one
paragraph (knights_knaves) is left whole. ``compact=False`` keeps every question whole.
"""

import functools
import importlib.metadata
import json
from dataclasses import dataclass
from typing import ClassVar

from datasets import Dataset, DatasetDict

from ..rewards.reasoning_gym import import_reasoning_gym, read_reasoning_gym_answer, reasoning_gym_reward

DEFAULT_DATASET = "propositional_logic"
COMPOSITE = "composite"  # reasoning-gym's name of its mixtures
# The paper-style logic suite (``reasoning_gym:composite`` without a config): reasoning-gym 0.1.25's logic category
# (reasoning_gym/logic: aiw, circuit_logic, knights_knaves, propositional_logic, self_reference, syllogism,
# zebra_puzzles) and mini_sudoku, the constraint puzzle of its games category, whose answer is a grid of 4 lines.
LOGIC_SUITE = (
    "aiw",
    "circuit_logic",
    "knights_knaves",
    "mini_sudoku",
    "propositional_logic",
    "self_reference",
    "syllogism",
    "zebra_puzzles",
)
# A puzzle's configuration when none is given: reasoning-gym's own, except where noted. Propositional logic with
# reasoning-gym's 2-4 premises is often inconsistent (anything follows), so that a random well-formed conclusion is
# right about half the time; with 1-2 premises a random conclusion is right a quarter of the time (measured on 3000
# random candidates, benchmarks/RESULTS.md), which leaves a model something to learn. The mixture's members get the
# same defaults.
DEFAULT_CONFIGS = {"propositional_logic": {"min_statements": 1, "max_statements": 2}}
DEFAULT_CONFIGS[COMPOSITE] = {
    "datasets": [{"name": name, "weight": 1.0, "config": DEFAULT_CONFIGS.get(name, {})} for name in LOGIC_SUITE]
}
ANSWER_MARK = "####"
# The reference completion of an answer, and the prompt's last line that asks for it, by answer format.
ANSWER_FORMATS = {"mark": ANSWER_MARK + " {answer}", "tags": "<answer>{answer}</answer>"}
FORMAT_INSTRUCTIONS = {
    "mark": f"Give your final answer after {ANSWER_MARK}.",
    "tags": "Give your final answer between <answer> and </answer> tags.",
}
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


@functools.lru_cache(maxsize=64)
def _repeated_lines(name: str, config_json: str) -> frozenset[str]:
    """The question lines that every entry of the probe sample of puzzle `name` (configuration `config_json`)
    repeats; cached, as a probe of 64 zebra puzzles takes seconds and every split build needs it."""
    probe = import_reasoning_gym().create_dataset(name, seed=PROBE_SEED, size=PROBE_SIZE, **json.loads(config_json))
    common = None
    for entry in probe:
        lines = {line.strip() for line in entry["question"].splitlines() if line.strip()}
        common = lines if common is None else common & lines
    return frozenset(common or ())


@dataclass(frozen=True)
class ReasoningGymTask:
    """A reasoning-gym puzzle, or a mixture of puzzles, as a study task (module docstring).

    Args:
        dataset (`str`): the puzzle's reasoning-gym name (``reasoning_gym.factory.DATASETS``), or ``"composite"`` for
            a mixture (the logic suite `LOGIC_SUITE` by default); default `DEFAULT_DATASET`.
        config (`dict`, *optional*): the puzzle's configuration (its config dataclass's fields, e.g. difficulty);
            ``seed`` and ``size`` are set by the task. For ``"composite"``: ``{"datasets": [...]}``, each member a
            ``{"name", "weight", "config"}`` dict (reasoning-gym's ``DatasetSpec``) or a bare name. Default:
            `DEFAULT_CONFIGS` for the puzzle, else reasoning-gym's own (``{}``).
        compact (`bool`): drop the instruction preamble every question repeats (module docstring).
        answer_format (`str`): ``"mark"`` (``#### <answer>``, one line) or ``"tags"`` (``<answer>...</answer>``,
            reasoning-gym's own, any number of lines): the reference completions' form and the one the prompts ask
            for. The judge reads both either way.
        max_completion_tokens (`int`): generation budget of GRPO and the evaluations.
        max_sequence_tokens (`int`): longest prompt + completion of stage 1 (the tiny model's context). The defaults
            fit the default puzzle's compact prompts; a puzzle with longer questions needs more.

    A `trl_shaped.tasks.StudyTask`, judged by the puzzle's own verifier (judge ``reasoning_gym``).

    Raises:
        ImportError: with the install hint, when reasoning-gym is not installed.
        ValueError: for an unknown puzzle or answer format, a configuration the puzzle refuses, or a limit below 1.
    """

    ARGUMENT: ClassVar[str] = "dataset"  # get_task("reasoning_gym:<dataset>")
    judge: ClassVar[str] = "reasoning_gym"
    profiles: ClassVar[dict] = PROFILES

    dataset: str = DEFAULT_DATASET
    config: dict | None = None
    compact: bool = True
    answer_format: str = "mark"
    max_completion_tokens: int = 16
    max_sequence_tokens: int = 96

    def __post_init__(self):
        rg = import_reasoning_gym()
        if self.config is None:  # frozen: set the resolved default once
            object.__setattr__(self, "config", json.loads(json.dumps(DEFAULT_CONFIGS.get(self.dataset, {}))))
        if self.dataset not in rg.factory.DATASETS:
            raise ValueError(
                f"dataset must be a reasoning-gym task ({', '.join(sorted(rg.factory.DATASETS))}), got {self.dataset!r}"
            )
        if not isinstance(self.config, dict) or {"seed", "size"} & set(self.config):
            raise ValueError(
                f"config must be a dict of the puzzle's settings without seed and size, got {self.config!r}"
            )
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {sorted(ANSWER_FORMATS)}, got {self.answer_format!r}")
        for name in ("max_completion_tokens", "max_sequence_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.dataset == COMPOSITE:
            self.members()  # a well-formed list of puzzles
        self.source(seed=0, size=1)  # the puzzle accepts its configuration

    @property
    def name(self) -> str:
        return f"reasoning_gym:{self.dataset}"

    def members(self) -> dict[str, dict]:
        """The puzzles this task draws from, each with its configuration: the puzzle itself, or a mixture's members.

        Raises:
            ValueError: for a mixture whose ``datasets`` is not a non-empty list of known, distinct puzzles, each a
                name or a ``{"name", "weight", "config"}`` dict whose config has no seed or size.
        """
        if self.dataset != COMPOSITE:
            return {self.dataset: self.config}
        rg = import_reasoning_gym()
        specs = self.config.get("datasets")
        if not isinstance(specs, list) or not specs:
            raise ValueError(
                f"config of reasoning-gym task 'composite' must be {{'datasets': [...]}}, a non-empty list of puzzles "
                f"(names or {{'name', 'weight', 'config'}} dicts), got {self.config!r}"
            )
        members = {}
        for index, spec in enumerate(specs):
            spec = {"name": spec} if isinstance(spec, str) else spec
            where = f"config['datasets'][{index}]"
            if not isinstance(spec, dict) or not set(spec) <= {"name", "weight", "config"} or "name" not in spec:
                raise ValueError(f"{where} must be a puzzle name or a dict of name, weight, config; got {spec!r}")
            name, config = spec["name"], spec.get("config", {})
            if name not in rg.factory.DATASETS or name == COMPOSITE:
                raise ValueError(
                    f"{where}['name'] must be a reasoning-gym task ({', '.join(sorted(rg.factory.DATASETS))}), "
                    f"got {name!r}"
                )
            if name in members:
                raise ValueError(f"{where}: {name!r} is named twice in the mixture")
            if not isinstance(config, dict) or {"seed", "size"} & set(config):
                raise ValueError(f"{where}['config'] must be a dict without seed and size, got {config!r}")
            members[name] = config
        return members

    def _specs(self) -> list:
        """The mixture's members as reasoning-gym's ``DatasetSpec``s (weight 1 unless given)."""
        from reasoning_gym.composite import DatasetSpec

        weights = {spec["name"]: spec.get("weight", 1.0) for spec in self.config["datasets"] if isinstance(spec, dict)}
        return [
            DatasetSpec(name=name, weight=weights.get(name, 1.0), config=dict(config))
            for name, config in self.members().items()
        ]

    def source(self, *, seed: int, size: int):
        """The reasoning-gym dataset of this puzzle (or mixture) and configuration; a refused configuration is a
        ValueError."""
        rg = import_reasoning_gym()
        try:
            if self.dataset == COMPOSITE:
                return rg.create_dataset(COMPOSITE, seed=seed, size=size, datasets=self._specs())
            return rg.create_dataset(self.dataset, seed=seed, size=size, **self.config)
        except (TypeError, ValueError, AssertionError, KeyError) as error:
            raise ValueError(
                f"config {self.config!r} is refused by reasoning-gym task {self.dataset!r}: {error}"
            ) from None

    def boilerplate(self) -> dict[str, frozenset[str]]:
        """Per puzzle (``metadata.source_dataset``): the question lines every entry of its probe sample repeats
        (empty when not compact). The compact prompt drops them where they lead the question."""
        return {
            name: _repeated_lines(name, json.dumps(config, sort_keys=True)) if self.compact else frozenset()
            for name, config in self.members().items()
        }

    def prompt(self, question: str, boilerplate: frozenset[str]) -> str:
        """The model's prompt for `question` (module docstring): when compact, its lines from the last line of the
        leading `boilerplate` on, blank lines dropped; then the answer format's instruction and a newline."""
        lines = question.strip().splitlines()
        if self.compact:
            start = 0  # the first line that is not boilerplate
            while start < len(lines) and (not lines[start].strip() or lines[start].strip() in boilerplate):
                start += 1
            while start > 0 and not lines[start - 1].strip():
                start -= 1
            lines = [line.rstrip() for line in lines[max(0, start - 1) :] if line.strip()]
        return "\n".join(lines).strip() + "\n" + FORMAT_INSTRUCTIONS[self.answer_format] + "\n"

    def reference_answer(self, entry: dict) -> str:
        answer = entry.get("answer")
        if answer is None:  # puzzles with many right answers give an example one
            answer = entry.get("metadata", {}).get("example_answer")
        if answer is None:
            raise ValueError(f"reasoning-gym task {self.dataset!r} gives no reference answer: it cannot make a corpus")
        return str(answer).strip()

    def reference_completion(self, answer: str) -> str:
        """`answer` written in the task's answer format (``#### <answer>`` or ``<answer>...</answer>``).

        Raises:
            ValueError: for an answer of several lines in the ``mark`` format, which reads one line.
        """
        if self.answer_format == "mark" and "\n" in answer:
            raise ValueError(
                f"reasoning-gym task {self.dataset!r} has answers of several lines ({answer!r}) and answer_format "
                f"'mark' ({ANSWER_MARK} <answer>) holds one line: use answer_format='tags' (<answer>...</answer>)"
            )
        return ANSWER_FORMATS[self.answer_format].format(answer=answer)

    def build_datasets(self, *, num_train: int, num_rl: int, num_test: int, seed: int) -> DatasetDict:
        """The ``sft``, ``rl`` and ``test`` splits (module docstring), deterministic given `seed`.

        Raises:
            ValueError: for a split size below 1, when the puzzle has too few distinct problems for them, for answers
                of several lines in the ``mark`` format, or when the puzzle's verifier does not give its own reference
                answers full score (the error names the first one and why).

        Problems whose reference answer the judge does not give full score are skipped (1% of propositional_logic's
        example answers do not follow from its premises).
        """
        for name, value in (("num_train", num_train), ("num_rl", num_rl), ("num_test", num_test)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        total = num_train + num_rl + num_test
        boilerplate = self.boilerplate()
        source = self.source(seed=seed, size=DRAWS_PER_PROBLEM * total)
        rows, seen, rejected = [], set(), []
        for index in range(len(source)):
            entry = source[index]
            puzzle = entry.get("metadata", {}).get("source_dataset", self.dataset)
            prompt = self.prompt(entry["question"], boilerplate.get(puzzle, frozenset()))
            if prompt in seen:
                continue
            seen.add(prompt)
            row = self._row(prompt, entry)
            if row is None:
                rejected.append(entry)
                if len(rejected) == REJECTS_BEFORE_REFUSAL and not rows:
                    raise ValueError(
                        f"reasoning-gym task {self.dataset!r}: its verifier gives none of its first {len(rejected)} "
                        f"reference answers full score, so it cannot be used as a study task; the first: "
                        f"{self._rejection_cause(rejected[0])}"
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
        sft = rows[:num_train]
        rl = [{k: v for k, v in row.items() if k != "completion"} for row in rows[num_train : num_train + num_rl]]
        test = rows[num_train + num_rl :]
        return DatasetDict(sft=Dataset.from_list(sft), rl=Dataset.from_list(rl), test=Dataset.from_list(test))

    def _row(self, prompt: str, entry: dict) -> dict | None:
        """The row of `entry` with its reference completion, or None when the judge does not give its reference
        answer full score (the example answers of some puzzles are sometimes wrong: a corpus and a reference
        completion must be right)."""
        answer = self.reference_answer(entry)
        completion = self.reference_completion(answer)
        entry = {key: _json_value(entry.get(key)) for key in ("question", "answer", "metadata")}
        row = {
            "prompt": prompt,
            "completion": completion,
            "answer": answer,
            "reasoning_gym": json.dumps(entry, ensure_ascii=False),
        }
        (score,) = reasoning_gym_reward([completion], reasoning_gym=[row["reasoning_gym"]])
        return row if score == 1.0 else None

    def _rejection_cause(self, entry: dict) -> str:
        """Why the judge refuses `entry`'s reference answer: the verifier refuses it on reasoning-gym's own entry, or
        only once the entry went through JSON, or only as read back from the reference completion."""
        rg = import_reasoning_gym()
        puzzle = entry["metadata"]["source_dataset"]
        answer = self.reference_answer(entry)
        completion = self.reference_completion(answer)
        verifier = rg.get_score_answer_fn(puzzle)
        direct = verifier(answer, entry)
        if direct != 1.0:
            return f"the verifier of {puzzle!r} scores the reference answer {answer!r} {direct} on its own entry"
        as_json = json.loads(json.dumps({k: _json_value(entry.get(k)) for k in ("question", "answer", "metadata")}))
        through_json = verifier(answer, as_json)
        if through_json != 1.0:
            return (
                f"the verifier of {puzzle!r} scores the reference answer {answer!r} {through_json} once its entry "
                "went through JSON (the reasoning_gym column), 1.0 on the original entry"
            )
        return (
            f"the reference completion {completion!r} reads back as "
            f"{read_reasoning_gym_answer(completion)[0]!r}, not the reference answer {answer!r}"
        )

    def settings(self) -> dict:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "compact": self.compact,
            "answer_format": self.answer_format,
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
        answer, head = read_reasoning_gym_answer(completion.strip())
        if answer is None:
            return "other"
        return "worked" if head.strip() else "direct"
