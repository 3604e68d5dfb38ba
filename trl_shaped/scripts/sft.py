"""Stage 1: shaped SFT / continued pre-training with `ShapedSFTTrainer` (TRL's `trl/scripts/sft.py` layout).

```bash
trl-shaped sft --config recipes/stage1_precision.yaml --model_name_or_path Qwen/Qwen3-0.6B-Base
accelerate launch --config_file accelerate_configs/zero2.yaml recipes/sft.py --config recipes/stage1_precision.yaml
```
"""

from trl_shaped.scripts import end_launched_process, parse_or_exit, train_and_save
from trl_shaped.scripts.data import ShapedScriptArguments, load_datasets


def model_init_kwargs(training_args, model_args) -> dict:
    """How the trainer loads `model_name_or_path`: ModelConfig's fields, then the config's own model_init_kwargs."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def load_script_datasets(script_args, dataset_args=None):
    """The dataset of a script: TRL's `datasets:` mixture when given, else a name / directory / data files."""
    from trl import get_dataset

    if dataset_args is not None and dataset_args.datasets:
        return get_dataset(dataset_args)
    return load_datasets(
        script_args.dataset_name,
        name=script_args.dataset_config,
        data_files=script_args.dataset_data_files,
        streaming=script_args.dataset_streaming,
    )


def split_or_fail(dataset, split: str, argument: str):
    if split not in dataset:
        raise ValueError(f"{argument}={split!r} is not a split of the dataset; available: {sorted(dataset)}")
    return dataset[split]


def main(script_args, training_args, model_args, dataset_args=None):
    """Train `model_args.model_name_or_path` with the shaped loss of `training_args` and save it to output_dir."""
    from trl import get_peft_config, get_quantization_config

    from trl_shaped import ShapedSFTTrainer

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: a hub name or a local directory")
    training_args.model_init_kwargs = model_init_kwargs(training_args, model_args)
    dataset = load_script_datasets(script_args, dataset_args)
    train_dataset = split_or_fail(dataset, script_args.dataset_train_split, "dataset_train_split")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = split_or_fail(dataset, script_args.dataset_test_split, "dataset_test_split")

    trainer = ShapedSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    return train_and_save(trainer, script_args, training_args)


def make_parser(prog: str | None = None):
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    from trl_shaped import ShapedSFTConfig

    return TrlParser((ShapedScriptArguments, ShapedSFTConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides) and train."""
    script_args, training_args, model_args, dataset_args = parse_or_exit(make_parser(prog), argv)
    return main(script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    run()
    end_launched_process()
