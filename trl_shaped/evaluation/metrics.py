"""The paper's metrics of sampled completions (docs/method.md, evaluation protocol): pure Python, no model.

A *judge* (`trl_shaped.rewards.JUDGES`: exact, math, code, reasoning_gym, or a dotted path) scores the completions;
a sample is correct when its score is 1.0, its full score, so evaluation counts what RL rewarded.

judge_scores(completions, columns, judge) -> scores   one call to the judge for every completion of every problem,
                                            with what GRPO hands a reward (conversational, completion_ids, ...)
check_judge_on_row(judge, columns, ...)     the judge on the first problem, before any sampling
is_correct(completion, answer) -> bool      the exact judge on one completion (numbers; kept for callers)
pass_at_k(n, c, k) -> float                 unbiased Pass@k = 1 - C(n - c, k) / C(n, k)
judge_vote_keys(judge, completions, columns) -> keys   what each sample votes for (a judge's `vote_keys` method,
                                            e.g. the code judge's program behaviour, else `vote_keys` per problem)
majority_vote(answers) -> str | None        most frequent answer, ties to the first occurrence
cons_at_n(answers, correct) -> float        1.0 when the majority answer is correct
score_completions(completions, answers, pass_k=..., judge=...) -> dict   Avg@n, Cons@n, Pass@k, mean score and
                                            per-problem records
"""

import inspect
import math
from collections import Counter
from collections.abc import Callable, Sequence

from trl_shaped.rewards import completion_text, exact_answer_reward, extract_answer, normalize_answer
from trl_shaped.rewards.judges import DEFAULT_JUDGE, TRAINER_ARGUMENTS, get_judge
from trl_shaped.rewards.judges import judge_name as name_of_judge
from trl_shaped.validation import check_int

# What TRL passes to every reward function besides the dataset's columns: never a column a judge needs from the data.
_TRAINER_ARGUMENTS = (*TRAINER_ARGUMENTS, "kwargs")


def is_correct(completion, answer) -> bool:
    """Whether `completion` answers `answer` correctly by the `exact` judge (the default of `score_completions`).

    The final answer is read with `trl_shaped.rewards.extract_answer` (after the last "####", else the last
    \\boxed{}) and compared with the gold answer as an exact number (`exact_answer_reward`: "12", "12.0", "$12" and
    "1,2" -> 12 ... all equal 12). Other domains: `score_completions(..., judge="math")`.

    Args:
        completion (`str` or `list[dict]`): a completion, plain or conversational.
        answer: the gold answer (converted with `str`).
    """
    return exact_answer_reward([completion], [str(answer)])[0] > 0


def answer_key(answer: str | None) -> str | None:
    """The form extracted answers are grouped by for the majority vote ("3" and "3.0" vote together)."""
    return None if answer is None else normalize_answer(answer)


def resolve_judge(judge) -> Callable:
    """The reward function of `judge`: a callable as is, else `trl_shaped.rewards.get_judge(judge)`."""
    return judge if callable(judge) else get_judge(judge)


def missing_judge_columns(judge, columns: Sequence[str]) -> list[str]:
    """The arguments `judge` requires (no default) that are neither TRL's trainer arguments nor in `columns`."""
    try:
        parameters = inspect.signature(judge).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: let the call tell
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name
        for p in parameters
        if p.kind in kinds and p.default is inspect.Parameter.empty
        and p.name not in _TRAINER_ARGUMENTS and p.name not in columns
    ]  # fmt: skip


def _discard(*args, **kwargs) -> None:
    """What the evaluation hands a judge as TRL's `log_extra` / `log_metric`: there is no completions table to log to."""


def trainer_arguments(completions: Sequence, completion_ids=None, trainer_state=None) -> dict:
    """What GRPO hands every reward function besides the completions and the columns (TRL's `_calculate_rewards`):
    `completion_ids`, `trainer_state` (a fresh `transformers.TrainerState` when none is given), and `log_extra` /
    `log_metric` (here callables that discard what they get)."""
    from transformers import TrainerState

    if completion_ids is None:
        completion_ids = [[] for _ in completions]
    return {
        "completion_ids": list(completion_ids),
        "trainer_state": TrainerState() if trainer_state is None else trainer_state,
        "log_extra": _discard,
        "log_metric": _discard,
    }


