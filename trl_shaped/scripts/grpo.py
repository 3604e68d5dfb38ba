"""Stage 2: GRPO (RLVR) from a stage-1 checkpoint with `ShapedGRPOTrainer` (TRL's `trl/scripts/grpo.py` layout).

```bash
trl-shaped grpo --config recipes/rl_paper.yaml --model_name_or_path runs/stage1_precision
accelerate launch --config_file accelerate_configs/zero3.yaml recipes/grpo.py --config recipes/rl_paper.yaml
```
"""

from dataclasses import dataclass, field

from trl_shaped.rewards.judges import JUDGES, get_judge
from trl_shaped.scripts import end_launched_process, make_trl_parser, run_script, train_and_save, write_log_history
from trl_shaped.scripts.data import ShapedScriptArguments
from trl_shaped.scripts.loading import split_or_fail, trainer_inputs


@dataclass
class ShapedGRPOScriptArguments(ShapedScriptArguments):
    """Dataset arguments plus the reward functions.

    Args:
        reward_funcs (`list[str]`):
            Reward functions: judges (`exact`, `math`, `code`, `reasoning_gym`: the names `trl-shaped eval --judge`
            takes, so RL and evaluation score alike), names from `trl_shaped.rewards` (`exact_answer_reward`,
            `math_answer_reward`), names from `trl.rewards`, or dotted import paths (`my_pkg.rewards.my_reward`).
            The dataset's columns reach them as keyword arguments (`answer`, `tests`, ...).
        aux_dataset_split (`str`, *optional*):
            Split of the dataset holding supervised rows for the auxiliary shaped loss (`shaping_aux_coef > 0`).
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["exact"],
        metadata={
            "help": f"Reward functions: judges {sorted(JUDGES)} (the names `trl-shaped eval --judge` takes), names "
            "from trl_shaped.rewards (exact_answer_reward, math_answer_reward), names from trl.rewards, or dotted "
            "import paths (my_pkg.rewards.my_reward)."
        },
    )
    aux_dataset_split: str | None = field(
        default=None,
        metadata={
            "help": "Split of the dataset with supervised (prompt-completion or text) rows for the auxiliary shaped "
            "loss (needs shaping_aux_coef > 0), e.g. `aux` with dataset_data_files `aux=data/sft.jsonl`."
        },
    )


def resolve_reward_funcs(names: list[str]) -> list:
    """Reward callables for `names` (see `ShapedGRPOScriptArguments.reward_funcs`); unknown names fail clearly.

    A judge name (`trl_shaped.rewards.JUDGES`: exact, math, code, reasoning_gym) and a dotted import path resolve
    through `get_judge`, as `trl-shaped eval --judge` does, so RL and evaluation use one function per name; a bare
    name is a function of `trl_shaped.rewards` or of `trl.rewards`.
    """
    from trl_shaped import rewards as shaped_rewards

    funcs = []
    for name in names:
        if name in JUDGES or "." in name or ":" in name:
            funcs.append(get_judge(name))
            continue
        func = getattr(shaped_rewards, name, None) if name.endswith("_reward") else None
        if func is None:
            import trl.rewards

            func = getattr(trl.rewards, name, None)
        if not callable(func):
            known = sorted(n for n in dir(shaped_rewards) if n.endswith("_reward") and not n.startswith("_"))
            raise ValueError(
                f"reward_funcs: unknown reward function {name!r}; use a judge out of {sorted(JUDGES)}, one of "
                f"{known}, a name from trl.rewards, or a dotted import path"
            )
        funcs.append(func)
    if not funcs:
        raise ValueError("reward_funcs must name at least one reward function")
    return funcs


def main(script_args, training_args, model_args, dataset_args=None):
    """Run GRPO from `model_args.model_name_or_path` (the stage-1 checkpoint: the drift diagnostics' prior, and the KL
    reference when beta > 0) and save it."""
    from trl_shaped import ShapedGRPOTrainer

    reward_funcs = resolve_reward_funcs(script_args.reward_funcs)
    dataset, trainer_kwargs = trainer_inputs(
        script_args, training_args, model_args, dataset_args, model_help=" (the stage-1 checkpoint)"
    )
    if script_args.aux_dataset_split is not None:
        trainer_kwargs["aux_dataset"] = split_or_fail(dataset, script_args.aux_dataset_split, "aux_dataset_split")
    trainer = ShapedGRPOTrainer(reward_funcs=reward_funcs, **trainer_kwargs)
    train_and_save(trainer, script_args, training_args)
    write_log_history(trainer, training_args.output_dir)  # the run's curves, with or without checkpoints
    return trainer


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig

    from trl_shaped import ShapedGRPOConfig

    return make_trl_parser((ShapedGRPOScriptArguments, ShapedGRPOConfig, ModelConfig, DatasetMixtureConfig), prog)


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides) and train."""
    return run_script(make_parser, main, argv, prog)


if __name__ == "__main__":
    run()
    end_launched_process()
