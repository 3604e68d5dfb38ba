"""`DemoConfig`: the settings of `trl-shaped demo`, with a full and a `--quick` profile."""

from dataclasses import dataclass, field

# Per-profile defaults of the fields left `None`. The full profile is sized to run three presets (stage 1, GRPO and
# two evaluations each) in well under 10 minutes on 2 CPU cores; the quick one in well under 2 minutes. The stage-1
# steps are enough for the model to solve part of the problems, so that GRPO starts with non-zero rewards.
PROFILES = {
    "full": {
        "num_train_problems": 1500,
        "num_test_problems": 200,
        "hidden_size": 64,
        "sft_steps": 2000,
        "grpo_steps": 150,
        "eval_num_samples": 16,
    },
    "quick": {
        "num_train_problems": 500,
        "num_test_problems": 40,
        "hidden_size": 64,
        "sft_steps": 400,
        "grpo_steps": 12,
        "eval_num_samples": 8,
    },
}
POSITIVE_FIELDS = (
    "num_train_problems",
    "num_test_problems",
    "hidden_size",
    "num_layers",
    "sft_steps",
    "sft_batch_size",
    "sft_learning_rate",
    "grpo_steps",
    "grpo_prompts_per_step",
    "grpo_learning_rate",
    "eval_num_samples",
    "eval_top_p",
    "shaping_top_k",
    "num_threads",
)


def _profile_help(text: str, name: str) -> str:
    return f"{text} (default: {PROFILES['full'][name]} full, {PROFILES['quick'][name]} quick)."


ALL_PRESETS = ("ce", "precision", "diversity", "tail_penalty", "head_reward")


@dataclass
class DemoConfig:
    """Configuration of the built-in demo (`trl-shaped demo`, `trl_shaped.demo.run_demo`).

    Fields left `None` take the value of the profile chosen by `quick` (see `PROFILES`); a value given explicitly
    always wins.

    Args:
        presets (`str`): comma-separated stage-1 presets, or "all" for the five of the paper.
        quick (`bool`): the small profile (about a minute on 2 CPU cores) instead of the full one.
        output_dir (`str`): directory of the report (and of the checkpoints, under `runs/`).
        seed (`int`): seed of the task, the model initialisation, training and sampling.
        num_train_problems, num_test_problems (`int`, *optional*): sizes of the generated task.
        hidden_size (`int`, *optional*), num_layers (`int`): size of the tiny Qwen3 model.
        sft_steps (`int`, *optional*), sft_batch_size (`int`), sft_learning_rate (`float`): stage 1.
        grpo_steps (`int`, *optional*), grpo_prompts_per_step (`int`), num_generations (`int`),
        grpo_learning_rate (`float`): stage 2.
        eval_num_samples (`int`, *optional*), eval_temperature (`float`), eval_top_p (`float`): evaluation.
        num_threads (`int`): CPU threads of torch while the demo runs.
        shaping_top_k (`int`): k of the head set for `tail_penalty` / `head_reward` and of the top-k diagnostics.
    """

    presets: str = field(
        default="ce,precision,diversity",
        metadata={"help": f"Comma-separated stage-1 presets out of {list(ALL_PRESETS)}, or 'all' for the five."},
    )
    quick: bool = field(
        default=False,
        metadata={"help": "Run the small profile (about a minute on 2 CPU cores) instead of the full one."},
    )
    output_dir: str = field(
        default="demo_report", metadata={"help": "Directory of the report (checkpoints go under its runs/)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the task, model initialisation, training and sampling."})
    num_train_problems: int | None = field(
        default=None, metadata={"help": _profile_help("Distinct training problems", "num_train_problems")}
    )
    num_test_problems: int | None = field(
        default=None, metadata={"help": _profile_help("Distinct held-out problems", "num_test_problems")}
    )
    hidden_size: int | None = field(
        default=None, metadata={"help": _profile_help("Hidden size of the tiny Qwen3 model", "hidden_size")}
    )
    num_layers: int = field(default=2, metadata={"help": "Decoder layers of the tiny Qwen3 model."})
    sft_steps: int | None = field(
        default=None, metadata={"help": _profile_help("Stage-1 optimizer steps", "sft_steps")}
    )
    sft_batch_size: int = field(default=32, metadata={"help": "Stage-1 sequences per step."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "Stage-1 peak learning rate (cosine schedule)."})
    grpo_steps: int | None = field(
        default=None, metadata={"help": _profile_help("GRPO optimizer steps", "grpo_steps")}
    )
    grpo_prompts_per_step: int = field(default=8, metadata={"help": "Prompts per GRPO step."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt in GRPO (the group)."})
    grpo_learning_rate: float = field(default=1e-4, metadata={"help": "GRPO learning rate (constant after warm-up)."})
    eval_num_samples: int | None = field(
        default=None,
        metadata={"help": _profile_help("Samples per test problem (n of Avg@n, Cons@n)", "eval_num_samples")},
    )
    eval_temperature: float = field(
        default=0.7, metadata={"help": "Evaluation sampling temperature (the paper's 0.7)."}
    )
    eval_top_p: float = field(
        default=0.95, metadata={"help": "Evaluation nucleus sampling threshold (the paper's 0.95)."}
    )
    num_threads: int = field(
        default=1,
        metadata={
            "help": "CPU threads torch uses during the demo. Its matrices are tiny: more threads gain little alone "
            "and stall badly when other processes share the cores."
        },
    )
    shaping_top_k: int = field(
        default=4,
        metadata={
            "help": "k of the head set of tail_penalty / head_reward and of the top-k diagnostics: the paper's k=100 "
            "of a ~150k vocabulary, scaled to the demo's 23-token vocabulary."
        },
    )

    def __post_init__(self):
        profile = PROFILES["quick" if self.quick else "full"]
        for name, value in profile.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.preset_names()  # validates
        for name in POSITIVE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.hidden_size % 8:
            raise ValueError(f"hidden_size must be a multiple of 8 (4 heads of even size), got {self.hidden_size}")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (GRPO compares completions within a group), got {self.num_generations}"
            )
        if self.eval_top_p > 1:
            raise ValueError(f"eval_top_p must be in (0, 1], got {self.eval_top_p}")
        if self.eval_temperature < 0:
            raise ValueError(f"eval_temperature must be >= 0, got {self.eval_temperature}")

    def preset_names(self) -> list[str]:
        """The stage-1 presets to run, in order, validated."""
        if self.presets.strip() == "all":
            return list(ALL_PRESETS)
        names = [p.strip() for p in self.presets.split(",") if p.strip()]
        unknown = [p for p in names if p not in ALL_PRESETS]
        if not names or unknown:
            raise ValueError(
                f"presets must be 'all' or a comma-separated list out of {list(ALL_PRESETS)}, got {self.presets!r}"
            )
        return list(dict.fromkeys(names))
