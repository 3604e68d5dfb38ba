"""Write code problems (MBPP, HumanEval or standard input/output JSONL) as the prompt / tests / completion JSON lines
the code judge reads.

```bash
python recipes/prepare_code.py mbpp.jsonl data/code/mbpp.jsonl                       # format detected per row
python recipes/prepare_code.py humaneval.jsonl data/code/humaneval.jsonl --format humaneval
```

Each output row has ``prompt`` (the problem and the instruction to answer with a fenced Python block), ``tests``
(a list of Python statements, see `trl_shaped/rewards/code_tests.py`) and, when the input has a reference solution,
``completion`` (that solution in a fenced block, for SFT). Input formats, by their fields:

    mbpp       text, test_list (+ code, test_setup_code)
    humaneval  prompt, test, entry_point (+ canonical_solution): the program is the whole function
    stdio      question / question_content / prompt, and either inputs + outputs (lists of strings) or
               public_test_cases (LiveCodeBench: a JSON list of {"input", "output"}) (+ solution)
"""

import argparse
import json
from pathlib import Path

from trl_shaped.rewards.code_tests import humaneval_tests, mbpp_tests, stdio_tests

FORMATS = ("auto", "mbpp", "humaneval", "stdio")
ANSWER_WITH_CODE = "Answer with the complete program in one ```python code block."


def _fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def detect_format(row: dict) -> str:
    """The format of one input row, from its fields."""
    if "test_list" in row:
        return "mbpp"
    if "entry_point" in row and "test" in row:
        return "humaneval"
    if ("inputs" in row and "outputs" in row) or "public_test_cases" in row:
        return "stdio"
    raise ValueError(f"cannot tell the format of a row with fields {sorted(row)}: expected {FORMATS[1:]}")


def to_row(row: dict, format: str = "auto") -> dict:
    """One problem in the project's format: prompt, tests and, when the input has one, completion."""
    format = detect_format(row) if format == "auto" else format
    if format == "mbpp":
        tests = mbpp_tests(row["test_list"], row.get("test_setup_code") or "")
        listed = "\n".join(row["test_list"])
        prompt = f"{row['text'].strip()}\nYour code should pass these tests:\n{listed}\n{ANSWER_WITH_CODE}\n"
        solution = row.get("code")
    elif format == "humaneval":
        tests = humaneval_tests(row["test"], row["entry_point"])
        prompt = f"Complete the function `{row['entry_point']}`:\n{_fenced(row['prompt'])}\n{ANSWER_WITH_CODE}\n"
        solution = row["prompt"] + row["canonical_solution"] if row.get("canonical_solution") else None
    elif format == "stdio":
        if "public_test_cases" in row:
            cases = row["public_test_cases"]
            cases = json.loads(cases) if isinstance(cases, str) else cases
            inputs, outputs = [c["input"] for c in cases], [c["output"] for c in cases]
        else:
            inputs, outputs = row["inputs"], row["outputs"]
        tests = stdio_tests(inputs, outputs)
        question = row.get("question") or row.get("question_content") or row.get("prompt")
        if not isinstance(question, str):
            raise ValueError(f"a stdio row needs question, question_content or prompt, got fields {sorted(row)}")
        prompt = f"{question.strip()}\nRead from standard input and write to standard output.\n{ANSWER_WITH_CODE}\n"
        solution = row.get("solution")
    else:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    out = {"prompt": prompt, "tests": tests}
    if solution:
        out["completion"] = _fenced(solution)
    return out


def prepare(input_path, output_path, format: str = "auto") -> Path:
    """Convert every JSON line of `input_path` and write them to `output_path`; returns output_path."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    rows = [json.loads(line) for line in Path(input_path).read_text().splitlines() if line.strip()]
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(to_row(row, format)) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a JSON-lines file of MBPP, HumanEval or stdin/stdout problems")
    parser.add_argument("output", help="where to write the prompt / tests / completion JSON lines")
    parser.add_argument("--format", choices=FORMATS, default="auto")
    args = parser.parse_args()
    print(prepare(args.input, args.output, args.format))
