"""`StudyConfig`: presets x seeds of the two-stage pipeline, on the built-in task or at real scale through the recipes.

Two backends, chosen by `model_name_or_path`:

- left `None`: the built-in task (`trl_shaped.tasks`, arithmetic by default) on a tiny Qwen3 model built locally; the sizes
  come from a profile (`BUILTIN_PROFILES`, "full" or `quick`) unless given;
- a hub name or a local path: every stage of every cell runs through the recipes (`trl-shaped sft|grpo|eval --config
  <recipe>` with overrides), under `accelerate launch --config_file <accelerate_config>` when one is given.
"""

import json
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

from trl_shaped.packaged import packaged_path

ALL_PRESETS = ("ce", "precision", "diversity", "tail_penalty", "head_reward")  # the paper's; `presets: all`
# Opt-in stage-1 arms beside the paper's presets, each named in `presets` to run. dft: TRL's SFTConfig
# loss_type="dft" (cross-entropy weighted by the detached target probability), the paper's nearest published competitor.
EXTRA_ARMS = ("dft",)
ARMS = ALL_PRESETS + EXTRA_ARMS
BASELINE = "ce"  # every paired difference is "preset minus this preset, same seed"

# Per-profile defaults of the built-in task's fields left `None`: these are the arithmetic task's; another task may
# replace any of them with its own `profiles` ({"full": {...}, "quick": {...}}, see `task_profile`). The full profile (9 cells, two at a time) is sized to
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
# The StudyConfig fields that do not change any cell: how many cells, where they go, how they are run and reported.
# Every other field is part of a cell's fingerprint (trl_shaped/study/cells.py) unless only the other backend reads it
# (REAL_SCALE_FIELDS, BUILTIN_FIELDS below), so a new field counts as changing the cells unless it is named here.
LAUNCH_FIELDS = (
    "launcher",
    "slurm_partition",
    "slurm_account",
    "slurm_time_limit",
    "slurm_cpus_per_gpu",
    "slurm_additional_parameters",
    "report_to",
    "report_only",
    "dry_run",
)
STUDY_LEVEL_FIELDS = (
    "presets",  # which cells; the cell's own preset is part of its place (cells/<preset>/)
    "num_seeds",  # which cells; the cell's own seed is part of its place (seed<k>/)
    "output_dir",
    "max_parallel",
    "confidence",
    "equal_nll_tolerance",
    "quick",  # selects a profile; the values it resolves to are fields of their own
    "overwrite",
    *LAUNCH_FIELDS,  # where and how a cell runs, not what it computes
)
# The fields a cell of one backend reads and the other does not: each backend's cells leave the other's out of their
# fingerprint. The recipes and the accelerate file count by their contents, the cell's seed and world size by their
# own entries (`seed` is the first seed of the study; `slurm_gpus_per_cell` a world size on Slurm only): see
# trl_shaped/study/cells.py. A field named nowhere counts for both backends.
REAL_SCALE_FIELDS = (
    "model_name_or_path",
    "stage1_dataset",
    "rl_dataset",
    "eval_dataset",
    "stage1_args",
    "rl_args",
    "eval_args",
)
BY_CONTENTS_FIELDS = ("stage1_recipe", "rl_recipe", "eval_recipe", "accelerate_config")
BUILTIN_FIELDS = (
    "task",
    "task_args",
    "tokenizer",
    "bpe_vocab_size",
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
    "num_generations",
    "grpo_learning_rate",
    "grpo_temperature",
    "eval_num_samples",
    "eval_temperature",
    "eval_top_p",
    "shaping_top_k",
    "num_threads",
    "checkpoints_per_stage",
)
CELL_OWN_FIELDS = ("seed", "slurm_gpus_per_cell")
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


