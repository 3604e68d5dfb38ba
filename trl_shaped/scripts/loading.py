"""What `trl-shaped sft` and `trl-shaped grpo` load before they build their trainer, in one place.

Both scripts take the same four argument groups (script, training, model, dataset mixture) and turn them into the
same trainer keywords: the model path, the training arguments (with the model's init kwargs filled in), the train and
eval splits, and the peft / quantization configs. `trainer_inputs` does that once; a script adds only what is its own
(GRPO: reward functions and the auxiliary split).
"""

from trl_shaped.checkpoints import resolve_resume
from trl_shaped.scripts.data import load_datasets


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
    """`dataset[split]`, or a ValueError naming `argument` and the splits there are."""
    if split not in dataset:
        raise ValueError(f"{argument}={split!r} is not a split of the dataset; available: {sorted(dataset)}")
    return dataset[split]


def trainer_inputs(script_args, training_args, model_args, dataset_args=None, *, model_help: str = "") -> tuple:
    """Load what both training scripts hand their trainer.

    `training_args.resume_from_checkpoint` ("true"/"last" or a path, as the command line gives it) is resolved here
    to a complete checkpoint folder (`trl_shaped.checkpoints.resolve_resume`), so a wrong value fails before loading.

    Args:
        script_args, training_args, model_args, dataset_args: the parsed argument groups of the script.
        model_help (`str`): what `model_name_or_path` should name, added to its error message.

    Returns:
        `(dataset, kwargs)`: the loaded `DatasetDict` (a script may take more splits from it) and the trainer keywords
        `model`, `args`, `train_dataset`, `eval_dataset` (only when `eval_strategy` is not "no"), `peft_config` and
        `quantization_config`.
    """
    from trl import get_peft_config, get_quantization_config

    if not model_args.model_name_or_path:
        raise ValueError(f"model_name_or_path is required: a hub name or a local directory{model_help}")
    # `--resume_from_checkpoint true|last|PATH` becomes a complete checkpoint folder (or an error) before any loading
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    training_args.resume_from_checkpoint = resume
    training_args.model_init_kwargs = model_init_kwargs(training_args, model_args)
    dataset = load_script_datasets(script_args, dataset_args)
    train_dataset = split_or_fail(dataset, script_args.dataset_train_split, "dataset_train_split")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = split_or_fail(dataset, script_args.dataset_test_split, "dataset_test_split")
    kwargs = dict(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    return dataset, kwargs
