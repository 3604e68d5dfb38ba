"""The code judge: a completion's program runs against its problem's tests in the sandbox (`trl_shaped.sandbox`).

    extract_code(text)              the last fenced python block (```python, ```py or bare ```), else the whole text
    CodeReward(all_or_nothing, limits, workers)
                                    a TRL reward function: the fraction of the tests a completion's program passes
    code_reward = CodeReward()      the registered judge "code" (fraction of tests, default limits)

The dataset column ``tests`` holds, per problem, a list of Python statements that raise when the program is wrong
(MBPP's ``test_list`` form, e.g. ``"assert add(2, 3) == 5"``); the converters of `code_tests.py` make this form from
HumanEval and from standard input/output pairs. A program never runs in the training process. Where the test's form
allows it (stdin/stdout pairs, ``assert f(args) == literal`` and the like) the program only produces its output or
values and the comparison happens here, outside its process; other tests (HumanEval's ``check``) are judged inside
it, the weaker guarantee (`trl_shaped.sandbox.verdict`). A program that crashes, hangs or attacks scores 0.0.
"""

import json
import re

from ..sandbox import Program, SandboxLimits, get_sandbox
from ..validation import check_int
from .answers import completion_text

# An opening fence and its language tag; a closing fence is a line that starts with three backticks.
_OPENING = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n")
_CLOSING = re.compile(r"\n[ \t]*```")
_PYTHON_TAGS = ("", "python", "python3", "py")


def extract_code(text) -> str:
    """The program written in `text`: its last fenced block marked ```python, ```py or unmarked, else the whole text.

    Blocks in other languages (```bash, ```text) are skipped; an unclosed last block runs to the end of the text
    (a completion cut by the length limit). Non-strings give "".
    """
    if not isinstance(text, str):
        return ""
    last, position = None, 0
    while (opening := _OPENING.search(text, position)) is not None:
        closing = _CLOSING.search(text, opening.end() - 1)
        end = closing.start() if closing else len(text)
        if opening.group(1).lower() in _PYTHON_TAGS:
            last = text[opening.end() : end]
        if closing is None:
            break
        position = closing.end()
    return last if last is not None else text


def normalized_code(text) -> str | None:
    """The extracted program with trailing spaces, blank lines and ``#`` comment lines removed, for majority votes;
    None when no code is left."""
    lines = [line.rstrip() for line in extract_code(text).splitlines()]
    kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(kept) or None


def _json_statements(value) -> list | None:
    """A list of statements stored as a JSON string (a CSV or string column), else None."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = json.loads(value)
        except ValueError:
            return None
        if isinstance(decoded, list) and all(isinstance(t, str) for t in decoded):
            return decoded
    return None


def _tests_per_completion(tests, n: int) -> list:
    """One list of statements per completion, from TRL's column (a list, or a JSON string, per completion) or, for
    a direct call, from one problem's list of statements."""
    if isinstance(tests, (list, tuple)) and len(tests) == n:
        if all(isinstance(t, (list, tuple)) for t in tests):
            return [list(t) for t in tests]
        decoded = [_json_statements(t) for t in tests]
        if all(d is not None for d in decoded):
            return decoded
    if (
        isinstance(tests, (list, tuple))
        and all(isinstance(t, str) for t in tests)
        and _json_statements(tests[0]) is None
    ):
        return [list(tests)] * n  # one problem's tests for every completion (a direct call)
    raise ValueError(
        f"tests must be a list of test-statement lists (or JSON strings of them), one per completion ({n}), or one "
        f"list of statements; got {type(tests).__name__}"
    )


class CodeReward:
    """Reward by running each completion's program against its problem's tests in the sandbox.

    Called as a TRL reward function, ``reward(completions, tests, **kwargs) -> list[float]``: ``completions`` plain or
    conversational, ``tests`` one list of statements per completion (the dataset's ``tests`` column). Logged under
    ``__name__`` (``code_reward``), as TRL names reward functions.

    Args:
        all_or_nothing (`bool`, defaults to `False`): 1.0 only when every test passes, else 0.0 (instead of the
            fraction of tests passed).
        limits (`SandboxLimits`, *optional*): per-program limits (defaults: `SandboxLimits()`).
        workers (`int`, *optional*): programs run at once (defaults to the number of CPU cores).
        sandbox (`trl_shaped.sandbox.Sandbox`, *optional*): the backend to use instead of the shared local one.
    """

    __name__ = "code_reward"

    def __init__(self, all_or_nothing: bool = False, limits: SandboxLimits | None = None, workers=None, sandbox=None):
        if not isinstance(all_or_nothing, bool):
            raise ValueError(f"all_or_nothing must be True or False, got {all_or_nothing!r}")
        if limits is not None and not isinstance(limits, SandboxLimits):
            raise ValueError(f"limits must be a SandboxLimits or None, got {type(limits).__name__}")
        if workers is not None:
            check_int("workers", workers, minimum=1, note="or None")
        self.all_or_nothing, self.limits, self.workers, self._sandbox = all_or_nothing, limits, workers, sandbox

    @property
    def sandbox(self):
        return self._sandbox if self._sandbox is not None else get_sandbox(self.limits, self.workers)

    @staticmethod
    def answer_key(completion) -> str | None:
        """What Cons@n votes on: the completion's normalised program (None without code)."""
        return normalized_code(completion_text(completion))

    def __call__(self, completions, tests, **kwargs) -> list[float]:
        per_completion = _tests_per_completion(tests, len(completions))
        programs = [
            Program(extract_code(completion_text(c)), [t for t in problem_tests if isinstance(t, str)])
            for c, problem_tests in zip(completions, per_completion, strict=True)
        ]
        outcomes = self.sandbox.run_tests(programs)
        if self.all_or_nothing:
            return [1.0 if o.status == "ok" and o.total and o.passed == o.total else 0.0 for o in outcomes]
        return [o.fraction for o in outcomes]

    def __repr__(self) -> str:
        return f"CodeReward(all_or_nothing={self.all_or_nothing}, limits={self.limits!r})"


code_reward = CodeReward()
