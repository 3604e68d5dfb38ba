"""The five knobs of the rank-aware shaped loss (METHOD.md sections 2 and 4) and the paper's presets.

`ShapingConfig` is the one place these knobs are validated; the losses and both trainer configs go through it,
so a bad value fails at construction with the field's name and the allowed range.
"""

import dataclasses
import math
from dataclasses import dataclass, field

POSITIVE_FORMS = ("power", "linear")

# Smallest value of 1 - p_y used when the positive reward is raised to a negative power (beta < 0). Without a
# floor both forms are unbounded as p_y -> 1 (and NaN at p_y == 1 exactly in float32). With it the linear form's
# weight w_y = (1 - p_y) ** beta is capped at 1e-6 ** beta (about 31.6 at beta = -0.25); the power form only
# changes where p_y > 1 - 1e-6, where its weight is within 1e-4 of 1 for beta > -0.75 anyway.
ONE_MINUS_P_FLOOR = 1e-6


def _check_real(name: str, value, allowed: str) -> float:
    # bool is an int subclass: `beta=True` is almost surely a mistake, so it is rejected rather than read as 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must be a finite real number ({allowed}), got {value!r} of type {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number ({allowed}), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ShapingConfig:
    """Parameters of the rank-aware reward-shaped next-token loss (arXiv 2512.22955, Eqs. 11-13).

    All zero rewards and `beta=0` give plain cross-entropy.

    Args:
        beta (`float`): positive reward scaling. < 0 amplifies the reward of the ground-truth token (precision,
            lower entropy), > 0 attenuates it (diversity, higher entropy). Any finite number.
        top_k (`int`): size of the head set K_t (the k most probable tokens under the detached policy).
            An integer >= 1; values >= the vocabulary size make every negative token a head token.
        head_reward (`float`): reward of negative tokens inside K_t (the paper's lambda-tilde). Any finite number;
            > 0 keeps plausible alternatives alive.
        tail_reward (`float`): reward of negative tokens outside K_t (the paper's lambda-hat). Any finite number;
            < 0 pushes the long tail down.
        positive_form (`str`): "power" (w_y = p_y ** (1 - (1 - p_y) ** beta), the paper's revised Eq. 11) or
            "linear" (w_y = (1 - p_y) ** beta).
    """

    beta: float = field(default=0.0, metadata={"help": "Positive reward scaling; < 0 precision, > 0 diversity."})
    top_k: int = field(default=100, metadata={"help": "Size of the head set K_t of most probable tokens (>= 1)."})
    head_reward: float = field(default=0.0, metadata={"help": "Reward of negative tokens inside the top-k."})
    tail_reward: float = field(default=0.0, metadata={"help": "Reward of negative tokens outside the top-k."})
    positive_form: str = field(default="power", metadata={"help": "Form of the positive reward: 'power' or 'linear'."})

    def __post_init__(self):
        # object.__setattr__ because the dataclass is frozen; normalising ints to floats keeps equality simple.
        object.__setattr__(self, "beta", _check_real("beta", self.beta, "any finite float"))
        object.__setattr__(self, "head_reward", _check_real("head_reward", self.head_reward, "any finite float"))
        object.__setattr__(self, "tail_reward", _check_real("tail_reward", self.tail_reward, "any finite float"))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r} of type {type(self.top_k).__name__}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k}")
        if self.positive_form not in POSITIVE_FORMS:
            raise ValueError(f"positive_form must be one of {list(POSITIVE_FORMS)}, got {self.positive_form!r}")

    @property
    def is_cross_entropy(self) -> bool:
        """True when the shaped loss reduces to plain cross-entropy (beta == head_reward == tail_reward == 0)."""
        return self.beta == 0.0 and self.head_reward == 0.0 and self.tail_reward == 0.0

    @property
    def needs_topk(self) -> bool:
        """True when the head set K_t matters, i.e. the head and tail rewards differ from zero."""
        return self.head_reward != 0.0 or self.tail_reward != 0.0

    @classmethod
    def from_preset(cls, name: str) -> "ShapingConfig":
        """The paper's configuration called `name` (one of `PAPER_PRESETS`)."""
        if name not in PAPER_PRESETS:
            raise ValueError(f"unknown shaping preset {name!r}; valid presets are {sorted(PAPER_PRESETS)}")
        return PAPER_PRESETS[name]


# METHOD.md section 4. Presets without a k in the paper keep the default top_k, which they do not use.
PAPER_PRESETS: dict[str, ShapingConfig] = {
    "ce": ShapingConfig(),
    "precision": ShapingConfig(beta=-0.25),
    "diversity": ShapingConfig(beta=0.5),
    "tail_penalty": ShapingConfig(tail_reward=-0.1, top_k=100),
    "head_reward": ShapingConfig(head_reward=0.1, top_k=100),
}

_DEFAULTS = ShapingConfig()


def resolve_shaping(config: ShapingConfig | None = None, **kwargs) -> ShapingConfig:
    """The `ShapingConfig` a loss call asks for: `config` when given, otherwise one built from the loose kwargs.

    Passing both is allowed only when every loose kwarg is left at its default or agrees with `config`, so that a
    knob given twice can never be silently ignored.

    Args:
        config (`ShapingConfig` or `None`): the configuration object.
        **kwargs: the loose knobs (beta, top_k, head_reward, tail_reward, positive_form).
    """
    if config is None:
        return ShapingConfig(**kwargs)
    if not isinstance(config, ShapingConfig):
        raise ValueError(f"config must be a ShapingConfig or None, got {type(config).__name__}")
    for name, value in kwargs.items():
        if value != getattr(_DEFAULTS, name) and value != getattr(config, name):
            raise ValueError(
                f"{name}={value!r} conflicts with config.{name}={getattr(config, name)!r}; "
                "pass either config= or the loose shaping arguments"
            )
    return config


def shaping_fields() -> tuple[str, ...]:
    """Names of the ShapingConfig fields, in order (the trainer configs prefix them with `shaping_`)."""
    return tuple(f.name for f in dataclasses.fields(ShapingConfig))
