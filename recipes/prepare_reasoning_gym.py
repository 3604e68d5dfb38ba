"""Write a reasoning-gym task as the prompt / completion / answer / reasoning_gym JSON lines the logic recipes read.

```bash
pip install 'trl_shaped[reasoning]'
python recipes/prepare_reasoning_gym.py data/propositional_logic     # the default task (propositional_logic)
python recipes/prepare_reasoning_gym.py data/kk --task knights_knaves --config '{"n_people": 3}'
```

writes `<output_dir>/{sft,rl,test}.jsonl`: disjoint problems drawn from `--seed` (`trl_shaped.tasks.ReasoningGymTask`,
which says how the splits and prompts are made). Every row has `prompt`, `answer` and `reasoning_gym` (the entry as
JSON, read by the `reasoning_gym` judge, `trl_shaped.rewards.reasoning_gym_reward`); `sft` and `test` rows also
have the reference `completion` (`#### <answer>`). `--full_questions` keeps reasoning-gym's questions whole (the
default drops the instruction lines every question repeats; a chat model at real scale may want them).
"""

import argparse
import json
from pathlib import Path

from trl_shaped.tasks.reasoning_gym import DEFAULT_DATASET, ReasoningGymTask


def prepare(
    output_dir,
    *,
    task: str = DEFAULT_DATASET,
    config: dict | None = None,
    num_train: int = 2000,
    num_rl: int = 2000,
    num_test: int = 500,
    seed: int = 0,
    compact: bool = True,
) -> Path:
    """Write `<output_dir>/{sft,rl,test}.jsonl` for the reasoning-gym task `task`; returns output_dir."""
    data = ReasoningGymTask(dataset=task, config=config or {}, compact=compact).build_datasets(
        num_train=num_train, num_rl=num_rl, num_test=num_test, seed=seed
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in data.items():
        dataset.to_json(out / f"{split}.jsonl", lines=True, force_ascii=False)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default=f"data/{DEFAULT_DATASET}")
    parser.add_argument("--task", default=DEFAULT_DATASET, help="reasoning-gym task name (default: %(default)s)")
    parser.add_argument("--config", default="{}", help="the task's settings as a JSON object, e.g. its difficulty")
    parser.add_argument("--num_train", type=int, default=2000, help="problems of the sft split")
    parser.add_argument("--num_rl", type=int, default=2000, help="problems of the rl split")
    parser.add_argument("--num_test", type=int, default=500, help="problems of the test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full_questions", action="store_true", help="keep the questions' instruction lines")
    args = parser.parse_args()
    print(
        prepare(
            args.output_dir,
            task=args.task,
            config=json.loads(args.config),
            num_train=args.num_train,
            num_rl=args.num_rl,
            num_test=args.num_test,
            seed=args.seed,
            compact=not args.full_questions,
        )
    )
