"""Write GSM8K as the prompt / completion / answer JSON lines the RL, LoRA and eval recipes read.

```bash
python recipes/prepare_gsm8k.py data/gsm8k     # data/gsm8k/{train,test}.jsonl
```

GSM8K's worked solutions already end with "#### <integer>", the format `trl_shaped.rewards.extract_answer`
reads: `completion` is the solution, `answer` the integer after "####" (thousands commas removed), `prompt` the
question followed by "\\nAnswer: ".
"""

import argparse
from pathlib import Path


def to_row(example: dict) -> dict:
    solution = example["answer"].strip()
    return {
        "prompt": example["question"].strip() + "\nAnswer: ",
        "completion": solution,
        "answer": solution.rsplit("####", 1)[1].strip().replace(",", ""),
    }


def prepare(output_dir, *, dataset_name: str = "openai/gsm8k", config: str = "main") -> Path:
    """Download `dataset_name` and write `<output_dir>/{train,test}.jsonl`; returns output_dir."""
    from datasets import load_dataset

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in load_dataset(dataset_name, config).items():
        dataset.map(to_row, remove_columns=dataset.column_names).to_json(out / f"{split}.jsonl", lines=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default="data/gsm8k")
    print(prepare(parser.parse_args().output_dir))