def as_conversation(completion):
    """A completion in TRL's conversational form, ``[{"role": "assistant", "content": text}]`` (a message list is
    kept as it is)."""
    if isinstance(completion, list):
        return completion
    return [{"role": "assistant", "content": completion}]


def judge_scores(
    completions: Sequence[Sequence],
    columns: dict | None = None,
    *,
    judge=DEFAULT_JUDGE,
    conversational: bool = False,
    completion_ids: Sequence[Sequence] | None = None,
    trainer_state=None,
) -> list:
    """Each completion's score by `judge`, from one call for all the problems (a judge that runs programs runs them
    in parallel), with the arguments GRPO hands a reward function.

    Args:
        completions: for each problem, its completions (strings or conversational message lists).
        columns (`dict`, *optional*): column name -> one value per problem (`answer`, `tests`, `prompts`, ...); each
            reaches the judge as TRL passes dataset columns, one value per completion.
        judge: a judge name (`trl_shaped.rewards.get_judge`) or a reward function.
        conversational (`bool`): the prompts were chat messages: the judge gets each completion as
            ``[{"role": "assistant", "content": text}]``, as GRPO hands it.
        completion_ids (*optional*): for each problem, its completions' token ids (`completion_ids` of the judge).
        trainer_state (*optional*): `trainer_state` of the judge (default: a fresh `transformers.TrainerState`).

    Returns:
        for each problem, the scores of its completions, floats in [0, 1] (a judge's None counts as 0.0).
    """
    judge = resolve_judge(judge)
    columns = dict(columns or {})
    for name, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(completions)} problems")
    flat = [c for samples in completions for c in samples]
    if not flat:
        return [[] for _ in completions]
    if conversational:
        flat = [as_conversation(c) for c in flat]
    per_completion = {
        name: [v for v, samples in zip(values, completions, strict=True) for _ in samples]
        for name, values in columns.items()
    }
    flat_ids = None if completion_ids is None else [ids for row in completion_ids for ids in row]
    extra = trainer_arguments(flat, flat_ids, trainer_state)
    scores = judge(completions=flat, **extra, **per_completion)
    name = name_of_judge(judge)
    if scores is None or len(scores) != len(flat):
        raise ValueError(f"judge {name} returned {None if scores is None else len(scores)} scores for {len(flat)}")
    checked = []
    for score in scores:
        score = 0.0 if score is None else float(score)
        if not 0.0 <= score <= 1.0:  # NaN fails too
            raise ValueError(f"judge {name} must score in [0, 1], returned {score}")
        checked.append(score)
    out, start = [], 0
    for samples in completions:
        out.append(checked[start : start + len(samples)])
        start += len(samples)
    return out


def judge_vote_keys(
    judge, completions: Sequence[Sequence], columns: dict | None = None, *, conversational: bool = False
) -> list[list[str | None]]:
    """For each problem, what each of its samples votes for in Cons@n. A judge with a method
    ``vote_keys(completions, **columns)`` gets the arguments it is scored with, as `judge_scores` hands them (the code
    judge: each program's behaviour on the tests, from the runs of its last scoring call); any other judge,
    `vote_keys` per problem."""
    key_method = getattr(judge, "vote_keys", None)
    if key_method is None:
        return [vote_keys(judge, samples) for samples in completions]
    flat = [c for samples in completions for c in samples]
    if conversational:
        flat = [as_conversation(c) for c in flat]
    per_completion = {
        name: [v for v, samples in zip(values, completions, strict=True) for _ in samples]
        for name, values in (columns or {}).items()
    }
    extra = trainer_arguments(flat) if flat else {}
    keys = list(key_method(completions=flat, **extra, **per_completion)) if flat else []
    if len(keys) != len(flat):
        raise ValueError(f"judge {name_of_judge(judge)} gave {len(keys)} vote keys for {len(flat)} completions")
    out, start = [], 0
    for samples in completions:
        out.append([None if key is None else str(key) for key in keys[start : start + len(samples)]])
        start += len(samples)
    return out


