"""`StudyConfig`: presets x seeds of the two-stage pipeline, on the built-in task or at real scale through the recipes.

Two backends, chosen by `model_name_or_path`:

- left `None`: the built-in arithmetic task (`trl_shaped.study.task`) on a tiny Qwen3 model built locally; the sizes
  come from a profile (`BUILTIN_PROFILES`, "full" or `quick`) unless given;
- a hub name or a local path: every stage of every cell runs through the recipes (`trl-shaped sft|grpo|eval --config
  <recipe>` with overrides), under `accelerate launch --config_file <accelerate_config>` when one is given.
"""

import os
from dataclasses import dataclass, field

ALL_PRESETS = ("ce", "precision", "diversity", "tail_penalty", "head_reward")
BASELINE = "ce"  # every paired difference is "preset minus this preset, same seed"

# Per-profile defaults of the built-in task's fields left `None`. The full profile (9 cells, two at a time) is sized to
# 10 minutes on 2 CPU cores (measured: 371 s), the quick one to 2 (51 s); measurements in
# benchmarks/RESULTS.md (demo_study). Why these sizes:
# - stage 1 (hidden 128 x 2 layers, 1500 steps at `sft_learning_rate` 1e-3) is 3/4 of a cell's CPU time, and the least
#   that works sums out reliably (worked solutions right 55% of the time vs 17% for direct answers on held-out
#   problems) while still answering directly three times in four (ce Avg@8 26%): room for RL. Smaller models could not
#   add (worked no better than direct); 4 layers x 1000 steps reached 22% and RL gained only 3 points there.
# - GRPO keeps the paper's recipe (no KL, clip-higher 0.28, dynamic sampling, temperature 1.0) with what a tiny model
#   needs: lr 1e-4 (1e-3 collapsed a model from 53% to 7%), 50 steps of 8 prompts x 8 samples, on 600 problems stage 1
#   never showed. RL learns to work the sum out: ce +18.0 points of held-out Avg@8 [12.6, 23.4] over 3 seeds.
# - 3 seeds (the fewest an interval allows) and 8 evaluation samples pay for stage 1; generation is cheap here
#   (GRPO 10-12 s, an evaluation 1-2 s of CPU per cell).
BUILTIN_PROFILES = {
    "full": {
        "num_seeds": 3,
        "num_train_problems": 1200,
        "num_rl_problems": 600,
        "num_test_problems": 200,
        "hidden_size": 128,
        "sft_steps": 1500,
        "grpo_steps": 50,
        "eval_num_samples": 8,
    },
    "quick": {
        "num_seeds": 2,
        "num_train_problems": 400,
        "num_rl_problems": 200,
        "num_test_problems": 50,
        "hidden_size": 64,
        "sft_steps": 300,
        "grpo_steps": 10,
        "eval_num_samples": 8,
    },
}
POSITIVE_FIELDS = (
    "num_seeds",
    "num_train_problems",
    "num_rl_problems",
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
    "checkpoints_per_stage",
)


def _profile_help(text: str, name: str) -> str:
    full, quick = BUILTIN_PROFILES["full"][name], BUILTIN_PROFILES["quick"][name]
    return f"{text} (default: {full} full, {quick} quick)."


