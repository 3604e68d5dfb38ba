"""`ShapingArguments`: the `shaping_*` fields that both trainer configs carry, and their resolution to a ShapingConfig.

One dataclass mixin, so that `ShapedSFTConfig` and `ShapedGRPOConfig` share the fields, their help (which
`HfArgumentParser` / `TrlParser` turn into `--shaping_*` flags, with `choices` for the two string fields as TRL does for
`loss_type`), the resolver and its validation at construction.
"""

import dataclasses
from dataclasses import dataclass, field

from .shaping import PAPER_PRESETS, POSITIVE_FORMS, ShapingConfig


@dataclass
class ShapingArguments:
    r"""
    The rank-aware shaped loss of arXiv 2512.22955 (see docs/method.md), as fields of a trainer config.

    How the fields combine: each field defaults to `None` ("not given"). A `shaping_preset` fills the fields left
    `None` with the preset's values; a field given explicitly always wins over the preset (so
    `shaping_preset="tail_penalty", shaping_top_k=20` is the tail penalty with k = 20). Fields still `None` after that
    take the [`ShapingConfig`] defaults, so a config with no shaping field at all is plain cross-entropy. The resolved
    settings are the property `shaping`. Invalid values fail at construction with the error of [`ShapingConfig`] and
    the fields that were given, and an unknown preset with the list of valid names.

    Parameters:
        > Parameters that control the shaped loss

        shaping_preset (`str`, *optional*):
            Name of one of the paper's configurations: `"ce"`, `"precision"`, `"diversity"`, `"tail_penalty"` or
            `"head_reward"`. It fills the `shaping_*` fields that are not set explicitly.
        shaping_beta (`float`, *optional*):
            Positive reward scaling. Negative values amplify the ground-truth token's reward (precision: lower
            entropy); positive values attenuate it (diversity: higher entropy). Must be >= -1 (why: `ShapingConfig`).
            Defaults to `0.0` when neither set nor filled by a preset. Not GRPO's `beta`, TRL's KL coefficient.
        shaping_top_k (`int`, *optional*):
            Size k of the head set: the k most probable tokens under the current (detached) policy. An integer >= 1.
            Defaults to `100`.
        shaping_head_reward (`float`, *optional*):
            Reward of the negative tokens inside the top-k. Positive values keep plausible alternatives alive.
            Defaults to `0.0`.
        shaping_tail_reward (`float`, *optional*):
            Reward of the negative tokens outside the top-k. Negative values push the long tail down. Defaults to
            `0.0`.
        shaping_positive_form (`str`, *optional*):
            Form of the positive reward: `"power"` (the paper's revised Eq. 11) or `"linear"`. Defaults to `"power"`.
    """

    shaping_preset: str | None = field(
        default=None,
        metadata={
            "help": "Name of one of the paper's shaping configurations. It fills the `shaping_*` fields that are not "
            "set explicitly; explicit fields win.",
            "choices": sorted(PAPER_PRESETS),
        },
    )
    shaping_beta: float | None = field(
        default=None,
        metadata={
            "help": "Positive reward scaling: < 0 amplifies the ground-truth reward (precision, lower entropy), > 0 "
            "attenuates it (diversity, higher entropy); must be >= -1 (see ShapingConfig). Default 0.0 unless a "
            "preset sets it. Not GRPO's `beta` (the KL coefficient)."
        },
    )
    shaping_top_k: int | None = field(
        default=None,
        metadata={
            "help": "Size k of the head set (the k most probable tokens under the detached policy), an integer >= 1. "
            "Default 100 unless a preset sets it."
        },
    )
    shaping_head_reward: float | None = field(
        default=None,
        metadata={
            "help": "Reward of negative tokens inside the top-k; > 0 keeps plausible alternatives alive. Default 0.0 "
            "unless a preset sets it."
        },
    )
    shaping_tail_reward: float | None = field(
        default=None,
        metadata={
            "help": "Reward of negative tokens outside the top-k; < 0 pushes the long tail down. Default 0.0 unless "
            "a preset sets it."
        },
    )
    shaping_positive_form: str | None = field(
        default=None,
        metadata={
            "help": "Form of the positive reward: 'power' (the paper's revised Eq. 11) or 'linear'. Default 'power' "
            "unless a preset sets it.",
            "choices": list(POSITIVE_FORMS),
        },
    )

    def __post_init__(self):
        # Resolving validates: a bad shaping value fails here, at construction, before the rest of the config
        self.shaping  # noqa: B018
        _check_liger_kernel_config(self)
        parent = super()
        if hasattr(parent, "__post_init__"):
            parent.__post_init__()

    @property
    def shaping(self) -> ShapingConfig:
        """The resolved [`ShapingConfig`]: explicit `shaping_*` fields, then the preset, then the defaults."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(ShapingArguments)}
        given = {name: value for name, value in given.items() if value is not None}
        preset = given.pop("shaping_preset", None)
        explicit = {name.removeprefix("shaping_"): value for name, value in given.items()}
        if preset is not None and preset not in PAPER_PRESETS:
            raise ValueError(
                f"shaping_preset={preset!r} is not a known preset; set it to one of {sorted(PAPER_PRESETS)} or leave "
                "it unset and give the shaping_* fields"
            )
        try:
            base = ShapingConfig() if preset is None else ShapingConfig.from_preset(preset)
            return dataclasses.replace(base, **explicit)
        except ValueError as error:
            named = ({"shaping_preset": preset} if preset is not None else {}) | given
            fields = ", ".join(f"{name}={value!r}" for name, value in named.items())
            raise ValueError(
                f"invalid shaped-loss setting in {type(self).__name__} ({fields}): {error}. Change the shaping_* field "
                "named in this message, or leave it unset to take the preset's or the default value."
            ) from error


def _check_liger_kernel_config(args) -> None:
    # Liger's fused linear cross-entropy replaces the model's forward, and with it the shaped loss (TRL refuses it too,
    # later, at trainer construction); its other kernels (RMSNorm, RoPE, SwiGLU, ...) leave the loss alone.
    config = getattr(args, "liger_kernel_config", None) or {}
    if (
        getattr(args, "use_liger_kernel", False)
        and isinstance(config, dict)
        and config.get("fused_linear_cross_entropy")
    ):
        raise ValueError(
            'liger_kernel_config={"fused_linear_cross_entropy": True} would replace the shaped loss with Liger\'s '
            "cross-entropy. Leave fused_linear_cross_entropy unset or False: use_liger_kernel=True then applies Liger's "
            "other kernels and the shaped loss stays the training loss."
        )
