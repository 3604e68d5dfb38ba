"""Stage 1: shaped SFT / continued pre-training with `ShapedSFTTrainer` (TRL's `trl/scripts/sft.py` layout).

```bash
trl-shaped sft --config recipes/stage1.yaml --shaping_preset precision --output_dir runs/stage1_precision
accelerate launch --config_file accelerate_configs/zero2.yaml recipes/sft.py --config recipes/stage1.yaml \\
    --shaping_preset precision --output_dir runs/stage1_precision
```
"""

from trl_shaped.scripts import end_launched_process, make_trl_parser, run_script, train_and_save, write_log_history
from trl_shaped.scripts.data import ShapedScriptArguments
from trl_shaped.scripts.loading import trainer_inputs


def main(script_args, training_args, model_args, dataset_args=None):
    """Train `model_args.model_name_or_path` with the shaped loss of `training_args` and save it to output_dir."""
    from trl_shaped import ShapedSFTTrainer

    _, trainer_kwargs = trainer_inputs(script_args, training_args, model_args, dataset_args)
    trainer = ShapedSFTTrainer(**trainer_kwargs)
    train_and_save(trainer, script_args, training_args)
    write_log_history(trainer, training_args.output_dir)  # the run's curves, with or without checkpoints
    return trainer


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig

    from trl_shaped import ShapedSFTConfig

    return make_trl_parser((ShapedScriptArguments, ShapedSFTConfig, ModelConfig, DatasetMixtureConfig), prog)


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides) and train."""
    return run_script(make_parser, main, argv, prog)


if __name__ == "__main__":
    run()
    end_launched_process()