def extracted_answers(judge, samples: Sequence) -> list:
    """What the judge read in each sample, for the records: ``judge.extract(completion)`` when the judge has one (the
    code judge: the program), else the extracted final answer (`extract_answer`)."""
    extract = getattr(judge, "extract", None)
    if extract is None:
        return [extract_answer(completion_text(s)) for s in samples]
    extracted = []
    for sample in samples:
        try:
            extracted.append(extract(sample))
        except Exception:  # noqa: BLE001 -- model output never stops an evaluation
            extracted.append(None)
    return extracted


def check_judge_on_row(judge, columns: dict, *, conversational: bool, probe: str = "") -> None:
    """Call `judge` once on the first problem, before any sampling, with the arguments the evaluation will hand it
    (the completion is `probe`: the row's reference completion, or an empty one), so that a judge that cannot read
    the data fails in seconds, not after all the sampling.

    Raises:
        ValueError: naming the judge, what it raised, and that nothing was sampled yet.
    """
    first = {name: values[:1] for name, values in columns.items()}
    try:
        judge_scores([[probe]], first, judge=judge, conversational=conversational, completion_ids=[[[]]])
    except Exception as error:
        raise ValueError(
            f"judge {name_of_judge(judge)} fails on the first problem, checked before sampling "
            f"(columns {sorted(columns)}, {'conversational' if conversational else 'plain-text'} completions): "
            f"{type(error).__name__}: {error}"
        ) from error


