"""One cell of a study on the built-in task: stage 1 with a shaping preset, evaluation, GRPO from the stage-1
checkpoint, evaluation. `trl_shaped.study.run_study` runs each cell in its own process:

    python -m trl_shaped.study.builtin_cell <study_config.json> <preset> <seed> <cell_dir>

Everything is built locally: the task (`trl_shaped.tasks`), a tokenizer (byte-level BPE trained on the task's text, or one id
per character) shared by every cell of the study, and a tiny Qwen3-architecture model (`trl_shaped.tiny`). The cell's
seed sets the initial weights, the data order and the sampling; the problems are those of the study's first seed.

Layout of a cell directory (each stage's record is written atomically when the stage ends, so a rerun skips it):

    stage1/  rl/                                checkpoints while training, then the model and tokenizer
    stage1.json  rl.json                        settings, seconds, trainer log history, checkpoint resumed from
    eval_stage1.json  eval_rl.json              metrics of the evaluations
    eval_stage1_samples.json  eval_rl_samples.json   every sampled completion
    attempts.log                                one line per training stage started (and what it resumed from)
    result.json                                 everything above but the samples: written last
    study_config.json  fingerprint.json         the settings this cell runs with (written by the runner), and what
                                                determines it (recorded by the worker: trl_shaped/study/cells.py)
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback

from .. import ShapedGRPOConfig, ShapedGRPOTrainer, ShapedSFTConfig, ShapedSFTTrainer
from ..checkpoints import last_complete_checkpoint
from ..evaluation import EvalConfig, evaluate, log_evaluation, pass_at_k
from ..rewards import get_judge
from ..tiny import build_bpe_tokenizer, build_char_tokenizer, build_tiny_model
from .cells import (
    FINGERPRINT,
    StaleCells,
    builtin_task_args,
    fingerprint_changes,
    owned_cell,
    read_record,
    recorded_fingerprint,
    say,
    tokenizer_corpus,
    tokenizer_fingerprint,
    write_json_atomic,
)
from .children import tell_parent_ready
from .config import StudyConfig, stage1_arguments

# Trainer arguments recorded with each stage (read back from the configs actually used).
STAGE1_SETTINGS = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "shaping_preset")
RL_SETTINGS = (
    "max_steps",
    "per_device_train_batch_size",
    "num_generations",
    "temperature",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "dynamic_sampling",
    "max_resample_rounds",
    "learning_rate",
    "lr_scheduler_type",
    "prior_model_name_or_path",
)


@contextlib.contextmanager
def quiet_libraries():
    """A cell prints its own compact progress: silence the per-dataset-map and per-save progress bars and the
    library deprecation notices for its duration, then restore them."""
    datasets_bars = datasets.is_progress_bar_enabled()
    transformers_bars = transformers.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers.utils.logging.enable_progress_bar()


class CompactProgress(TrainerCallback):
    """Prints one line every `every` optimizer steps with a few logged values (replaces the per-log dict printer).

    Args:
        label (`str`): prefix of each line.
        keys (`dict[str, str]`): logged key -> short name to print.
        every (`int`): print at the first log of each block of this many steps, and at the last step.
    """

    def __init__(self, label: str, keys: dict[str, str], every: int):
        self.label, self.keys, self.every = label, keys, max(1, every)
        self.start = time.perf_counter()
        self.printed = 0  # index of the last `every`-block printed

    def on_log(self, args, state, control, logs=None, **kwargs):
        step, block = state.global_step, state.global_step // self.every
        values = " ".join(f"{short} {logs[key]:.3f}" for key, short in self.keys.items() if key in (logs or {}))
        if not values or (block == self.printed and step != state.max_steps):
            return
        self.printed = block
        elapsed = time.perf_counter() - self.start
        print(f"    {self.label} step {step}/{state.max_steps}  {values}  ({elapsed:.0f}s)", flush=True)


class JudgeTimer(TrainerCallback):
    """Times the judge (`self.judge` wraps it) and adds ``judge_seconds``, the seconds spent judging since the previous
    log, to each training log: on the code task, what running the programs in the sandbox costs per step. (TRL times
    each reward function too, but reports it only to wandb, mlflow and trackio, not to the log history.)

    Args:
        judge (`Callable`): the reward function; the wrapper keeps its name (TRL's ``rewards/<name>`` metrics).
    """

    def __init__(self, judge):
        self.seconds = self.total_seconds = 0.0

        @functools.wraps(judge)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return judge(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        self.judge = timed

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "reward" not in logs:  # the end-of-training summary
            return
        logs["judge_seconds"] = self.seconds
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["judge_seconds"] = self.seconds  # the trainer appended a copy of `logs`
        self.total_seconds += self.seconds
        self.seconds = 0.0


def _compact(trainer, label: str, keys: dict[str, str], every: int) -> None:
    trainer.remove_callback(PrinterCallback)  # present when tqdm is disabled: it prints every log dict
    trainer.add_callback(CompactProgress(label, keys, every))


def _settings(args, names) -> dict:
    # enums (e.g. the scheduler type) as their plain values
    return {name: getattr(getattr(args, name), "value", getattr(args, name)) for name in names}


def task_data(config: StudyConfig):
    """The study's task data: the same problems in every cell (they come from the first seed)."""
    return config.study_task().build_datasets(**builtin_task_args(config))


def shared_tokenizer(config: StudyConfig, data, folder: Path):
    """The study's tokenizer, built once and saved to `folder` with its fingerprint: the first cell to get here builds
    it (BPE trained on the stage-1 text) and moves it into place atomically; every cell then loads the saved one,
    after checking that it was built with this study's settings."""
    folder = Path(folder)
    fingerprint = tokenizer_fingerprint(config, data)
    if folder.is_dir():
        changes = fingerprint_changes(recorded_fingerprint(folder), fingerprint)
        if changes:
            raise RuntimeError(
                f"the tokenizer in {folder} was built with other settings ({'; '.join(changes)}): delete it, or run "
                "the study with --overwrite true"
            )
    else:
        if config.tokenizer == "char":
            tokenizer = build_char_tokenizer(config.study_task().alphabet())
        else:
            tokenizer = build_bpe_tokenizer(tokenizer_corpus(config, data), vocab_size=config.bpe_vocab_size)
        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / FINGERPRINT, fingerprint)
        try:
            os.rename(tmp, folder)
        except OSError:  # another cell was first: use its tokenizer
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(folder)


