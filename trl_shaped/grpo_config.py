"""`ShapedGRPOConfig`: TRL's `GRPOConfig` plus the stage-1 prior, drift diagnostics, DAPO dynamic sampling and the
optional auxiliary shaped loss."""

from dataclasses import dataclass, field
from typing import ClassVar

from trl import GRPOConfig

from .shaping_args import ShapingArguments
from .validation import check_int, check_real


@dataclass
class ShapedGRPOConfig(ShapingArguments, GRPOConfig):
    r"""
    Configuration class for the [`ShapedGRPOTrainer`]: every [`~trl.GRPOConfig`] parameter (`beta` stays TRL's KL
    coefficient), plus:

    Parameters:
        > Parameters that control the stage-1 prior

        prior_model_name_or_path (`str`, *optional*):
            Path or Hub id of the stage-1 checkpoint used as the prior: the KL anchor when `beta > 0` and, whatever
            `beta`, the baseline of the drift diagnostics. A full model or a LoRA adapter directory (merged on load).
            `None` means the policy's own starting weights: the path it was loaded from, a frozen copy of a model
            passed as an instance, or, for a PEFT policy, the base model with the adapters disabled (a new adapter
            from `peft_config`) or a frozen copy of the stage-1 adapter (a `PeftModel` passed in).
        diagnostics_steps (`int`, *optional*, defaults to `10`):
            Compute the drift diagnostics (KL(policy || prior), entropy, top-k entropy and top-k mass of both) on
            the sampled completions every this many optimizer steps, starting at step 0. `0` disables them.
        diagnostics_top_k (`int`, *optional*, defaults to `100`):
            The k of the top-k entropy and top-k mass diagnostics, an integer >= 1.

        > Parameters that control dynamic sampling (DAPO)

        dynamic_sampling (`bool`, *optional*, defaults to `False`):
            Drop the prompt groups whose rewards are all equal (zero advantage: no signal) and replace them with
            groups generated from further prompts, so that each generation batch holds the requested number of
            informative groups wherever the data allows.
        max_resample_rounds (`int`, *optional*, defaults to `3`):
            Extra generation rounds allowed per generation batch to refill dropped groups, an integer >= 0. When they
            do not suffice, the batch is completed with dropped groups (whose advantages are zero).

        > Parameters that control the auxiliary shaped loss

        shaping_aux_coef (`float`, *optional*, defaults to `0.0`):
            Coefficient of the auxiliary shaped loss on the `aux_dataset` given to the trainer, >= 0. `0` disables it.
        aux_batch_size (`int`, *optional*):
            Sequences of auxiliary data per micro-batch; defaults to `per_device_train_batch_size`. An integer >= 1.
        aux_max_length (`int`, *optional*, defaults to `512`):
            Auxiliary sequences are truncated to this many tokens, an integer >= 1.
        shaping_preset, shaping_beta, shaping_top_k, shaping_head_reward, shaping_tail_reward, shaping_positive_form:
            The shaped loss of the auxiliary term, documented in [`ShapingArguments`] (explicit fields, then the
            preset, then the defaults); resolved in [`ShapedGRPOConfig.shaping`].

        > Reference syncing

        sync_ref_model (`bool`, *optional*, defaults to `False`):
            As in [`~trl.GRPOConfig`]: the KL reference (used when `beta > 0`) is synced with the policy every
            `ref_model_sync_steps` steps with mixing coefficient `ref_model_mixup_alpha`. The drift diagnostics keep
            comparing with the fixed stage-1 prior, so with `sync_ref_model=True` the trainer holds both the synced
            reference and the prior.

    The paper's RL recipe (no KL term, clip-higher, dynamic sampling, 16 samples per prompt at temperature 1.0,
    constant learning rate 1e-6) is `PAPER_RECIPE`; build it with [`ShapedGRPOConfig.paper_recipe`].
    """

    PAPER_RECIPE: ClassVar[dict] = {
        "beta": 0.0,
        "epsilon_high": 0.28,
        "dynamic_sampling": True,
        "num_generations": 16,
        "temperature": 1.0,
        "loss_type": "dapo",
        "learning_rate": 1e-6,
        "lr_scheduler_type": "constant",
    }

    prior_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Stage-1 checkpoint used as the prior (KL anchor when beta > 0, baseline of the drift "
            "diagnostics). None: the policy's own starting weights (adapters disabled for a new LoRA adapter)."
        },
    )
    diagnostics_steps: int = field(
        default=10,
        metadata={
            "help": "Compute KL(policy || prior) and the entropy diagnostics of policy and prior on the sampled "
            "completions every this many optimizer steps (>= 0; 0 disables)."
        },
    )
    diagnostics_top_k: int = field(
        default=100, metadata={"help": "k of the top-k entropy and top-k mass diagnostics (>= 1)."}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO dynamic sampling: replace prompt groups whose rewards are all equal by groups from further "
            "prompts, generating again up to max_resample_rounds extra rounds."
        },
    )
    max_resample_rounds: int = field(
        default=3, metadata={"help": "Extra generation rounds per generation batch for dynamic sampling (>= 0)."}
    )
    shaping_aux_coef: float = field(
        default=0.0,
        metadata={"help": "Coefficient of the auxiliary shaped loss on the trainer's aux_dataset (>= 0; 0 disables)."},
    )
    aux_batch_size: int | None = field(
        default=None,
        metadata={"help": "Auxiliary sequences per micro-batch (>= 1); defaults to per_device_train_batch_size."},
    )
    aux_max_length: int = field(default=512, metadata={"help": "Truncation length of auxiliary sequences (>= 1)."})
    sync_ref_model: bool = field(
        default=False,
        metadata={
            "help": "As in GRPOConfig: sync the KL reference (used when beta > 0) with the policy every "
            "ref_model_sync_steps steps, mixing with ref_model_mixup_alpha. The drift diagnostics keep comparing "
            "with the fixed stage-1 prior, which then stays in memory beside the synced reference."
        },
    )

    def __post_init__(self):
        self.diagnostics_steps = check_int("diagnostics_steps", self.diagnostics_steps, minimum=0)
        self.diagnostics_top_k = check_int("diagnostics_top_k", self.diagnostics_top_k, minimum=1)
        self.max_resample_rounds = check_int("max_resample_rounds", self.max_resample_rounds, minimum=0)
        self.aux_max_length = check_int("aux_max_length", self.aux_max_length, minimum=1)
        if self.aux_batch_size is not None:
            self.aux_batch_size = check_int("aux_batch_size", self.aux_batch_size, minimum=1, note="or None")
        self.shaping_aux_coef = check_real("shaping_aux_coef", self.shaping_aux_coef, minimum=0)
        if not isinstance(self.dynamic_sampling, bool):
            raise ValueError(f"dynamic_sampling must be True or False, got {self.dynamic_sampling!r}")
        super().__post_init__()  # ShapingArguments validates the shaping fields, then GRPOConfig its own

    @classmethod
    def paper_recipe(cls, **overrides) -> "ShapedGRPOConfig":
        """The paper's RLVR settings (`PAPER_RECIPE`), with `overrides` (any field) taking precedence.

        Batch size (128 prompts x 16 samples in the paper) and context length depend on the hardware and are left to
        the caller.
        """
        return cls(**{**cls.PAPER_RECIPE, **overrides})