# Real scale: the GRPO and evaluation recipes of each task's domain, whose data and judge they name (`task` picks
# them when `rl_recipe` / `eval_recipe` are not given). The built-in arithmetic task's domain is math (GSM8K).
REAL_SCALE_RECIPES = {
    "arithmetic": ("recipes/rl_paper.yaml", "recipes/eval_paper.yaml"),
    "code": ("recipes/rl_code.yaml", "recipes/eval_code.yaml"),
    "fill_sum": ("recipes/rl_paper.yaml", "recipes/eval_paper.yaml"),  # arithmetic too: its domain is math
    "reasoning_gym": ("recipes/rl_logic.yaml", "recipes/eval_logic.yaml"),
}

LAUNCHERS = ("local", "slurm", "submitit_local")
# How and where the cells run, what is tracked and what one invocation does: none of these changes a cell's results.
# (`slurm_gpus_per_cell` is not among them: it sets `accelerate launch --num_processes`, hence the global batch.)


def _profile_help(text: str, name: str) -> str:
    full, quick = BUILTIN_PROFILES["full"][name], BUILTIN_PROFILES["quick"][name]
    return f"{text} (default on arithmetic: {full} full, {quick} quick; other tasks: their profile)."


def task_profile(task, quick: bool) -> dict:
    """The sizes of the built-in study on `task` (a `trl_shaped.tasks.StudyTask`): `BUILTIN_PROFILES` (sized on the
    arithmetic task), with what the task's own `profiles` attribute sets for this profile, when it has one."""
    name = "quick" if quick else "full"
    own = (getattr(task, "profiles", None) or {}).get(name, {})
    unknown = sorted(set(own) - set(BUILTIN_PROFILES[name]))
    if unknown:
        raise ValueError(f"task {task.name!r}: profiles[{name!r}] sets {unknown}, which are not profile fields")
    return {**BUILTIN_PROFILES[name], **own}


