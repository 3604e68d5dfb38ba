"""`ShapedSFTConfig`: TRL's `SFTConfig` plus the shaped-loss fields of `ShapingArguments`."""

from dataclasses import dataclass

from trl import SFTConfig

from .shaping_args import ShapingArguments


@dataclass
class ShapedSFTConfig(ShapingArguments, SFTConfig):
    r"""
    Configuration class for the [`ShapedSFTTrainer`]: every [`~trl.SFTConfig`] parameter, plus the rank-aware shaped
    loss of arXiv 2512.22955 (see docs/method.md).

    Parameters:
        shaping_preset, shaping_beta, shaping_top_k, shaping_head_reward, shaping_tail_reward, shaping_positive_form:
            The shaped loss, documented in [`ShapingArguments`]. Each defaults to `None`; a preset fills the fields
            not given, a field given explicitly wins over the preset, and the rest take the [`ShapingConfig`]
            defaults, so a config with no shaping field at all trains with plain cross-entropy. The resolved
            settings are [`ShapedSFTConfig.shaping`]; invalid values fail at construction.
    """