def _log_attempt(cell: Path, stage: str, resumed: str | None) -> None:
    with open(cell / "attempts.log", "a") as stream:
        stream.write(f"{stage} resumed_from={resumed}\n")


def tracking(config: StudyConfig, preset: str, seed: int, stage: str) -> dict:
    """Trainer arguments of the study's trackers (none unless `report_to` names some): the run
    `<study>/<preset>/seed<k>/<stage>` in the study's trackio project (wandb: the runner sets the group)."""
    return {
        "report_to": config.report_to or [],
        "run_name": config.run_name(preset, seed, stage),
        "project": config.study_name,
    }


def train_stage1(preset: str, seed: int, config: StudyConfig, data, tokenizer, cell: Path) -> dict:
    """Stage 1: shaped SFT of a fresh tiny model (initialised from `seed`) with the arm `preset` (a shaping preset,
    or dft: `config.stage1_arguments`), resumed from the newest complete checkpoint in `cell/stage1` if an earlier
    attempt left one; saves the model to `cell/stage1`."""
    out = cell / "stage1"
    resumed = last_complete_checkpoint(out)
    _log_attempt(cell, "stage1", resumed)
    model = build_tiny_model(
        len(tokenizer),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        max_position_embeddings=config.study_task().max_sequence_tokens,
        tokenizer=tokenizer,
        seed=seed,
    )
    steps = config.sft_steps
    args = ShapedSFTConfig(
        output_dir=str(out),
        **stage1_arguments(preset),
        shaping_top_k=config.shaping_top_k,  # only tail_penalty / head_reward use it
        max_steps=steps,
        per_device_train_batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.0,
        max_length=config.study_task().max_sequence_tokens,
        logging_steps=max(1, steps // 20),
        save_strategy="steps",
        save_steps=max(1, steps // config.checkpoints_per_stage),
        save_total_limit=1,
        **tracking(config, preset, seed, "stage1"),
        bf16=False,  # a float32 tiny model: CPU autocast would only slow it down
        disable_tqdm=True,
        seed=seed,  # the data order
    )
    trainer = ShapedSFTTrainer(
        model=model,
        args=args,
        train_dataset=data["sft"].select_columns(["prompt", "completion"]),  # the judge's columns are not text
        processing_class=tokenizer,
    )
    _compact(trainer, f"stage 1 [{preset} seed {seed}]", {"loss": "loss", "entropy": "entropy"}, max(1, steps // 4))
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=resumed)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    trainer.save_model(str(out))
    settings = _settings(args, STAGE1_SETTINGS)
    settings["shaping"] = dataclasses.asdict(args.shaping)  # the resolved preset
    settings["loss_type"] = args.loss_type  # "dft" for the dft arm (with the ce shaping)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "settings": settings,
        "log_history": trainer.state.log_history,
        "resumed_from": resumed,
    }


def train_rl(preset: str, seed: int, config: StudyConfig, data, tokenizer, cell: Path) -> dict:
    """Stage 2: GRPO from the stage-1 checkpoint, which stays the prior; resumed like stage 1; saves to `cell/rl`."""
    out, stage1_dir = cell / "rl", str(cell / "stage1")
    resumed = last_complete_checkpoint(out)
    _log_attempt(cell, "rl", resumed)
    steps = config.grpo_steps
    args = ShapedGRPOConfig(
        output_dir=str(out),
        prior_model_name_or_path=stage1_dir,
        max_steps=steps,
        per_device_train_batch_size=config.grpo_prompts_per_step * config.num_generations,
        num_generations=config.num_generations,
        max_completion_length=config.study_task().max_completion_tokens,
        temperature=config.grpo_temperature,
        # The paper's recipe (no KL, clip-higher, dynamic sampling) at a learning rate that moves a tiny model
        # within a few dozen steps.
        beta=0.0,
        epsilon_high=0.28,
        dynamic_sampling=True,
        max_resample_rounds=1,
        learning_rate=config.grpo_learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=max(1, steps // 20),
        diagnostics_steps=max(1, steps // 10),
        diagnostics_top_k=config.shaping_top_k,
        logging_steps=1,
        save_strategy="steps",
        save_steps=max(1, steps // config.checkpoints_per_stage),
        save_total_limit=1,
        **tracking(config, preset, seed, "rl"),
        bf16=False,
        disable_tqdm=True,
        seed=seed,
    )
    judge_timer = JudgeTimer(get_judge(config.study_task().judge))
    trainer = ShapedGRPOTrainer(
        model=stage1_dir,
        reward_funcs=judge_timer.judge,
        args=args,
        train_dataset=data["rl"],
        processing_class=tokenizer,
    )
    trainer.add_callback(judge_timer)  # before the progress line, which prints its value
    keys = {"reward": "reward", "entropy": "entropy", "completions/mean_length": "length", "judge_seconds": "judge s"}
    _compact(trainer, f"GRPO [{preset} seed {seed}]", keys, every=max(1, steps // 4))
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=resumed)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    trainer.save_model(str(out))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "judge_seconds": judge_timer.total_seconds,  # wall time spent judging (per step: log_history's judge_seconds)
        "settings": _settings(args, RL_SETTINGS),
        "log_history": trainer.state.log_history,
        "resumed_from": resumed,
    }


def _stderr(values: list[float]) -> float:
    """Standard error of the mean of `values` (per-problem scores: the noise of a metric over the test set)."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1) / len(values))


def completion_profile(per_problem: list[dict], pass_k: list[int], task) -> dict:
    """What the sampled completions look like: the share of each of the task's strategies, how many distinct correct
    solutions a problem gets (the exploration the prior offers RL; from the evaluation's per-sample scores, given by
    the task's judge as RL's rewards are), and the standard errors of Avg@n and Pass@k over the test problems."""
    strategies = {"worked": 0, "direct": 0, "other": 0}
    distinct_correct = []
    for record in per_problem:
        texts = record["completions"]
        for text in texts:
            label = task.solution_strategy(text)
            strategies[label] = strategies.get(label, 0) + 1
        correct = {t.strip() for t, score in zip(texts, record["scores"], strict=True) if score >= 1.0}
        distinct_correct.append(len(correct))
    n = len(per_problem[0]["completions"])
    total = sum(strategies.values())
    return {
        "avg_at_n_stderr": _stderr([r["num_correct"] / n for r in per_problem]),
        "pass_at_k_stderr": {str(k): _stderr([pass_at_k(n, r["num_correct"], k) for r in per_problem]) for k in pass_k},
        **{f"frac_{name}": count / total for name, count in strategies.items()},
        "distinct_correct_per_problem": sum(distinct_correct) / len(distinct_correct),
    }


@torch.no_grad()
def first_token_stats(model, tokenizer, prompts: list[str]) -> dict:
    """The model's next-token distribution right after each prompt: the task's first branching point (answer
    directly, or start working from one of the terms). Returns its mean entropy and the mean probability of the
    direct strategy (the tokens that start with ``#``)."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**batch, position_ids=position_ids).logits[:, -1].float()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    direct = torch.tensor([tokenizer.decode([i]).lstrip().startswith("#") for i in range(logits.shape[-1])])
    return {
        "first_token_entropy": entropy.mean().item(),
        "first_token_p_direct": logp.exp()[:, direct].sum(-1).mean().item(),
    }


def evaluate_checkpoint(
    folder: Path, tokenizer, data, config: StudyConfig, seed: int, samples_path: Path, tracker: dict | None = None
) -> dict:
    """Avg@n, Cons@n, Pass@k and held-out diagnostics of the model saved in `folder`; the samples go to
    `samples_path`, the metrics to the trackers of `tracker` (`tracking(...)` of the stage) and are returned."""
    tracker = tracker or {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    eval_config = EvalConfig(
        num_samples=config.eval_num_samples,
        temperature=config.eval_temperature,
        top_p=config.eval_top_p,
        max_new_tokens=config.study_task().max_completion_tokens,
        judge=config.study_task().judge,  # the judge RL rewarded with
        diagnostics_top_k=config.shaping_top_k,
        diagnostics_batch_size=64,
        seed=seed,
        run_name=str(folder),
        progress=False,
        report_to=tracker.get("report_to") or ["none"],
        project=tracker.get("project", "huggingface"),
        tracker_run_name=tracker.get("run_name"),
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    result = evaluate(model, tokenizer, data["test"], eval_config)
    result["seconds"], result["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu_start
    task = config.study_task()
    result.update(completion_profile(result["per_problem"], eval_config.pass_k, task))
    result.update(first_token_stats(model, tokenizer, list(data["test"]["prompt"])))
    write_json_atomic(samples_path, result)
    stage = samples_path.parent / samples_path.stem.removesuffix("_samples")
    log_evaluation(result, eval_config.report_to, project=eval_config.project,
                   run_name=str(eval_config.tracker_run_name), output_dir=str(stage))  # fmt: skip
    return {k: v for k, v in result.items() if k != "per_problem"}


def _stage(cell: Path, name: str, compute) -> dict:
    """The record of stage `name`: read back when an earlier attempt finished it, else computed and saved (also when
    the record is damaged: `cells.read_record` moves it aside)."""
    path = cell / f"{name}.json"
    record = read_record(path)
    if record is not None:
        return record
    record = compute()
    write_json_atomic(path, record)
    return record


def run_cell(config: StudyConfig, preset: str, seed: int, cell: Path) -> dict:
    """Run (or resume) the cell (`preset`, `seed`) in `cell` and write its `result.json` last."""
    cell = Path(cell)
    cell.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.num_threads)
    data = task_data(config)
    tokenizer = shared_tokenizer(config, data, Path(config.output_dir) / "tokenizer")
    with quiet_libraries():
        stage1 = _stage(cell, "stage1", lambda: train_stage1(preset, seed, config, data, tokenizer, cell))
        eval_stage1 = _stage(cell, "eval_stage1", lambda: evaluate_checkpoint(
            cell / "stage1", tokenizer, data, config, seed, cell / "eval_stage1_samples.json",
            tracking(config, preset, seed, "eval_stage1")))  # fmt: skip
        say("cell", f"{preset} seed {seed} stage 1: Avg@n {eval_stage1['avg_at_n']:.3f}, held-out entropy "
            f"{(eval_stage1['diagnostics'] or {}).get('entropy', math.nan):.4f}")  # fmt: skip
        rl = _stage(cell, "rl", lambda: train_rl(preset, seed, config, data, tokenizer, cell))
        eval_rl = _stage(cell, "eval_rl", lambda: evaluate_checkpoint(
            cell / "rl", tokenizer, data, config, seed, cell / "eval_rl_samples.json",
            tracking(config, preset, seed, "eval_rl")))  # fmt: skip
        say("cell", f"{preset} seed {seed} after RL: Avg@n {eval_rl['avg_at_n']:.3f}")
    result = {
        "preset": preset,
        "seed": seed,
        "stage1": stage1,
        "eval_stage1": eval_stage1,
        "rl": rl,
        "eval_rl": eval_rl,
        # CPU time of this process, imports included: about the cell's wall time on an idle core (each stage records
        # its own `seconds` and `cpu_seconds`)
        "cpu_seconds": time.process_time(),
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(cell / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    """The cell worker's entry point: `<study_config.json> <preset> <seed> <cell_dir>`. It owns the cell while it
    writes it (`cells.owned_cell`: its lock, its recorded fingerprint), so a command printed by `--dry_run` leaves a
    cell the study accepts; a cell of other settings ends it with exit status 2 and one line."""
    config_path, preset, seed, cell = argv if argv is not None else sys.argv[1:]
    config = StudyConfig(**json.loads(Path(config_path).read_text()))
    tell_parent_ready()  # the runner held the cell's lock while this process started: it is this one's to take now
    try:
        with owned_cell(config, preset, int(seed), Path(cell), tag="cell") as owned:
            if owned.result is None:
                run_cell(config, preset, int(seed), Path(cell))
    except StaleCells as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