@dataclass
class StudyConfig:
    """Configuration of `trl-shaped study` and `trl_shaped.study.run_study`.

    A *cell* is one (preset, seed): stage 1 with the preset, evaluation, GRPO from the stage-1 checkpoint, evaluation.
    The seed changes the model initialisation (built-in task), the data order and the sampling; the task's problems
    are the same in every cell (they come from `seed`, the first seed).

    Args:
        presets (`str`): comma-separated stage-1 arms; "all" stands for the paper's five presets. `ce` is always run
            (the baseline of the paired differences). `dft` (TRL's DFT loss) is opt-in: name it ("all,dft").
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
        stage1_recipe, rl_recipe, eval_recipe (`str`): real scale: the recipe YAMLs (`{preset}` is replaced by the
            arm's `shaping_preset`: ce for dft); `rl_recipe` and `eval_recipe` default to those of the `task`'s
            domain (`REAL_SCALE_RECIPES`: math for arithmetic and fill_sum, code, logic for reasoning_gym).
        stage1_dataset, rl_dataset, eval_dataset (`str`, *optional*): real scale: `--dataset_name` overrides.
        stage1_args, rl_args, eval_args (`str`): real scale: further command-line overrides of each stage.
        accelerate_config (`str`, *optional*): real scale: run each stage under `accelerate launch` with this file.
        overwrite (`bool`): recompute the cells of `output_dir` that were computed with other settings (without it,
            such a rerun stops before any compute and names the settings that differ).
        launcher (`str`): where the cells run: "local" (processes on this machine, `max_parallel` at once), "slurm"
            (each cell one Slurm job through submitit) or "submitit_local" (each cell a submitit job on this machine).
        slurm_partition, slurm_account (`str`, *optional*), slurm_gpus_per_cell, slurm_time_limit,
        slurm_cpus_per_gpu (`int`), slurm_additional_parameters (`str`): the Slurm job of a cell (see the field help).
        report_to (`list[str]`, *optional*): trackers of every training stage (as TRL's `report_to`), runs named
            `<study>/<preset>/seed<k>/<stage>` in the group (wandb) or project (trackio) `<study>`.
        report_only (`bool`): write the report from the finished cells only, marking the missing ones; run nothing.
        dry_run (`bool`): print every cell's commands and run nothing.
    """

    presets: str = field(
        default="ce,precision,diversity",
        metadata={
            "help": f"Comma-separated stage-1 arms out of {list(ARMS)}; 'all' stands for the paper's five presets "
            "(dft is opt-in: 'all,dft' adds it). ce is always run."
        },
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
    task: str = field(
        default="arithmetic",
        metadata={
            "help": "Task of the built-in study: arithmetic, code, fill_sum, or reasoning_gym:<name> (trl_shaped.tasks); its "
            "judge is GRPO's reward and the evaluations' correctness. At real scale, its domain picks the default "
            "rl_recipe and eval_recipe (math for arithmetic and fill_sum, code, logic for reasoning_gym)."
        },
    )
    task_args: str = field(
        default="{}",
        metadata={"help": "Settings of the task as a JSON object, e.g. '{\"max_operand\": 5}' (the task's fields)."},
    )
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
            "help": "Stage-1 peak learning rate (cosine schedule); how it was sized: benchmarks/RESULTS.md (Demo and study)."
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
        default="recipes/stage1.yaml",
        metadata={
            "help": "Real scale: the stage-1 recipe, run with --shaping_preset <preset>; a {preset} in the path is "
            "replaced, for per-preset files."
        },
    )
    rl_recipe: str | None = field(
        default=None,
        metadata={"help": "Real scale: GRPO recipe (default: the task's domain's, REAL_SCALE_RECIPES: rl_paper.yaml)."},
    )
    eval_recipe: str | None = field(
        default=None,
        metadata={
            "help": "Real scale: evaluation recipe (default: the task's domain's, REAL_SCALE_RECIPES: eval_paper.yaml)."
        },
    )
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

    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Recompute the cells of output_dir whose settings differ from this run's (only those). Without "
            "it a rerun with other settings stops before any compute and names the settings that differ."
        },
    )
    launcher: str = field(
        default="local",
        metadata={
            "help": "Where the cells run: local (processes on this machine, max_parallel at once), slurm (each cell "
            "one Slurm job through submitit: pip install trl_shaped[slurm]) or submitit_local (every cell at once as a "
            "submitit job on this machine: the job path without a scheduler).",
            "choices": list(LAUNCHERS),
        },
    )
    slurm_partition: str | None = field(default=None, metadata={"help": "Slurm: partition of the cell jobs."})
    slurm_account: str | None = field(default=None, metadata={"help": "Slurm: account charged for the cell jobs."})
    slurm_gpus_per_cell: int | None = field(
        default=None,
        metadata={
            "help": "Slurm: GPUs of one cell's job (one node); real-scale stages run `accelerate launch "
            "--num_processes` this. Default: 8 at real scale (the recipes' batch sizes assume one node of 8 GPUs), 0 "
            "on the built-in task (a CPU job of num_threads cores: single-threaded CPU cells need no GPU)."
        },
    )
    slurm_time_limit: int = field(
        default=24 * 60,
        metadata={
            "help": "Slurm: time limit of a cell's job in minutes; a job that reaches it is requeued and resumes "
            "from the cell's newest complete checkpoint."
        },
    )
    slurm_cpus_per_gpu: int = field(default=8, metadata={"help": "Slurm: CPU cores per GPU of a cell's job."})
    slurm_additional_parameters: str = field(
        default="{}",
        metadata={
            "help": 'Slurm: further sbatch options as a JSON object, e.g. \'{"qos": "high", "mem": "0", '
            '"constraint": "h100"}\' (submitit\'s slurm_additional_parameters).'
        },
    )
    report_to: list[str] | None = field(
        default=None,
        metadata={
            "help": "Trackers of every training stage, as TRL's report_to (trackio, wandb, tensorboard, none); runs "
            "are named <study>/<preset>/seed<k>/<stage>, grouped by the study (wandb group, trackio project). "
            "Default: the recipes' own setting at real scale, none on the built-in task."
        },
    )
    report_only: bool = field(
        default=False,
        metadata={
            "help": "Write the report from the cells finished so far, marking the missing ones; runs no cell "
            "(the others may still be queued or running)."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print every cell's commands (to run them with another scheduler) and run nothing."},
    )

    def __post_init__(self):
        self.preset_names()  # validates
        self._check_launch()
        domain = str(self.task).strip().partition(":")[0]
        if domain not in REAL_SCALE_RECIPES:
            raise ValueError(
                f"task must be one of {sorted(REAL_SCALE_RECIPES)} (or reasoning_gym:<name>), got {self.task!r}"
            )
        # resolved on both backends, so that the fingerprint (which records them) reads as before on the built-in task
        self.rl_recipe = self.rl_recipe or REAL_SCALE_RECIPES[domain][0]
        self.eval_recipe = self.eval_recipe or REAL_SCALE_RECIPES[domain][1]
        if self.builtin:
            profile = task_profile(self.study_task(), self.quick)  # also validates task and task_args
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
            # repository-relative defaults (recipes/..., accelerate_configs/...) found from any directory
            presets = [stage1_arguments(arm)["shaping_preset"] for arm in self.preset_names()]
            self.stage1_recipe = packaged_path(self.stage1_recipe, probe=self.stage1_recipe.format(preset=presets[0]))
            self.rl_recipe, self.eval_recipe = packaged_path(self.rl_recipe), packaged_path(self.eval_recipe)
            if self.accelerate_config is not None:
                self.accelerate_config = packaged_path(self.accelerate_config)
            if self.accelerate_config is not None and not os.path.isfile(self.accelerate_config):
                raise ValueError(f"accelerate_config must be a file, got {self.accelerate_config!r}")
            for name in ("rl_recipe", "eval_recipe"):
                if not os.path.isfile(getattr(self, name)):
                    raise ValueError(f"{name} must be a recipe file, got {getattr(self, name)!r}")
            for arm in self.preset_names():
                preset = stage1_arguments(arm)["shaping_preset"]
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
        if self.report_only and not any(
            (Path(self.output_dir) / "cells" / p / f"seed{s}" / "result.json").is_file()
            for p in self.preset_names()
            for s in self.seeds()
        ):
            raise ValueError(
                f"report_only: no cell of {self.output_dir} has finished yet (no cells/<preset>/seed<k>/result.json)"
            )

    def _check_launch(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {list(LAUNCHERS)}, got {self.launcher!r}")
        if self.slurm_gpus_per_cell is None:
            self.slurm_gpus_per_cell = 0 if self.builtin else 8
        least_gpus = 0 if self.builtin else 1  # a real-scale stage launches one process per GPU
        for name, least in (("slurm_gpus_per_cell", least_gpus), ("slurm_time_limit", 1), ("slurm_cpus_per_gpu", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        self.slurm_extra()  # validates
        if self.launcher != "local" and not (self.dry_run or self.report_only):
            import importlib.util

            if importlib.util.find_spec("submitit") is None:
                raise ValueError(f"launcher {self.launcher} needs submitit: pip install trl_shaped[slurm]")
            # (inside a cell's job, where a built-in cell reads the study's config back, nothing is submitted)
            if self.launcher == "slurm" and shutil.which("sbatch") is None and "SLURM_JOB_ID" not in os.environ:
                raise ValueError(
                    "launcher slurm needs Slurm's sbatch on the PATH (run it on a login node of the cluster); "
                    "--dry_run true prints the cells' commands for another scheduler"
                )
        if self.report_only and self.dry_run:
            raise ValueError("report_only and dry_run exclude each other: pick one")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if self.report_to:
            from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

            known = sorted(INTEGRATION_TO_CALLBACK) + ["all", "none"]
            unknown = [name for name in self.report_to if name not in known]
            if unknown:
                raise ValueError(f"report_to must name trackers out of {known}, got {unknown}")
            if not self.builtin and len(self.report_to) > 1:
                # the stage commands take one `--report_to` value (TrainingArguments' command-line form)
                raise ValueError(
                    f"report_to at real scale names one tracker (the stage commands take one), got {self.report_to}; "
                    "set several in the recipes' `report_to` instead"
                )

    def study_task(self):
        """The built-in study's task (`trl_shaped.tasks.StudyTask`), built from `task` and `task_args`."""
        from ..tasks import get_task

        try:
            settings = json.loads(self.task_args or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"task_args must be a JSON object, got {self.task_args!r}: {error}") from None
        if not isinstance(settings, dict):
            raise ValueError(f"task_args must be a JSON object, got {self.task_args!r}")
        return get_task(self.task, **settings)

    def slurm_extra(self) -> dict:
        """`slurm_additional_parameters` as a dict (validated)."""
        try:
            extra = json.loads(self.slurm_additional_parameters or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(
                f"slurm_additional_parameters must be a JSON object, got {self.slurm_additional_parameters!r}: {error}"
            ) from None
        if not isinstance(extra, dict):
            raise ValueError(
                f"slurm_additional_parameters must be a JSON object, got {self.slurm_additional_parameters!r}"
            )
        return extra

    @property
    def study_name(self) -> str:
        """The study's name in trackers: the name of its output directory."""
        return Path(self.output_dir).resolve().name

    def run_name(self, preset: str, seed: int, stage: str) -> str:
        """The tracker run name of one stage of one cell: `<study>/<preset>/seed<k>/<stage>`."""
        return f"{self.study_name}/{preset}/seed{seed}/{stage}"

    @property
    def builtin(self) -> bool:
        """True for the built-in task, False at real scale (a `model_name_or_path` is given)."""
        return self.model_name_or_path is None

    def cell_fields(self) -> list[str]:
        """The fields a cell of this backend reads as they are (its fingerprint's settings; see `BUILTIN_FIELDS`)."""
        other = REAL_SCALE_FIELDS if self.builtin else BUILTIN_FIELDS
        left_out = set(STUDY_LEVEL_FIELDS) | set(other) | set(BY_CONTENTS_FIELDS) | set(CELL_OWN_FIELDS)
        return [f.name for f in fields(self) if f.name not in left_out]

    def preset_names(self) -> list[str]:
        """The stage-1 arms to run, validated, `ce` first (added when missing: it is the baseline)."""
        names = []
        for name in (p.strip() for p in self.presets.split(",")):
            names += list(ALL_PRESETS) if name == "all" else [name] if name else []
        unknown = [p for p in names if p not in ARMS]
        if not names or unknown:
            raise ValueError(
                f"presets must be 'all' or a comma-separated list out of {list(ARMS)} ('all' is the paper's five "
                f"presets; dft is added by name), got {self.presets!r}"
            )
        return [BASELINE] + [p for p in dict.fromkeys(names) if p != BASELINE]

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_seeds)]

    def cells(self) -> list[tuple[str, int]]:
        """Every (preset, seed) of the study, seed by seed (so the first cells to finish pair with ce)."""
        return [(preset, seed) for seed in self.seeds() for preset in self.preset_names()]

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
    report in `demo_report/` (`demo_report_quick/` for the quick profile; `demo_report_<task>[_quick]/` for another
    task than arithmetic, so that no two of them share cells)."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the demo's study and report (default: demo_report, demo_report_quick quick; "
            "demo_report_<task>, demo_report_<task>_quick for another task)."
        },
    )

    def __post_init__(self):
        if self.output_dir is None:
            task = "" if self.task == "arithmetic" else "_" + "".join(c if c.isalnum() else "_" for c in self.task)
            self.output_dir = f"demo_report{task}" + ("_quick" if self.quick else "")
        super().__post_init__()


def stage1_arguments(arm: str) -> dict:
    """The stage-1 `ShapedSFTConfig` fields of a study arm (both backends pass exactly these): a paper preset is its
    `shaping_preset`; `dft` is TRL's DFT loss, which replaces the loss and so runs with the cross-entropy shaping.

    Args:
        arm (`str`): one of `ARMS`.
    """
    if arm == "dft":
        return {"shaping_preset": "ce", "loss_type": "dft"}
    if arm in ALL_PRESETS:
        return {"shaping_preset": arm}
    raise ValueError(f"arm must be one of {list(ARMS)}, got {arm!r}")
