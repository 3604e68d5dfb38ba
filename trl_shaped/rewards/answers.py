"""Verifiable rewards for RLVR, with TRL's reward-function signature.

A TRL reward function is called as ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns)`` and
returns one float per completion. Datasets carry the gold answer in a column named ``answer``. Completions are
plain strings or, for conversational datasets, lists of ``{"role", "content"}`` messages.

Reward functions here never raise on model output: a completion without a parsable answer scores 0.0, and so
does anything that makes the parser fail or time out.

    extract_answer(text) -> str | None         text after the last "####", else the last \\boxed{...}
    exact_answer_reward(completions, answer)   1.0 when the extracted number equals the gold number exactly
    math_answer_reward(completions, answer)    equivalence through math-verify (optional extra ``math``) of the
                                               anchored answer (`MathAnswerReward(anchored=False)`: also the end
                                               of an unanchored text); normalised string match without math-verify
"""

import re
import threading
from decimal import Decimal, InvalidOperation

# Only the end of a completion is handed to math-verify: answers sit at the end, and the parser's cost grows
# with the input, so an enormous completion cannot stall a training step.
MATH_VERIFY_MAX_CHARS = 2000
# Longer "numbers" are treated as unparsable (a degenerate completion that repeats digits).
_MAX_NUMBER_CHARS = 200

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (balanced braces), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def extract_answer(text) -> str | None:
    """The final answer written in `text`.

    Args:
        text (`str`): a completion. Non-strings give None.

    Returns:
        The stripped text after the last ``"####"`` (up to the end of that line), else the content of the last
        ``\\boxed{...}``, else None. An empty answer is None.
    """
    if not isinstance(text, str):
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        answer = tail.splitlines()[0].strip() if tail else ""
        return answer or None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return None


def completion_text(completion) -> str:
    """The text of a completion: a string, or the concatenated contents of a conversational message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):  # multimodal content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str):
                parts.append(content)
        return "".join(parts)
    return ""


def _golds(answer, n: int) -> list:
    # TRL passes dataset columns as one value per completion; a bare value is broadcast for direct calls.
    if isinstance(answer, (list, tuple)):
        if len(answer) != n:
            raise ValueError(f"answer must have one entry per completion ({n}), got {len(answer)}")
        return list(answer)
    return [answer] * n


def _to_number(text) -> Decimal | None:
    """Exact decimal value of `text` after removing $, thousands commas, spaces and a trailing full stop."""
    if text is None:
        return None
    text = str(text).strip()
    if not text or len(text) > _MAX_NUMBER_CHARS:
        return None
    text = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,4})?", text):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def exact_answer_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's final answer equals the gold answer as a number, else 0.0.

    Args:
        completions (`list[str]` or `list[list[dict]]`): the completions, plain or conversational.
        answer (`list[str]` or `str`): the gold answer per completion (the dataset's ``answer`` column).
        **kwargs: the other arguments TRL passes (prompts, completion_ids, ...); ignored.

    Numbers compare exactly after normalising (``"12"``, ``"12.0"``, ``" 12 "``, ``"$12"``; thousands commas dropped: see
    ``_to_number``), so ``"12.0"`` matches ``"12"``. Missing or unparsable answers score 0.0.
    """
    rewards = []
    for completion, gold in zip(completions, _golds(answer, len(completions)), strict=True):
        try:
            predicted = _to_number(extract_answer(completion_text(completion)))
            target = _to_number(gold)
            rewards.append(1.0 if predicted is not None and target is not None and predicted == target else 0.0)
        except Exception:  # noqa: BLE001 -- never let a strange completion stop training
            rewards.append(0.0)
    return rewards


def normalize_answer(text) -> str | None:
    """Canonical string form of an answer, for the string-match fallback: numbers in canonical decimal form,
    otherwise lower-cased with $, spaces, \\left/\\right, \\! and a trailing full stop removed."""
    if text is None:
        return None
    text = str(text).strip()
    if not text:
        return None
    number = _to_number(text)
    if number is not None:
        return format(number.normalize(), "f") if number != 0 else "0"
    boxed = _last_boxed(text)
    if boxed is not None:
        text = boxed
    for token in ("$", "\\left", "\\right", "\\!", "\\,", " "):
        text = text.replace(token, "")
    text = text.rstrip(".").lower()
    return text or None


