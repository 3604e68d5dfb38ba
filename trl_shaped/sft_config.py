"""`ShapedSFTConfig`: TRL's `SFTConfig` plus the five knobs of the shaped loss and a preset name."""

from dataclasses import dataclass, field

from trl import SFTConfig

from .shaping import PAPER_PRESETS, ShapingConfig, shaping_fields


@dataclass
class ShapedSFTConfig(SFTConfig):
    r"""
    Configuration class for the [`ShapedSFTTrainer`]: every [`~trl.SFTConfig`] parameter, plus the rank-aware shaped
    loss of arXiv 2512.22955 (see METHOD.md).

    How the shaping fields combine: each `shaping_*` field defaults to `None` ("not given"). A `shaping_preset`
    fills the fields left `None` with the preset's values; a field given explicitly always wins over the preset (so
    `shaping_preset="tail_penalty", shaping_top_k=20` is the tail penalty with k = 20). Fields still `None` after that
    take the [`ShapingConfig`] defaults, so a config with no shaping field at all trains with plain cross-entropy.
    The resolved settings are [`ShapedSFTConfig.shaping`]. Invalid values fail at construction with the error of
    [`ShapingConfig`], and an unknown preset with the list of valid names.

    Parameters:
        > Parameters that control the shaped loss

        shaping_preset (`str`, *optional*):
            Name of one of the paper's configurations: `"ce"`, `"precision"`, `"diversity"`, `"tail_penalty"` or
            `"head_reward"`. It fills the `shaping_*` fields that are not set explicitly.
        shaping_beta (`float`, *optional*):
            Positive reward scaling. Negative values amplify the ground-truth token's reward (precision: lower
            entropy); positive values attenuate it (diversity: higher entropy). Defaults to `0.0` when neither set
            nor filled by a preset.
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
            "help": f"Name of one of the paper's shaping configurations, one of {sorted(PAPER_PRESETS)}. It fills the "
            "`shaping_*` fields that are not set explicitly; explicit fields win."
        },
    )
    shaping_beta: float | None = field(
        default=None,
        metadata={
            "help": "Positive reward scaling: < 0 amplifies the ground-truth reward (precision, lower entropy), > 0 "
            "attenuates it (diversity, higher entropy). Default 0.0 unless a preset sets it."
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
            "unless a preset sets it."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.shaping  # noqa: B018 -- resolving validates: bad values fail here, at construction

    @property
    def shaping(self) -> ShapingConfig:
        """The resolved [`ShapingConfig`]: explicit `shaping_*` fields, then the preset, then the defaults."""
        if self.shaping_preset is None:
            values = {}
        elif self.shaping_preset in PAPER_PRESETS:
            preset = PAPER_PRESETS[self.shaping_preset]
            values = {name: getattr(preset, name) for name in shaping_fields()}
        else:
            raise ValueError(
                f"shaping_preset={self.shaping_preset!r} is not a known preset; set it to one of "
                f"{sorted(PAPER_PRESETS)} or leave it unset and give the shaping_* fields"
            )
        for name in shaping_fields():
            value = getattr(self, f"shaping_{name}")
            if value is not None:
                values[name] = value
        try:
            return ShapingConfig(**values)
        except ValueError as error:
            raise ValueError(f"invalid shaping setting in ShapedSFTConfig (fields shaping_*): {error}") from error
