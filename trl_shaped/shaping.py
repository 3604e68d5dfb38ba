"""The five knobs of the rank-aware shaped loss (docs/method.md) and the paper's presets.

`ShapingConfig` is the one place these knobs are validated; the losses and both trainer configs go through it,
so a bad value fails at construction with the field's name and the allowed range.
"""

from dataclasses import dataclass, field

from .loss_core import MIN_BETA
from .validation import check_choice, check_int, check_real

__all__ = ["PAPER_PRESETS", "POSITIVE_FORMS", "ShapingConfig", "resolve_shaping"]

POSITIVE_FORMS = ("power", "linear")
BETA_RANGE = (
    f">= {MIN_BETA:g} (a finite real number; below, the weight of a confident ground-truth token is unbounded and "
    "training diverges: see ShapingConfig)"
)


@dataclass(frozen=True)
class ShapingConfig:
    """Parameters of the rank-aware reward-shaped next-token loss (arXiv 2512.22955, Eqs. 11-13).

    All zero rewards and `beta=0` give plain cross-entropy.

    Args:
        beta (`float`): positive reward scaling. < 0 amplifies the reward of the ground-truth token (precision,
            lower entropy), > 0 attenuates it (diversity, higher entropy). A finite number >= -1 (`MIN_BETA`), for
            both forms; this is the one docstring that states why (docs/method.md, "The range of beta", derives
            it). Below -1 the weight of a confident ground-truth token is unbounded as p_y -> 1 (power form: about
            exp((1 - p_y) ** (1 + beta)); linear form: a loss term about (1 - p_y) ** (1 + beta)), so the more
            confident the model, the larger its update, and a run diverges. At beta >= -1 the power weight is at
            most e (as p_y -> 1 at beta = -1) and each logit-gradient component of the ground-truth term,
            w_y (1 - p_y) or w_y p_a, is at most about 1.2 (1.196, at p_y near 0.2 when beta = -1); in the linear
            form the weight (1 - p_y) ** beta is capped at `ONE_MINUS_P_FLOOR` ** beta (at most 1e6) while that
            component stays at most 1. The head and tail rewards add |reward| * p_a terms. Every accepted value
            gives a finite loss and gradient for p_y in [0, 1]. Not the `beta` of `ShapedGRPOConfig`, which is
            TRL's KL coefficient; the trainer configs call this knob `shaping_beta`.
        top_k (`int`): size of the head set K_t (the k most probable tokens under the detached policy).
            An integer >= 1; values >= the vocabulary size make every negative token a head token.
        head_reward (`float`): reward of negative tokens inside K_t (the paper's lambda-tilde). Any finite number;
            > 0 keeps plausible alternatives alive.
        tail_reward (`float`): reward of negative tokens outside K_t (the paper's lambda-hat). Any finite number;
            < 0 pushes the long tail down.
        positive_form (`str`): "power" (w_y = p_y ** (1 - (1 - p_y) ** beta), the paper's revised Eq. 11) or
            "linear" (w_y = (1 - p_y) ** beta).
    """

    beta: float = field(
        default=0.0, metadata={"help": "Positive reward scaling (>= -1); < 0 precision, > 0 diversity."}
    )
    top_k: int = field(default=100, metadata={"help": "Size of the head set K_t of most probable tokens (>= 1)."})
    head_reward: float = field(default=0.0, metadata={"help": "Reward of negative tokens inside the top-k."})
    tail_reward: float = field(default=0.0, metadata={"help": "Reward of negative tokens outside the top-k."})
    positive_form: str = field(default="power", metadata={"help": "Form of the positive reward: 'power' or 'linear'."})

    def __post_init__(self):
        # object.__setattr__ because the dataclass is frozen; normalising ints to floats keeps equality simple.
        object.__setattr__(self, "beta", check_real("beta", self.beta, minimum=MIN_BETA, allowed=BETA_RANGE))
        object.__setattr__(self, "head_reward", check_real("head_reward", self.head_reward))
        object.__setattr__(self, "tail_reward", check_real("tail_reward", self.tail_reward))
        object.__setattr__(self, "top_k", check_int("top_k", self.top_k, minimum=1))
        check_choice("positive_form", self.positive_form, POSITIVE_FORMS)

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


# The paper's settings (docs/method.md). Presets without a k in the paper keep the default top_k, which they do not
# use.
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
