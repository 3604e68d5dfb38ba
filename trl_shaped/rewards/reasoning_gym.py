"""`reasoning_gym_reward`: a reasoning-gym task's own verifier as a TRL reward function (judge ``reasoning_gym``).

reasoning-gym (optional extra ``reasoning``: ``pip install 'trl_shaped[reasoning]'``) generates 100+ kinds of
puzzles, each with a verifier ``score_answer(answer, entry)`` that knows every right form of an answer (a
propositional-logic conclusion is right when the premises entail it, whatever its wording). The dataset column
``reasoning_gym`` carries the task's entry (its ``question``, ``answer`` and ``metadata``, whose ``source_dataset``
names the task) as a JSON string, so JSONL files and `datasets` carry it unchanged;
`trl_shaped.tasks.ReasoningGymTask` and ``recipes/prepare_reasoning_gym.py`` write it.

The answer is read from the completion (`extract_reasoning_gym_answer`) in one of four anchored forms, the first
present in this order deciding:

1. the content of the last ``<answer>...</answer>`` pair, as reasoning-gym's own prompts ask for it and its own
   ``reasoning_gym.utils.extract_answer`` reads it (a multi-line answer such as a mini_sudoku grid goes here);
2. the text after the last ``####`` (the project's answer mark), up to the end of that line;
3. the content of the last ``\\boxed{...}`` (balanced braces, several lines allowed);
4. the text after the last line that starts with ``Answer:`` (or ``Final answer:``, any case), to the end of that line.

A completion with none of them has no answer and scores 0.0: the judge never guesses the answer from unmarked text
(its last line, a number somewhere), so hedging ("It could be Yes or No") or text that merely ends on the right words
earns nothing, and exactly one answer per completion reaches the verifier, whatever forms the completion mixes (a
right answer in a lower form never rescues a wrong one in a higher form).

The verifier scores the extracted answer, stripped of surrounding whitespace; its score (in [0, 1]) is the reward,
and an evaluation counts the sample correct at 1.0. Model output never raises: a completion with no answer, an entry
that does not parse, a verifier that raises, and a verifier that runs longer than `VERIFIER_TIMEOUT_S` all score 0.0.
Verifiers are library code, not model code, so they run in this process (in a worker thread, so that one stuck on a
strange answer is abandoned rather than waited for); only the last `MAX_ANSWER_CHARS` characters of an answer reach
them, which bounds their cost.
"""

import functools
import json
import re
import threading

from .answers import _last_boxed, completion_text

INSTALL_HINT = "reasoning-gym is not installed: pip install 'trl_shaped[reasoning]' (or pip install reasoning-gym)"
# Seconds a verifier may take on one answer before the answer scores 0.
VERIFIER_TIMEOUT_S = 5.0
# Longest answer handed to a verifier (its end: a degenerate completion cannot make scoring slow).
MAX_ANSWER_CHARS = 2000

ANSWER_MARK = "####"  # the project's answer mark
# "Answer: X" / "Final answer: X" at the start of a line (markdown bold around the label allowed).
_ANSWER_LINE = re.compile(r"^[ \t]*(?:\*\*)?(?:final[ \t]+)?answer[ \t]*(?:\*\*)?[ \t]*:(?:\*\*)?(.*)$", re.I | re.M)


def import_reasoning_gym():
    """The `reasoning_gym` module, or an ImportError that says how to install it."""
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return reasoning_gym


def read_reasoning_gym_answer(text) -> tuple[str | None, str]:
    """The answer written in `text` and the text before its form (the module docstring gives the forms and their
    order): ``(answer, head)``, the answer stripped and cut to its last `MAX_ANSWER_CHARS` characters, None when
    `text` has no answer form or the first form present is empty (or `text` is not a string)."""
    if not isinstance(text, str):
        return None, ""
    from reasoning_gym.utils import extract_answer  # the library's own reading of its <answer> tags

    answer, start = extract_answer(text, tag_name="answer"), text.rfind("<answer>")
    if answer is None and ANSWER_MARK in text:
        start = text.rfind(ANSWER_MARK)
        tail = text[start + len(ANSWER_MARK) :].strip()
        answer = tail.splitlines()[0] if tail else ""
    if answer is None:
        answer = _last_boxed(text)
        start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if answer is None:
        lines = list(_ANSWER_LINE.finditer(text))
        answer, start = (lines[-1].group(1), lines[-1].start()) if lines else (None, 0)
    answer = None if answer is None else answer.strip()[-MAX_ANSWER_CHARS:] or None
    return answer, text[: max(start, 0)] if answer is not None else ""


