"""`trl-shaped eval`: Avg@n / Cons@n / Pass@k and distribution diagnostics of a model on a dataset split.

```bash
trl-shaped eval --model_name_or_path runs/rl_precision --dataset_name data/test.jsonl --num_samples 64
```
"""

from trl_shaped.evaluation import EvalConfig, evaluate_main
from trl_shaped.scripts import parse_or_exit


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return TrlParser((EvalConfig,), prog=prog)


def main(config: EvalConfig) -> dict:
    return evaluate_main(config)


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides), evaluate, and write the files."""
    (config,) = parse_or_exit(make_parser(prog), argv)
    return main(config)


if __name__ == "__main__":
    run()
