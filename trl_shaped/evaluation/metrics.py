"""The paper's metrics of sampled completions (docs/method.md, evaluation protocol): pure Python, no model.

is_correct(completion, answer) -> bool      THE answer judge: evaluation, the demo and the study all use it
pass_at_k(n, c, k) -> float                 unbiased Pass@k = 1 - C(n - c, k) / C(n, k)
majority_vote(answers) -> str | None        most frequent answer, ties to the first occurrence
cons_at_n(answers, correct) -> float        1.0 when the majority answer is correct
score_completions(completions, answers, pass_k=...) -> dict   Avg@n, Cons@n, Pass@k and per-problem records
"""

from collections import Counter
from collections.abc import Sequence

from trl_shaped.rewards import exact_answer_reward, extract_answer, normalize_answer
from trl_shaped.validation import check_int


def is_correct(completion, answer) -> bool:
    """Whether `completion` answers `answer` correctly: the one judge of correctness in this package.

    The final answer is read with `trl_shaped.rewards.extract_answer` (after the last "####", else the last
    \\boxed{}) and compared with the gold answer as an exact number (`exact_answer_reward`: "12", "12.0", "$12" and
    "1,2" -> 12 ... all equal 12). RL rewards the same judgement, so an evaluation measures what training optimised.

    Args:
        completion (`str` or `list[dict]`): a completion, plain or conversational.
        answer: the gold answer (converted with `str`).
    """
    return exact_answer_reward([completion], [str(answer)])[0] > 0


def answer_key(answer: str | None) -> str | None:
    """The form extracted answers are grouped by for the majority vote ("3" and "3.0" vote together)."""
    return None if answer is None else normalize_answer(answer)


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
        correct: whether each sample is correct, same length as `answers`; samples with the same answer must agree.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct must have the same length, got {len(answers)} and {len(correct)}")
    winner = majority_vote(answers)
    if winner is None:
        return 0.0
    return float(bool(correct[list(answers).index(winner)]))


def score_completions(
    completions: Sequence[Sequence[str]], answers: Sequence[str], *, pass_k: Sequence[int] = (1,)
) -> dict:
    """Avg@n, Cons@n and Pass@k of sampled completions against gold answers, judged by `is_correct`.

    Args:
        completions: for each problem, its n >= 1 completions (same n for all problems).
        answers: the gold answer of each problem.
        pass_k: the k of Pass@k, each an integer in [1, n].

    Returns:
        dict with "num_problems", "num_samples", "avg_at_n", "cons_at_n", "pass_at_k" ({str(k): value}) and
        "per_problem" (a list of {"answer", "num_correct", "majority_answer", "cons_correct", "extracted"}).
    """
    if len(completions) != len(answers):
        raise ValueError(
            f"completions and answers must have the same length, got {len(completions)} and {len(answers)}"
        )
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
    per_problem = []
    for samples, gold in zip(completions, answers, strict=True):
        correct = [is_correct(s, gold) for s in samples]
        extracted = [extract_answer(s) for s in samples]
        keys = [answer_key(a) for a in extracted]
        per_problem.append(
            {
                "answer": gold,
                "num_correct": sum(correct),
                "majority_answer": majority_vote(keys),
                "cons_correct": cons_at_n(keys, correct) == 1.0,
                "extracted": extracted,
            }
        )
    num = len(per_problem)
    return {
        "num_problems": num,
        "num_samples": n,
        "avg_at_n": sum(p["num_correct"] / n for p in per_problem) / num,
        "cons_at_n": sum(p["cons_correct"] for p in per_problem) / num,
        "pass_at_k": {str(k): sum(pass_at_k(n, p["num_correct"], k) for p in per_problem) / num for k in ks},
        "per_problem": per_problem,
    }
