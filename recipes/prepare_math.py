"""Write math benchmarks (MATH-500, AIME, GSM8K) as the `problem` / `answer` / `solution` JSON lines the math recipes read.

```bash
python recipes/prepare_math.py data/math --source math500=HuggingFaceH4/MATH-500 \
    --source aime24=Maxwell-Jia/AIME_2024 --source gsm8k=openai/gsm8k:main
python recipes/prepare_math.py data/math --source math500=downloads/math500.jsonl   # local files, no hub
```

writes `<output_dir>/<name>.jsonl` per source. A source is a hub name (`name:config` for a configuration), a local
directory or a data file (.json/.jsonl/.csv/.parquet); its layout is read from its columns:

    MATH-500   problem, solution, answer, subject, level, unique_id     answer as given (LaTeX)
    AIME       problem, solution, answer (AI-MO/aimo-validation-aime, and yentinglin/aime_2025's problem, answer);
               Problem, Solution, Answer (Maxwell-Jia/AIME_2024); question, answer (opencompass/AIME2025)
    GSM8K      question, answer ("<worked solution> #### 72")             answer: the number after "####"

Every row gets `problem`, `answer` (text) and `solution` (the reference solution, the evaluation's held-out text;
None where the dataset has none); the dataset's other columns are kept. `recipes/eval_math.yaml` and
`recipes/rl_math.yaml` read these columns (`prompt_column: problem`, the `math` template and judge).
"""

import argparse
import json
import sys
from pathlib import Path

# accepted column names (compared case-insensitively) -> the column written
PROBLEM_NAMES = ("problem", "question")
ANSWER_NAMES = ("answer",)
SOLUTION_NAMES = ("solution",)


def _find(row: dict, names) -> str | None:
    lowered = {key.lower(): key for key in row}
    return next((lowered[name] for name in names if name in lowered), None)


def to_row(example: dict) -> dict:
    """One benchmark row in the recipes' columns (see the module docstring).

    Raises:
        ValueError: naming the columns found and the ones accepted, for a row without a problem or an answer.
    """
    problem_key, answer_key = _find(example, PROBLEM_NAMES), _find(example, ANSWER_NAMES)
    if problem_key is None or answer_key is None:
        raise ValueError(
            f"a math row needs a problem column ({'/'.join(PROBLEM_NAMES)}) and an answer column "
            f"({'/'.join(ANSWER_NAMES)}), case-insensitive; this one has {sorted(example)}"
        )
    solution_key = _find(example, SOLUTION_NAMES)
    answer, solution = example[answer_key], example[solution_key] if solution_key else None
    if answer is None or not str(answer).strip():
        raise ValueError(f"a math row has an empty {answer_key!r}: {str(example[problem_key])[:80]!r}")
    answer = str(answer).strip()
    if solution_key is None and "####" in answer:  # GSM8K: the worked solution ends with "#### <number>"
        solution, answer = answer, answer.rsplit("####", 1)[1].strip().replace(",", "")
    rest = {k: v for k, v in example.items() if k not in (problem_key, answer_key, solution_key)}
    return {**rest, "problem": str(example[problem_key]).strip(), "answer": answer, "solution": solution}


def read_source(source: str, split: str = "test") -> list[dict]:
    """The rows of `source` (a data file, a directory or a hub name, `name:config`), split `split` (the only split
    when it has one, such as AIME 2024's train)."""
    from trl_shaped.scripts.data import load_datasets

    name, config = source, None
    if ":" in source and not Path(source).exists():  # a hub name with its configuration, e.g. openai/gsm8k:main
        name, config = source.rsplit(":", 1)
    dataset = load_datasets(name, name=config)
    if split not in dataset:
        if len(dataset) != 1:
            raise ValueError(f"split {split!r} is not a split of {source!r}; available: {sorted(dataset)}")
        split = next(iter(dataset))
    return [dict(row) for row in dataset[split]]


def prepare(output_dir, sources: dict[str, str], *, split: str = "test") -> dict[str, Path]:
    """Write `<output_dir>/<name>.jsonl` for every `name -> source` of `sources`; returns the paths written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, source in sources.items():
        rows = [to_row(row) for row in read_source(source, split)]
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
        written[name] = path
    return written


def _sources(items: list[str]) -> dict[str, str]:
    sources = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"--source must be NAME=SOURCE (a file, a directory or a hub name), got {item!r}")
        sources[name] = source
    return sources


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default="data/math")
    parser.add_argument("--source", action="append", required=True, help="NAME=SOURCE, repeated (see above)")
    parser.add_argument("--split", default="test", help="the split to read (a one-split dataset: that split)")
    args = parser.parse_args()
    try:
        paths = prepare(args.output_dir, _sources(args.source), split=args.split)
    except ValueError as error:
        parser.error(str(error))
    for name, path in paths.items():
        print(f"{name}: {path}", file=sys.stdout)