def extract_reasoning_gym_answer(text) -> str | None:
    """The answer written in `text` (the module docstring gives the forms and their order).

    Args:
        text (`str`): a completion's text. Non-strings give None.

    Returns:
        The answer, stripped and cut to its last `MAX_ANSWER_CHARS` characters; None when `text` has no answer form
        or the first form present is empty.
    """
    return read_reasoning_gym_answer(text)[0]


def answer_key(completion) -> str | None:
    """The normalised answer of `completion` for the majority vote of Cons@n: the extracted answer with runs of
    whitespace collapsed, a trailing full stop dropped and case folded, or None when there is none."""
    try:
        answer = extract_reasoning_gym_answer(completion_text(completion))
    except Exception:  # noqa: BLE001 -- an unreadable completion has no answer
        return None
    if answer is None:
        return None
    return " ".join(answer.split()).rstrip(".").casefold() or None


@functools.cache
def _verifier(source_dataset: str):
    """The ``score_answer`` of the reasoning-gym task `source_dataset` (built once per task)."""
    return import_reasoning_gym().get_score_answer_fn(source_dataset)


def _bounded_score(verifier, answer: str, entry: dict) -> float:
    """`verifier(answer, entry)` in a daemon thread: its score clipped to [0, 1], or 0.0 when it raises, returns
    something that is not a number, or runs past `VERIFIER_TIMEOUT_S` (the thread is then abandoned)."""
    result = []

    def run():
        try:
            result.append(float(verifier(answer, entry)))
        except Exception:  # noqa: BLE001 -- a verifier that fails on an answer scores it 0
            pass

    worker = threading.Thread(target=run, name="reasoning-gym-verifier", daemon=True)
    worker.start()
    worker.join(VERIFIER_TIMEOUT_S)
    if worker.is_alive() or not result or result[0] != result[0]:  # timed out, failed, or NaN
        return 0.0
    return min(1.0, max(0.0, result[0]))


def _score_one(completion, entry_json) -> float:
    answer = extract_reasoning_gym_answer(completion_text(completion))
    if answer is None:
        return 0.0
    entry = json.loads(entry_json) if isinstance(entry_json, str) else entry_json
    source = entry["metadata"]["source_dataset"]
    return _bounded_score(_verifier(source), answer, entry)


def reasoning_gym_reward(completions, answer=None, *, reasoning_gym, **kwargs) -> list[float]:
    """The score of each completion's answer by its reasoning-gym task's own verifier.

    Args:
        completions (`list[str]` or `list[list[dict]]`): the completions, plain or conversational.
        answer (`list[str]`, *optional*): the dataset's ``answer`` column (the reference answer; the verifier reads
            it from the entry, so it is not needed here).
        reasoning_gym (`list[str]`): per completion, the reasoning-gym entry as a JSON string (``question``,
            ``answer``, ``metadata`` with ``source_dataset``); a bare string is used for every completion. Required
            (keyword-only, as TRL passes columns), so that the evaluator names it when a dataset lacks it.
        **kwargs: the other arguments TRL passes (prompts, completion_ids, ...); ignored.

    Returns:
        One score in [0, 1] per completion; 0.0 for a completion without an answer or one the verifier cannot score
        (the module docstring says how the answer is read and how verifiers are bounded).

    Raises:
        ImportError: with the install hint, when reasoning-gym is not installed.
        ValueError: when `reasoning_gym` is None or does not have one entry per completion (a dataset error, raised
            before any scoring).
    """
    import_reasoning_gym()
    if reasoning_gym is None:
        raise ValueError("reasoning_gym_reward needs the dataset column `reasoning_gym` (the entry as JSON)")
    entries = [reasoning_gym] * len(completions) if isinstance(reasoning_gym, (str, dict)) else list(reasoning_gym)
    if len(entries) != len(completions):
        raise ValueError(f"reasoning_gym must have one entry per completion ({len(completions)}), got {len(entries)}")
    rewards = []
    for completion, entry in zip(completions, entries, strict=True):
        try:
            rewards.append(_score_one(completion, entry))
        except Exception:  # noqa: BLE001 -- an entry or answer that cannot be scored scores 0
            rewards.append(0.0)
    return rewards


# The evaluator's Cons@n votes on this key (`getattr(judge, "answer_key", None)`).
reasoning_gym_reward.answer_key = answer_key
