"""Every part of TRL's private surface that `trl_shaped` relies on, in one place.

TRL's public API (`GRPOTrainer`, `SFTTrainer`, their configs, `trl.data_utils`) can be imported anywhere. What is not
public (helpers in `trl.trainer.utils` and `trl.models.utils`, the SFT data collator, private methods of the
trainers that we override or call, and conventions such as the name of TRL's reference adapter) is imported or
described here only, and `tests/test_compat.py` checks each entry against the installed TRL: a TRL upgrade that
renames, moves or re-signs one of them fails there, naming the symbol, instead of deep inside a training run.
"""

import contextlib
import types

from trl.models.utils import prepare_deepspeed, prepare_fsdp
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling, SFTTrainer
from trl.trainer.utils import (
    RepeatSampler,
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    maybe_gather_lm_head_ctx,
    use_adapter,
)

__all__ = [
    "EXPECTED_SIGNATURES",
    "REF_ADAPTER",
    "DataCollatorForLanguageModeling",
    "RepeatSampler",
    "add_fused_lm_head",
    "add_reference_adapter",
    "create_model_from_path",
    "disable_dropout_in_model",
    "maybe_gather_lm_head_ctx",
    "prepare_deepspeed",
    "prepare_fsdp",
    "prepare_sft_dataset",
    "trl_builds_no_reference",
    "use_adapter",
]

# Name of the frozen copy of a pretrained adapter that GRPOTrainer scores its reference with: when a PeftModel has
# an adapter of this name, TRL computes the reference log-probabilities under it (`use_adapter(model, "ref")`), and
# with the adapters disabled otherwise.
REF_ADAPTER = "ref"

# Parameter names (in order) of every private callable used by the package, as of TRL 1.16 / transformers 5.x.
# Keys are "module:qualified name". Private methods are listed with the signature our overrides or calls assume.
EXPECTED_SIGNATURES = {
    "trl.trainer.utils:RepeatSampler": (
        "data_source", "mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed",
    ),
    "trl.trainer.utils:create_model_from_path": ("model_id", "architecture", "kwargs"),
    "trl.trainer.utils:maybe_gather_lm_head_ctx": ("params",),
    "trl.trainer.utils:use_adapter": ("model", "adapter_name"),
    "trl.trainer.utils:add_fused_lm_head": ("model", "temperature", "cast_lm_head_to_fp32", "outputs"),
    "trl.trainer.utils:disable_dropout_in_model": ("model",),
    "trl.models.utils:prepare_deepspeed": ("model", "accelerator"),
    "trl.models.utils:prepare_fsdp": ("model", "accelerator"),
    "trl.trainer.sft_trainer:DataCollatorForLanguageModeling": (
        "pad_token_id", "padding_free", "return_position_ids", "pad_to_multiple_of", "return_tensors",
    ),
    # Overridden: generates, scores and returns one generation batch (a dict of per-row tensors).
    "trl.trainer.grpo_trainer:GRPOTrainer._generate_and_score_completions": ("self", "inputs"),
    # Overridden to read the rewards it returns: (rows of all processes, reward functions), gathered.
    "trl.trainer.grpo_trainer:GRPOTrainer._calculate_rewards": (
        "self", "inputs", "prompts", "completions", "completion_ids_list",
    ),
    # Overridden by ShapedSFTTrainer: its dataset checks frame TRL's preparation (also run by `evaluate`); called by
    # `prepare_sft_dataset` with the trainer attributes and config fields listed in `SFT_PREPARATION_READS`.
    "trl.trainer.sft_trainer:SFTTrainer._prepare_dataset": (
        "self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name",
    ),
    # Overridden and called by checkpoints.SafeCheckpointsMixin: one checkpoint save, and the folder it goes to.
    "transformers.trainer:Trainer._save_checkpoint": ("self", "model", "trial"),
    "transformers.trainer:Trainer._get_output_dir": ("self", "trial"),
    # Overridden by checkpoints.SafeCheckpointsMixin: the end of `train` (metrics, best model, the
    # save_total_limit=1 clean-up, on_train_end).
    "transformers.trainer:Trainer._finalize_training": ("self", "trial", "num_train_samples", "start_time"),
    # Called to build the dataloader of the extra prompts that dynamic sampling draws.
    "transformers.trainer:Trainer._get_dataloader": (
        "self", "dataset", "description", "batch_size", "sampler_fn", "is_training", "dataloader_key",
    ),
}  # fmt: skip

