"""trl_shaped: rank-aware reward-shaped next-token prediction for Hugging Face TRL.

Stage 1 trains with the shaped loss (``ShapedSFTTrainer``); stage 2 runs GRPO from that prior and measures the
policy's drift from it (``ShapedGRPOTrainer``; with ``beta > 0`` the prior is also the KL reference). Public names are imported lazily so that ``import trl_shaped`` stays
cheap and the loss can be used without importing the trainers.
"""

import importlib

__version__ = "0.1.0"  # the one source of the version: pyproject.toml reads it ([tool.setuptools.dynamic])

_PUBLIC_NAMES = {
    "ShapingConfig": "shaping",
    "PAPER_PRESETS": "shaping",
    "shaped_loss": "loss",
    "fused_linear_shaped_loss": "fused_loss",
    "distribution_stats": "diagnostics",
    "pass_at_k": "evaluation",
    "ShapedSFTConfig": "sft_config",
    "ShapedSFTTrainer": "sft_trainer",
    "ShapedGRPOConfig": "grpo_config",
    "ShapedGRPOTrainer": "grpo_trainer",
}

__all__ = ["__version__", *_PUBLIC_NAMES]


def __getattr__(name):
    if name in _PUBLIC_NAMES:
        value = getattr(importlib.import_module(f".{_PUBLIC_NAMES[name]}", __name__), name)
        globals()[name] = value  # cache: the next lookup is a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC_NAMES))