@dataclass
class StudyConfig:
    """Configuration of `trl-shaped study` and `trl_shaped.study.run_study`.

    A *cell* is one (preset, seed): stage 1 with the preset, evaluation, GRPO from the stage-1 checkpoint, evaluation.
    The seed changes the model initialisation (built-in task), the data order and the sampling; the task's problems
    are the same in every cell (they come from `seed`, the first seed).

    Args:
        presets (`str`): comma-separated stage-1 presets, or "all"; `ce` is always run (the baseline of the paired
            differences).
        num_seeds (`int`, *optional*): seeds per preset: `seed`, `seed + 1`, ...
        seed (`int`): the first seed (and the seed of the built-in task's problems).
        output_dir (`str`): the study directory: cells under `cells/<preset>/seed<k>/`, report at the top.
        max_parallel (`int`, *optional*): cells run at once (default: one per CPU core on the built-in task, 1 when
            `accelerate_config` is given).
        confidence (`float`): level of the intervals across seeds (Student t).
        equal_nll_tolerance (`float`): the "at equal perplexity" rule: a preset's held-out NLL counts as equal to
            ce's when the 95% interval of its paired NLL difference lies within +-tolerance x ce's mean NLL.
        quick (`bool`): the quick profile of the built-in task.
        tokenizer (`str`): built-in task only: "bpe" (byte-level BPE trained on the task's text) or "char".
        bpe_vocab_size (`int`): vocabulary size of the BPE tokenizer.
        num_train_problems, num_rl_problems, num_test_problems, hidden_size, num_layers, sft_steps, sft_batch_size, sft_learning_rate,
        grpo_steps, grpo_prompts_per_step, num_generations, grpo_learning_rate, grpo_temperature, eval_num_samples, eval_temperature,
        eval_top_p, shaping_top_k, num_threads, checkpoints_per_stage: the built-in task's cell (see the field help).
        model_name_or_path (`str`, *optional*): real scale: the base model of stage 1 (hub name or local path).
        stage1_recipe, rl_recipe, eval_recipe (`str`): real scale: the recipe YAMLs (`{preset}` is replaced).
        stage1_dataset, rl_dataset, eval_dataset (`str`, *optional*): real scale: `--dataset_name` overrides.
        stage1_args, rl_args, eval_args (`str`): real scale: further command-line overrides of each stage.
        accelerate_config (`str`, *optional*): real scale: run each stage under `accelerate launch` with this file.
    """

    presets: str = field(
        default="ce,precision,diversity",
        metadata={"help": f"Comma-separated stage-1 presets out of {list(ALL_PRESETS)}, or 'all'. ce is always run."},
    )
    num_seeds: int | None = field(
        default=None, metadata={"help": _profile_help("Seeds per preset (seed, seed+1, ...)", "num_seeds")}
    )
    seed: int = field(default=0, metadata={"help": "First seed; also the seed of the built-in task's problems."})
    output_dir: str = field(default="study", metadata={"help": "Study directory (cells, figures, report)."})
    max_parallel: int | None = field(
        default=None,
        metadata={
            "help": "Cells run at once. Default: os.cpu_count() on the built-in task (one thread each), 1 with "
            "accelerate_config."
        },
    )
    confidence: float = field(default=0.95, metadata={"help": "Level of the intervals across seeds, in (0, 1)."})
    equal_nll_tolerance: float = field(
        default=0.05,
        metadata={
            "help": "'At equal perplexity': the interval of a preset's paired held-out NLL difference to ce must lie "
            "within +- this fraction of ce's mean NLL."
        },
    )
    quick: bool = field(default=False, metadata={"help": "Quick profile of the built-in task (fewer seeds, steps)."})
    tokenizer: str = field(
        default="bpe",
        metadata={
            "help": "Tokenizer of the built-in task: byte-level BPE trained on its text, or one id per character.",
            "choices": ["bpe", "char"],
        },
    )
    bpe_vocab_size: int = field(default=512, metadata={"help": "Vocabulary size of the built-in BPE tokenizer."})
    num_train_problems: int | None = field(
        default=None, metadata={"help": _profile_help("Distinct training problems", "num_train_problems")}
    )
    num_rl_problems: int | None = field(
        default=None,
        metadata={
            "help": _profile_help("Distinct GRPO problems, none of them a stage-1 or test problem", "num_rl_problems")
        },
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
    sft_learning_rate: float = field(
        default=1e-3,
        metadata={
            "help": "Stage-1 peak learning rate (cosine schedule). 1e-3: at 3e-3 the paired runs of a seed diverged and "
            "the stage-1 entropy differences changed sign between seeds (benchmarks/RESULTS.md, demo_study)."
        },
    )
    grpo_steps: int | None = field(default=None, metadata={"help": _profile_help("GRPO optimizer steps", "grpo_steps")})
    grpo_prompts_per_step: int = field(default=8, metadata={"help": "Prompts per GRPO step."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt in GRPO (the group)."})
    grpo_learning_rate: float = field(default=1e-4, metadata={"help": "GRPO learning rate (constant after warm-up)."})
    grpo_temperature: float = field(
        default=1.0,
        metadata={
            "help": "GRPO sampling temperature (the paper's 1.0). A tiny model's worked solutions degrade faster with "
            "temperature than its direct answers; lower it when RL drifts to direct answers (benchmarks/RESULTS.md)."
        },
    )
    eval_num_samples: int | None = field(
        default=None,
        metadata={"help": _profile_help("Samples per test problem (n of Avg@n, Pass@k)", "eval_num_samples")},
    )
    eval_temperature: float = field(default=0.7, metadata={"help": "Evaluation sampling temperature (the paper's)."})
    eval_top_p: float = field(default=0.95, metadata={"help": "Evaluation nucleus threshold (the paper's 0.95)."})
    shaping_top_k: int = field(
        default=100,
        metadata={
            "help": "k of the head set of tail_penalty / head_reward and of the top-k diagnostics (the paper's 100; "
            "with tokenizer=char the 23-token vocabulary needs a small k such as 4)."
        },
    )
    num_threads: int = field(default=1, metadata={"help": "torch threads per built-in cell process."})
    checkpoints_per_stage: int = field(
        default=4, metadata={"help": "Built-in task: checkpoints saved per training stage (resume points)."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Real scale: base model of stage 1 (hub name or local path). None: the built-in task."},
    )
    stage1_recipe: str = field(
        default="recipes/stage1_{preset}.yaml", metadata={"help": "Real scale: stage-1 recipe ({preset} replaced)."}
    )
    rl_recipe: str = field(default="recipes/rl_paper.yaml", metadata={"help": "Real scale: GRPO recipe."})
    eval_recipe: str = field(default="recipes/eval_paper.yaml", metadata={"help": "Real scale: evaluation recipe."})
    stage1_dataset: str | None = field(default=None, metadata={"help": "Real scale: --dataset_name of stage 1."})
    rl_dataset: str | None = field(default=None, metadata={"help": "Real scale: --dataset_name of GRPO."})
    eval_dataset: str | None = field(default=None, metadata={"help": "Real scale: --dataset_name of the evaluations."})
    stage1_args: str = field(
        default="", metadata={"help": "Real scale: extra overrides of stage 1, e.g. '--max_steps 100'."}
    )
    rl_args: str = field(default="", metadata={"help": "Real scale: extra overrides of GRPO."})
    eval_args: str = field(default="", metadata={"help": "Real scale: extra overrides of the evaluations."})
    accelerate_config: str | None = field(
        default=None, metadata={"help": "Real scale: run each stage under `accelerate launch --config_file` this."}
    )

    def __post_init__(self):
        self.preset_names()  # validates
        if self.builtin:
            profile = BUILTIN_PROFILES["quick" if self.quick else "full"]
            for name, value in profile.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
            for name in POSITIVE_FIELDS:
                value = getattr(self, name)
                if isinstance(value, bool) or not value > 0:
                    raise ValueError(f"{name} must be > 0, got {value!r}")
            if self.hidden_size % 8:
                raise ValueError(f"hidden_size must be a multiple of 8 (4 heads of even size), got {self.hidden_size}")
            if self.num_generations < 2:
                raise ValueError(f"num_generations must be >= 2 (GRPO compares a group), got {self.num_generations}")
            if self.eval_top_p > 1:
                raise ValueError(f"eval_top_p must be in (0, 1], got {self.eval_top_p}")
            if not self.grpo_temperature > 0:
                raise ValueError(f"grpo_temperature must be > 0, got {self.grpo_temperature}")
            if self.eval_temperature < 0:
                raise ValueError(f"eval_temperature must be >= 0, got {self.eval_temperature}")
            if self.tokenizer not in ("bpe", "char"):
                raise ValueError(f"tokenizer must be 'bpe' or 'char', got {self.tokenizer!r}")
            if self.tokenizer == "bpe" and self.bpe_vocab_size < 512:
                raise ValueError(
                    f"bpe_vocab_size must be >= 512 (k=100 much smaller than V), got {self.bpe_vocab_size}"
                )
        else:
            if self.num_seeds is None:
                self.num_seeds = 3
            if self.num_seeds < 1:
                raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")
            if self.accelerate_config is not None and not os.path.isfile(self.accelerate_config):
                raise ValueError(f"accelerate_config must be a file, got {self.accelerate_config!r}")
            for name in ("rl_recipe", "eval_recipe"):
                if not os.path.isfile(getattr(self, name)):
                    raise ValueError(f"{name} must be a recipe file, got {getattr(self, name)!r}")
            for preset in self.preset_names():
                if not os.path.isfile(self.stage1_recipe.format(preset=preset)):
                    raise ValueError(
                        f"stage1_recipe {self.stage1_recipe!r} gives no file for preset {preset!r}: "
                        f"{self.stage1_recipe.format(preset=preset)!r}"
                    )
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0 < self.equal_nll_tolerance < 1:
            raise ValueError(f"equal_nll_tolerance must be in (0, 1), got {self.equal_nll_tolerance}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1 or None, got {self.max_parallel}")

    @property
    def builtin(self) -> bool:
        """True for the built-in task, False at real scale (a `model_name_or_path` is given)."""
        return self.model_name_or_path is None

    def preset_names(self) -> list[str]:
        """The stage-1 presets to run, validated, `ce` first (added when missing: it is the baseline)."""
        if self.presets.strip() == "all":
            return list(ALL_PRESETS)
        names = [p.strip() for p in self.presets.split(",") if p.strip()]
        unknown = [p for p in names if p not in ALL_PRESETS]
        if not names or unknown:
            raise ValueError(
                f"presets must be 'all' or a comma-separated list out of {list(ALL_PRESETS)}, got {self.presets!r}"
            )
        return [BASELINE] + [p for p in dict.fromkeys(names) if p != BASELINE]

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_seeds)]

    def parallel(self, num_cells: int) -> int:
        """How many cells run at once."""
        if self.max_parallel is not None:
            return min(self.max_parallel, num_cells)
        if not self.builtin and self.accelerate_config is not None:
            return 1  # each cell takes the accelerators
        return max(1, min(num_cells, (os.cpu_count() or 1) // max(1, self.num_threads)))


@dataclass
class DemoConfig(StudyConfig):
    """The built-in demo (`trl-shaped demo`): a study on the built-in task, every field of `StudyConfig`, with its
    report in `demo_report/`."""

    output_dir: str = field(default="demo_report", metadata={"help": "Directory of the demo's study and report."})
