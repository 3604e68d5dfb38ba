"""The code judge: a completion's program runs against its problem's tests in the sandbox (`trl_shaped.sandbox`).

    extract_code(text, tests)       the program a completion means: the blocks defining what the tests need
                                    (`code_extraction.py`)
    program_text(completion, code_prefix, tests)
                                    the program the judge runs: the completion's code, after the row's code prefix
    CodeReward(all_or_nothing, limits, workers)
                                    a TRL reward function: the fraction of the tests a completion's program passes;
                                    `vote_keys` gives what each completion votes for in Cons@n (its behaviour)
    code_reward = CodeReward()      the registered judge "code" (fraction of tests, default limits)

The dataset column ``tests`` holds, per problem, a list of Python statements that raise when the program is wrong
(MBPP's ``test_list`` form, e.g. ``"assert add(2, 3) == 5"``); the converters of `code_tests.py` make this form from
the benchmarks' layouts. The optional column ``code_prefix`` holds code that runs before the program: HumanEval's
prompt (a completion may continue it, as the human-eval harness scores prompt + completion, or be a whole function
that uses its imports and helpers) or the imports a benchmark's own harness provides (APPS, LiveCodeBench).
A program never runs in the training process. Where the test's form allows it (stdin/stdout pairs,
``assert f(args) == literal`` and the like) the program only produces its output or values and the comparison happens
here, outside its process; other tests (HumanEval's ``check``) are judged inside it, the weaker guarantee
(`trl_shaped.sandbox.verdict`). A program that crashes, hangs or attacks scores 0.0.
"""

import ast
import dataclasses
import json
from collections.abc import Mapping

from ..sandbox import Program, SandboxLimits, get_sandbox
from ..validation import check_int
from .answers import completion_text
from .code_extraction import extract_code


def normalized_code(text) -> str | None:
    """The extracted program with trailing spaces, blank lines and ``#`` comment lines removed, for majority votes;
    None when no code is left."""
    lines = [line.rstrip() for line in extract_code(text).splitlines()]
    kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(kept) or None


# Where the human-eval harness's generations stop (the Codex paper's stop sequences): a continuation that does not
# parse as a whole is tried again cut at the first of them.
_CONTINUATION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


# Programs that give no answer on any tests (nothing defined or printed; an error on every test): their behaviours
# are what "no answer" looks like to Cons@n.
_NO_ANSWER_PROGRAMS = ("pass", "raise SystemExit(1)")