def _load_math_verify():
    """math_verify's (parse, verify), or None when the optional extra is not installed."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    return parse, verify


class MathAnswerReward:
    """The math judge: 1.0 when the completion's final answer is mathematically equal to the gold answer, else 0.0.

    Args:
        anchored (`bool`): only an anchored answer counts, the last ``\\boxed{...}`` or the text after the last
            ``####`` (`extract_answer`); a completion without one scores 0.0 (default). False adds the loose form:
            without an anchor, math-verify reads the end of the text, so that "It could be 3, 4 or 5." answers 5
            (a reward an RL policy learns to exploit; use it for models that cannot be prompted for a box).

    Anchors: a box and ``####``, as TRL's `accuracy_reward` (``try_extract_without_anchor=False``, box first).
    "The answer is X" / "Answer: X" are not anchors: such phrases appear in reasoning as well ("the answer is not 5"),
    and the math template asks for ``\\boxed{}``.

    Called as a TRL reward function, ``judge(completions, answer, **kwargs)``: completions plain or conversational,
    `answer` the gold answer per completion (LaTeX or plain). With math-verify installed (``pip install
    trl_shaped[math]``) equivalence is decided by it (fractions, LaTeX, sets ...); math-verify's signal-based timeouts
    are used in the main thread, elsewhere the input-length cap (`MATH_VERIFY_MAX_CHARS`) bounds the cost. Without
    math-verify the extracted answer must equal the gold one after `normalize_answer`. Parser failures and timeouts
    score 0.0. `answer_key` votes with what the score read, so that every scored answer votes in Cons@n.
    """

    __name__ = "math_answer_reward"

    def __init__(self, anchored: bool = True):
        if not isinstance(anchored, bool):
            raise ValueError(f"anchored must be True or False, got {anchored!r}")
        self.anchored = anchored

    def _candidate(self, text: str) -> tuple[str | None, bool]:
        """(what is parsed, whether it is an anchored answer) of a completion's text; None when nothing is."""
        extracted = extract_answer(text)
        if extracted is not None:
            return extracted[-MATH_VERIFY_MAX_CHARS:], True
        if self.anchored or not text.strip():
            return None, False
        return text[-MATH_VERIFY_MAX_CHARS:], False

    def __call__(self, completions, answer, **kwargs) -> list[float]:
        golds = _golds(answer, len(completions))
        math_verify = _load_math_verify()
        rewards = []
        for completion, gold in zip(completions, golds, strict=True):
            try:
                candidate, anchored = self._candidate(completion_text(completion))
                if candidate is None or gold is None or not str(gold).strip():
                    rewards.append(0.0)
                elif math_verify is None:
                    predicted = normalize_answer(candidate) if anchored else None
                    rewards.append(1.0 if predicted is not None and predicted == normalize_answer(gold) else 0.0)
                else:
                    rewards.append(_math_verify_match(math_verify, candidate, anchored, str(gold).strip()))
            except Exception:  # noqa: BLE001 -- parser failures and timeouts score 0
                rewards.append(0.0)
        return rewards

    def answer_key(self, completion) -> str | None:
        """What `completion` votes for in a majority vote (Cons@n): the answer the score read, in math-verify's
        canonical form, so that equal answers vote together (``\\frac{1}{2}``, ``0.5`` and ``\\frac12``; ``x^2+1``
        and ``1+x^2``; ``\\{1,2\\}`` and ``\\{2,1\\}``). None when the score read no answer; without math-verify, or
        when it cannot parse the answer, the answer's `normalize_answer` form."""
        try:
            candidate, anchored = self._candidate(completion_text(completion))
            if candidate is None:
                return None
            math_verify = _load_math_verify()
            if math_verify is not None:
                parsed = _parse(math_verify, candidate, anchored)
                if parsed and not isinstance(parsed[0], str):
                    expression = parsed[0]
                    if getattr(expression, "is_Float", False):  # 12.0 votes with 12, 0.5 with 1/2
                        import sympy

                        expression = sympy.nsimplify(expression, rational=True)
                    return str(expression)
                if parsed and not anchored:
                    return str(parsed[-1])
            return normalize_answer(candidate) if anchored else None
        except Exception:  # noqa: BLE001 -- model output never stops an evaluation
            return None

    def __repr__(self) -> str:
        return f"MathAnswerReward(anchored={self.anchored})"


def _timeout():
    # signal.alarm only works in the main thread; elsewhere math-verify refuses a timeout, so run without one.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(math_verify, candidate: str, anchored: bool):
    parse, _ = math_verify
    timeout = _timeout()
    if anchored:  # wrapping in $...$ lets the LaTeX extractor read bare expressions such as "\frac{1}{2}"
        return parse(f"${candidate}$", parsing_timeout=timeout) or parse(candidate, parsing_timeout=timeout)
    return parse(candidate, parsing_timeout=timeout)


def _math_verify_match(math_verify, candidate: str, anchored: bool, gold: str) -> float:
    _, verify = math_verify
    timeout = _timeout()
    gold_parsed = _parse(math_verify, gold, True)
    pred_parsed = _parse(math_verify, candidate, anchored)
    if not gold_parsed or not pred_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=timeout) else 0.0


# The registered judge "math": anchored answers only. `MathAnswerReward(anchored=False)` is the loose form
# (`judge_args: {anchored: false}`).
math_answer_reward = MathAnswerReward()


def math_answer_key(completion) -> str | None:
    """`math_answer_reward.answer_key`: the vote of `completion` under the (anchored) math judge."""
    return math_answer_reward.answer_key(completion)
