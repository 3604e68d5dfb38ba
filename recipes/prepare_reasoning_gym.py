"""Write reasoning-gym problems (the logic suite by default) as the prompt / completion / answer / reasoning_gym JSON
lines the logic recipes read.

```bash
pip install 'trl_shaped[reasoning]'
python recipes/prepare_reasoning_gym.py data/logic --full_questions           # the logic suite (rl_logic.yaml)
python recipes/prepare_reasoning_gym.py data/logic2 --config '{"datasets": ["syllogism", "knights_knaves"]}'
python recipes/prepare_reasoning_gym.py data/kk --task knights_knaves --config '{"n_people": 3}'
```

`--task composite` (the default) is reasoning-gym's composite dataset: a mixture whose problems are drawn from its
members by weight, by default the logic suite (`trl_shaped.tasks.reasoning_gym.LOGIC_SUITE`: aiw, circuit_logic,
knights_knaves, mini_sudoku, propositional_logic, self_reference, syllogism, zebra_puzzles, weight 1 each); `--config
'{"datasets": [...]}'` names another (puzzle names, or reasoning-gym's `{"name", "weight", "config"}` specs). Any
other `--task` is one reasoning-gym puzzle, `--config` its settings.

Writes `<output_dir>/{sft,rl,test}.jsonl`: disjoint problems drawn from `--seed` (`trl_shaped.tasks.ReasoningGymTask`,
which says how the splits and prompts are made). Every row has `prompt`, `answer` and `reasoning_gym` (the entry as
JSON, read by the `reasoning_gym` judge, `trl_shaped.rewards.reasoning_gym_reward`, the same in GRPO and in the
evaluation); `sft` and `test` rows also have the reference `completion`, `<answer>...</answer>` (reasoning-gym's own
form, which holds multi-line answers such as mini_sudoku's grid; `--answer_format mark` writes `#### <answer>`
instead, for one-line answers). Every prompt ends with a line naming that form. `--full_questions` keeps
reasoning-gym's questions whole (the default drops the instruction preamble every question of a puzzle repeats, and
keeps the question itself; a chat model at real scale wants whole questions).
"""

import argparse
import json
from pathlib import Path

from trl_shaped.tasks.reasoning_gym import ANSWER_FORMATS, COMPOSITE, ReasoningGymTask


def prepare(
    output_dir,
    *,
    task: str = COMPOSITE,
    config: dict | None = None,
    num_train: int = 2000,
    num_rl: int = 2000,
    num_test: int = 500,
    seed: int = 0,
    compact: bool = True,
    answer_format: str = "tags",
) -> Path:
    """Write `<output_dir>/{sft,rl,test}.jsonl` for the reasoning-gym task `task` (``composite``: a mixture, the logic
    suite unless `config` names its ``datasets``); returns output_dir. `config` None or empty: the task's default."""
    data = ReasoningGymTask(dataset=task, config=config or None, compact=compact, answer_format=answer_format)
    data = data.build_datasets(num_train=num_train, num_rl=num_rl, num_test=num_test, seed=seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in data.items():
        dataset.to_json(out / f"{split}.jsonl", lines=True, force_ascii=False)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default="data/logic")
    parser.add_argument(
        "--task", default=COMPOSITE, help="reasoning-gym task name, or composite (default: %(default)s)"
    )
    parser.add_argument("--config", default="{}", help="the task's settings as a JSON object (composite: its datasets)")
    parser.add_argument("--num_train", type=int, default=2000, help="problems of the sft split")
    parser.add_argument("--num_rl", type=int, default=2000, help="problems of the rl split")
    parser.add_argument("--num_test", type=int, default=500, help="problems of the test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full_questions", action="store_true", help="keep the questions' instruction preambles")
    parser.add_argument(
        "--answer_format", default="tags", choices=sorted(ANSWER_FORMATS), help="reference completions' answer form"
    )
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
            answer_format=args.answer_format,
        )
    )