def _parses(code: str) -> bool:
    """Whether `code` is Python that compiles (parsed on the host, never run)."""
    try:
        compile(code, "<program>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


def program_text(completion, code_prefix: str | None = None, tests=None) -> str:
    """The program the judge runs for `completion` (plain or conversational).

    Without `code_prefix`: the completion's code (`extract_code`). With one (HumanEval's prompt, or a benchmark's
    imports), the first of these that parses: ``code_prefix + completion`` (a continuation of the prefix, as the
    human-eval harness runs it), the same cut at the first stop sequence of the human-eval harness (a base model
    that went on writing), ``code_prefix`` then the completion's code (a whole function after the prompt: the
    function redefines the prompt's docstring-only one and can use its imports and helpers), the completion's code
    alone. When none parses, ``code_prefix`` then the completion's code (which fails in the sandbox).
    """
    text = completion_text(completion)
    code = extract_code(text, tests)
    if not code_prefix:
        return code
    joined = code_prefix.rstrip("\n") + "\n" + code
    candidates = [code_prefix + text]
    cuts = [text.find(stop) for stop in _CONTINUATION_STOPS if stop in text]
    if cuts:
        candidates.append(code_prefix + text[: min(cuts)])
    candidates += [joined, code]
    return next((candidate for candidate in candidates if _parses(candidate)), joined)


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


def _prefixes_per_completion(code_prefix, n: int) -> list:
    """One code prefix (or None) per completion, from TRL's column or, for a direct call, one string for all."""
    if code_prefix is None or isinstance(code_prefix, str):
        return [code_prefix or None] * n
    if isinstance(code_prefix, (list, tuple)) and len(code_prefix) == n:
        if all(p is None or isinstance(p, str) for p in code_prefix):
            return [p or None for p in code_prefix]
    raise ValueError(
        f"code_prefix must be a string, None, or a list of strings (or None), one per completion ({n}); got "
        f"{type(code_prefix).__name__}"
    )


class CodeReward:
    """Reward by running each completion's program against its problem's tests in the sandbox.

    Called as a TRL reward function, ``reward(completions, tests, code_prefix=None, **kwargs) -> list[float]``:
    ``completions`` plain or conversational, ``tests`` one list of statements per completion (the dataset's ``tests``
    column), ``code_prefix`` the dataset's optional column of code run before the program (see `program_text`).
    Logged under ``__name__`` (``code_reward``), as TRL names reward functions.

    For Cons@n, ``vote_keys(completions, tests, code_prefix=None)`` gives what each completion votes for: the digest
    of its program's outputs on the tests judged outside the program (``TestOutcome.behaviour``), so right programs
    written differently pool; where the sandbox gives no behaviour (tests that run in-process, such as HumanEval's
    ``check``, or a program without a result), the normalised program text (`normalized_code`). A program that does
    not parse, or that behaves as one that gives no answer (an error, or no output, on every test), does not vote.
    The outcomes of the last call are reused, so scoring then voting runs each program once (and, with behaviour,
    two programs that give no answer per problem).

    Args:
        all_or_nothing (`bool`, defaults to `False`): 1.0 only when every test passes, else 0.0 (instead of the
            fraction of tests passed).
        limits (`SandboxLimits` or `dict`, *optional*): per-program limits (defaults: `SandboxLimits()`); a mapping
            (a recipe's ``judge_args: {limits: {wall_time_s: 2}}``) is passed to `SandboxLimits` as keyword arguments.
        workers (`int`, *optional*): programs run at once (defaults to the number of CPU cores).
        sandbox (`trl_shaped.sandbox.Sandbox`, *optional*): the backend to use instead of the shared local one.
    """

    __name__ = "code_reward"

    def __init__(self, all_or_nothing: bool = False, limits: SandboxLimits | None = None, workers=None, sandbox=None):
        if not isinstance(all_or_nothing, bool):
            raise ValueError(f"all_or_nothing must be True or False, got {all_or_nothing!r}")
        if isinstance(limits, Mapping):
            fields = [f.name for f in dataclasses.fields(SandboxLimits)]
            unknown = sorted(set(limits) - set(fields))
            if unknown:
                raise ValueError(f"limits has unknown fields {unknown}; SandboxLimits fields: {fields}")
            limits = SandboxLimits(**limits)
        if limits is not None and not isinstance(limits, SandboxLimits):
            raise ValueError(
                f"limits must be a SandboxLimits, a mapping of its fields or None, got {type(limits).__name__}"
            )
        if workers is not None:
            check_int("workers", workers, minimum=1, note="or None")
        self.all_or_nothing, self.limits, self.workers, self._sandbox = all_or_nothing, limits, workers, sandbox
        self._last_outcomes: dict = {}  # Program -> TestOutcome of the last run, for vote_keys after scoring

    @property
    def sandbox(self):
        return self._sandbox if self._sandbox is not None else get_sandbox(self.limits, self.workers)

    @staticmethod
    def answer_key(completion) -> str | None:
        """What Cons@n votes on: the completion's normalised program (None without code)."""
        return normalized_code(completion_text(completion))

    @staticmethod
    def extract(completion) -> str:
        """The program the judge reads in `completion` (before any code prefix), for the evaluation's records."""
        return extract_code(completion_text(completion))

    def _programs(self, completions, tests, code_prefix) -> list[Program]:
        per_completion = _tests_per_completion(tests, len(completions))
        prefixes = _prefixes_per_completion(code_prefix, len(completions))
        programs = []
        for completion, problem_tests, prefix in zip(completions, per_completion, prefixes, strict=True):
            statements = [t for t in problem_tests if isinstance(t, str)]
            programs.append(Program(program_text(completion, prefix, statements), statements))
        return programs

    def _run(self, programs: list[Program]) -> list:
        """The programs' outcomes, reusing those of the last run for the same programs (vote_keys after a call)."""
        known = self._last_outcomes
        todo = list(dict.fromkeys(p for p in programs if p not in known))
        fresh = dict(zip(todo, self.sandbox.run_tests(todo), strict=True)) if todo else {}
        outcomes = [known[p] if p in known else fresh[p] for p in programs]
        self._last_outcomes = dict(zip(programs, outcomes, strict=True))
        return outcomes

    def vote_keys(self, completions, tests, code_prefix=None, **kwargs) -> list[str | None]:
        """What each completion votes for in Cons@n: ``behaviour:<digest>`` of its program's outputs on the tests
        judged outside the program when the sandbox gives one, else its normalised program text. None (no vote) for
        a program that does not parse, a completion without code, a program without a result (timed out, killed),
        and a program that behaves as one that gives no
        answer (``pass``, which defines and prints nothing, or ``raise SystemExit(1)``, which fails every test with
        an error): as a math completion without an answer; else programs that crash in different ways would pool
        and could outvote right ones.
        Arguments as for a call."""
        programs = self._programs(completions, tests, code_prefix)
        outcomes = self._run(programs)
        behaviours = [getattr(o, "behaviour", None) if o.status == "ok" else None for o in outcomes]
        no_answer = set()  # (tests, behaviour) of the programs that give no answer, run once per problem
        if any(b is not None for b in behaviours):
            probes = list(dict.fromkeys(Program(code, p.tests) for p in programs for code in _NO_ANSWER_PROGRAMS))
            probe_outcomes = self._run(programs + probes)[len(programs) :]
            no_answer = {(p.tests, getattr(o, "behaviour", None)) for p, o in zip(probes, probe_outcomes, strict=True)}
        keys = []
        for completion, program, outcome, behaviour in zip(completions, programs, outcomes, behaviours, strict=True):
            silent = behaviour is not None and (program.tests, behaviour) in no_answer
            if outcome.status != "ok" or silent or not _parses(program.code):
                keys.append(None)
            elif behaviour is not None:
                keys.append(f"behaviour:{behaviour}")
            else:
                keys.append(normalized_code(completion_text(completion)))
        return keys

    def __call__(self, completions, tests, code_prefix=None, **kwargs) -> list[float]:
        outcomes = self._run(self._programs(completions, tests, code_prefix))
        if self.all_or_nothing:
            return [1.0 if o.status == "ok" and o.total and o.passed == o.total else 0.0 for o in outcomes]
        return [o.fraction for o in outcomes]

    def __repr__(self) -> str:
        return f"CodeReward(all_or_nothing={self.all_or_nothing}, limits={self.limits!r})"


code_reward = CodeReward()