def vote_keys(judge, samples: Sequence) -> list[str | None]:
    """What each sample votes for in Cons@n: `judge.answer_key(completion)` when the judge has one, else its
    normalised extracted answer (`extract_answer`, `answer_key`). None does not vote."""
    key_of = getattr(judge, "answer_key", None)
    if key_of is None:
        return [answer_key(extract_answer(completion_text(s))) for s in samples]
    keys = []
    for sample in samples:
        try:
            key = key_of(sample)
        except Exception:  # noqa: BLE001 -- model output never stops an evaluation
            key = None
        keys.append(None if key is None else str(key))
    return keys


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `n` samples of which `c` are correct: 1 - C(n - c, k) / C(n, k).

    Uses the product form 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never builds the (huge) binomials.
    Integral floats (5.0) are accepted as integers; anything else non-integral raises a ValueError naming it.

    Args:
        n (`int`): samples drawn, n >= 1.
        c (`int`): correct samples, 0 <= c <= n.
        k (`int`): the budget, 1 <= k <= n.
    """
    # Integral floats (5.0, as YAML or NumPy may hand them over) count as integers.
    n = check_int("n", n, minimum=1, integral_float=True)
    c = check_int("c", c, minimum=0, maximum=n, note=f"n={n}", integral_float=True)
    k = check_int("k", k, minimum=1, maximum=n, note=f"n={n}", integral_float=True)
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer, None answers not voting.

    Tie rule (deterministic): among the answers with the highest count, the one that occurs first in `answers`.
    Returns None when no answer is given at all.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def cons_at_n(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Cons@n of one problem: 1.0 if the majority answer is correct, else 0.0 (also 0.0 when nothing was answered).

    Args:
        answers: the extracted (normalised) answer of each sample, None where none was found.
        correct: whether each sample is correct, same length as `answers`; the first sample with the majority answer
            decides (samples with the same answer agree for the answer judges).
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct must have the same length, got {len(answers)} and {len(correct)}")
    winner = majority_vote(answers)
    if winner is None:
        return 0.0
    return float(bool(correct[list(answers).index(winner)]))


def score_completions(
    completions: Sequence[Sequence],
    answers: Sequence | None = None,
    *,
    pass_k: Sequence[int] = (1,),
    judge=DEFAULT_JUDGE,
    columns: dict | None = None,
    scores: Sequence[Sequence[float]] | None = None,
    keys: Sequence[Sequence[str | None]] | None = None,
    conversational: bool = False,
) -> dict:
    """Avg@n, Cons@n, Pass@k and the mean score of sampled completions, scored by `judge`.

    A sample is correct when its score is 1.0. For the answer judges (exact, math) the score is 0 or 1; a
    partial-credit judge (code: the fraction of tests passed) makes `mean_score` differ from Avg@n.

    Args:
        completions: for each problem, its n >= 1 completions (same n for all problems).
        answers (*optional*): the gold answer of each problem (the judge's `answer` column).
        pass_k: the k of Pass@k, each an integer in [1, n].
        judge: a name of `trl_shaped.rewards.JUDGES` (default `exact`), a dotted import path, or a reward function.
        columns (`dict`, *optional*): the judge's other columns, name -> one value per problem (`tests`, ...).
        scores (*optional*): the scores already computed by `judge_scores` (e.g. per process); else computed here.
        keys (*optional*): the vote keys already computed by `judge_vote_keys`, with `scores`; else computed here.
        conversational (`bool`): hand the judge conversational completions (see `judge_scores`).

    Returns:
        dict with "judge" (its name), "num_problems", "num_samples", "avg_at_n", "cons_at_n", "pass_at_k"
        ({str(k): value}), "mean_score" and "per_problem" (a list of {"answer", "scores", "num_correct",
        "mean_score", "majority_answer", "cons_correct", "extracted"}).
    """
    columns = dict(columns or {})
    if answers is not None:
        if len(completions) != len(answers):
            raise ValueError(
                f"completions and answers must have the same length, got {len(completions)} and {len(answers)}"
            )
        columns["answer"] = list(answers)
    if not completions:
        raise ValueError("completions must hold at least one problem, got an empty list")
    n = len(completions[0])
    if n == 0:
        raise ValueError("completions must hold at least one completion per problem, got an empty list for problem 0")
    uneven = [i for i, c in enumerate(completions) if len(c) != n]
    if uneven:
        raise ValueError(
            f"completions must hold the same number of completions per problem ({n}, as problem 0), "
            f"problems {uneven[:5]} differ"
        )
    ks = [
        check_int("pass_k values", k, minimum=1, maximum=n, note=f"num_samples={n}", integral_float=True)
        for k in pass_k
    ]
    judge = resolve_judge(judge)
    if scores is None:
        scores = judge_scores(completions, columns, judge=judge, conversational=conversational)
    if keys is None:
        keys = judge_vote_keys(judge, completions, columns, conversational=conversational)
    golds = columns.get("answer", [None] * len(completions))
    per_problem = []
    for samples, sample_scores, gold, sample_keys in zip(completions, scores, golds, keys, strict=True):
        correct = [s == 1.0 for s in sample_scores]
        per_problem.append(
            {
                "answer": gold,
                "scores": list(sample_scores),
                "num_correct": sum(correct),
                "mean_score": math.fsum(sample_scores) / n,
                "majority_answer": majority_vote(sample_keys),
                "cons_correct": cons_at_n(sample_keys, correct) == 1.0,
                "extracted": extracted_answers(judge, samples),
            }
        )
    num = len(per_problem)
    return {
        "judge": name_of_judge(judge),
        "num_problems": num,
        "num_samples": n,
        "avg_at_n": sum(p["num_correct"] / n for p in per_problem) / num,
        "cons_at_n": sum(p["cons_correct"] for p in per_problem) / num,
        "pass_at_k": {str(k): sum(pass_at_k(n, p["num_correct"], k) for p in per_problem) / num for k in ks},
        "mean_score": sum(p["mean_score"] for p in per_problem) / num,
        "per_problem": per_problem,
    }