# What `SFTTrainer._prepare_dataset` reads of its trainer and of its config (TRL 1.16), set by `prepare_sft_dataset`.
SFT_PREPARATION_READS = {
    "trainer": ("_tokenizer", "chat_template", "completion_only_loss"),
    "args": (
        "dataset_num_proc", "dataset_text_field", "assistant_only_loss", "max_length", "truncation_mode",
        "shuffle_dataset",
    ),
}  # fmt: skip

# Private attributes of a constructed GRPOTrainer that the package reads or sets (checked on a live trainer in the
# tests): the metric store it logs from, its tokenizer, Trainer's per-device batch size, and the model-card class
# attributes it overrides.
EXPECTED_ATTRIBUTES = ("_metrics", "_tokenizer", "_train_batch_size", "_tag_names", "_name", "_paper")


@contextlib.contextmanager
def trl_builds_no_reference(args):
    """Run `GRPOTrainer.__init__` with `beta = 0` and `sync_ref_model = False`, restoring both afterwards.

    GRPOTrainer builds its reference model (or its "ref" adapter) from the policy itself when `beta != 0`, and
    refuses `sync_ref_model` without one. ShapedGRPOTrainer installs the stage-1 prior as the reference instead, so
    TRL must build none; the trainer sets `self.beta` and adds TRL's `SyncRefModelCallback` itself afterwards.
    """
    saved = args.beta, args.sync_ref_model
    args.beta, args.sync_ref_model = 0.0, False
    try:
        yield
    finally:
        args.beta, args.sync_ref_model = saved


def add_reference_adapter(model) -> None:
    """Add a frozen copy of a PeftModel's active adapter under `REF_ADAPTER`, on the same base weights.

    This is what GRPOTrainer does for a PEFT policy with a pretrained adapter when `beta != 0`: the copy costs the
    adapter's size only, and TRL's reference scoring picks it up by name.
    """
    active = model.active_adapter
    if REF_ADAPTER in model.peft_config or not isinstance(active, str):
        raise ValueError(
            f"model: a PeftModel with one active adapter not named {REF_ADAPTER!r} is needed to hold the stage-1 "
            f"prior as a frozen copy of it; got adapters {list(model.peft_config)}, active {active!r}"
        )
    model.add_adapter(REF_ADAPTER, model.peft_config[active])
    for name, param in model.named_parameters():
        if f".{REF_ADAPTER}." in name:
            param.requires_grad_(False)
        elif f".{active}." in name:
            ref = model.get_parameter(name.replace(f".{active}.", f".{REF_ADAPTER}."))
            ref.data.copy_(param.data)


def prepare_sft_dataset(dataset, tokenizer, max_length: int | None, dataset_name: str):
    """`SFTTrainer`'s own dataset preparation without an SFTTrainer: ChatML conversion, EOS, chat template,
    tokenisation, -100 labels outside the completion (completion-only loss) and truncation keeping the start.

    It runs `SFTTrainer._prepare_dataset` on a stand-in holding only what that method reads (`SFT_PREPARATION_READS`),
    without packing or a formatting function.

    Args:
        dataset ([`~datasets.Dataset`]): text, conversational, prompt-completion or tokenized rows.
        tokenizer: the tokenizer (its chat template and EOS token are used).
        max_length (`int`, *optional*): truncation length in tokens.
        dataset_name (`str`): for TRL's progress bars.
    """
    trainer = types.SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    args = types.SimpleNamespace(
        dataset_num_proc=None,
        dataset_text_field="text",
        assistant_only_loss=False,
        max_length=max_length,
        truncation_mode="keep_start",
        shuffle_dataset=False,  # the aux dataloader shuffles
    )
    return SFTTrainer._prepare_dataset(trainer, dataset, tokenizer, args, False, None, dataset_name)
