"""The demo's pipeline: for each preset, stage 1 with the shaped loss, evaluation, GRPO from the stage-1 checkpoint,
evaluation again; then the report.

Everything is built locally: the task (`task.py`), a character tokenizer over the task's alphabet and a tiny
Qwen3-architecture model (`trl_shaped.tiny`). Every preset starts from the same initial weights and sees the same data
in the same order, so the presets differ only by their stage-1 loss.

Layout of `config.output_dir`:

    report.md, results.json, *.png          the report (`report.py`)
    runs/<preset>/stage1/                   stage-1 checkpoint (model, tokenizer, trainer_state.json)
    runs/<preset>/rl/                       GRPO checkpoint (model, tokenizer, trainer_state.json)
    runs/<preset>/eval_{stage1,rl}.json     every sampled completion of the evaluations
"""

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from transformers import PrinterCallback, TrainerCallback

from .. import ShapedGRPOConfig, ShapedGRPOTrainer, ShapedSFTConfig, ShapedSFTTrainer
from ..evaluation import EvalConfig, evaluate, pass_at_k
from ..rewards import exact_answer_reward
from ..tiny import build_char_tokenizer, build_tiny_model
from .config import DemoConfig
from .report import write_report
from .task import ArithmeticTask, build_datasets, solution_strategy, task_alphabet

# Longest completion of the default task ("19+19=38; 38+19=57 #### 57", 26 characters) plus the eos token and
# room for a few mistakes.
MAX_COMPLETION_TOKENS = 32
MAX_SEQUENCE_TOKENS = 64
# Trainer arguments recorded in results.json and quoted by the report (read back from the configs actually used).
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


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


@contextlib.contextmanager
def _quiet_libraries():
    """The demo prints its own compact progress: silence the per-dataset-map and per-save progress bars and the
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


def _compact(trainer, label: str, keys: dict[str, str], every: int) -> None:
    trainer.remove_callback(PrinterCallback)  # present when tqdm is disabled: it prints every log dict
    trainer.add_callback(CompactProgress(label, keys, every))


def _settings(args, names) -> dict:
    # enums (e.g. the scheduler type) as their plain values
    return {name: getattr(getattr(args, name), "value", getattr(args, name)) for name in names}


def train_stage1(preset: str, config: DemoConfig, data, tokenizer, run_dir: Path) -> dict:
    """Stage 1: shaped SFT of a fresh tiny model with `preset`; saves the checkpoint to `run_dir/stage1`."""
    model = build_tiny_model(
        len(tokenizer),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        max_position_embeddings=MAX_SEQUENCE_TOKENS,
        tokenizer=tokenizer,
        seed=config.seed,
    )
    out = run_dir / "stage1"
    args = ShapedSFTConfig(
        output_dir=str(out),
        shaping_preset=preset,
        shaping_top_k=config.shaping_top_k,  # only tail_penalty / head_reward use it
        max_steps=config.sft_steps,
        per_device_train_batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, config.sft_steps // 20),
        weight_decay=0.0,
        max_length=MAX_SEQUENCE_TOKENS,
        logging_steps=max(1, config.sft_steps // 20),
        save_strategy="no",
        report_to=[],
        bf16=False,  # a float32 tiny model: CPU autocast would only slow it down
        disable_tqdm=True,
        seed=config.seed,
    )
    trainer = ShapedSFTTrainer(
        model=model, args=args, train_dataset=data["sft"].remove_columns("answer"), processing_class=tokenizer
    )
    keys = {"loss": "loss", "nll": "nll", "entropy": "entropy"}
    _compact(trainer, f"stage 1 [{preset}]", keys, every=max(1, config.sft_steps // 4))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out))
    trainer.save_state()
    settings = _settings(args, STAGE1_SETTINGS)
    settings["shaping"] = dataclasses.asdict(args.shaping)  # the resolved preset
    return {
        "checkpoint": str(out),
        "seconds": seconds,
        "settings": settings,
        "log_history": trainer.state.log_history,
        "model": trainer.model,
    }


def train_rl(preset: str, config: DemoConfig, data, tokenizer, stage1_dir: str, run_dir: Path) -> dict:
    """Stage 2: GRPO from the stage-1 checkpoint, which stays the prior; saves the policy to `run_dir/rl`."""
    out = run_dir / "rl"
    steps = config.grpo_steps
    args = ShapedGRPOConfig(
        output_dir=str(out),
        prior_model_name_or_path=stage1_dir,
        max_steps=steps,
        per_device_train_batch_size=config.grpo_prompts_per_step * config.num_generations,
        num_generations=config.num_generations,
        max_completion_length=MAX_COMPLETION_TOKENS,
        temperature=1.0,
        # The paper's recipe (no KL, clip-higher, dynamic sampling) at a learning rate that moves a tiny model
        # within a hundred steps.
        beta=0.0,
        epsilon_high=0.28,
        dynamic_sampling=True,
        max_resample_rounds=1,
        learning_rate=config.grpo_learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=max(1, steps // 20),
        diagnostics_steps=max(1, steps // 10),
        diagnostics_top_k=config.shaping_top_k,
        logging_steps=max(1, steps // 50),
        save_strategy="no",
        report_to=[],
        bf16=False,
        disable_tqdm=True,
        seed=config.seed,
    )
    trainer = ShapedGRPOTrainer(
        model=stage1_dir,
        reward_funcs=exact_answer_reward,
        args=args,
        train_dataset=data["rl"],
        processing_class=tokenizer,
    )
    keys = {"reward": "reward", "entropy": "entropy", "completions/mean_length": "length"}
    _compact(trainer, f"GRPO [{preset}]", keys, every=max(1, steps // 4))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out))
    trainer.save_state()
    return {
        "checkpoint": str(out),
        "seconds": seconds,
        "settings": _settings(args, RL_SETTINGS),
        "log_history": trainer.state.log_history,
        "model": trainer.model,
    }


def _stderr(values: list[float]) -> float:
    """Standard error of the mean of `values` (per-problem scores: the noise of a metric over the test set)."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1) / len(values))


def completion_profile(per_problem: list[dict], answers: list[str], pass_k: list[int]) -> dict:
    """What the sampled completions look like: the share of each strategy, how many distinct correct solutions a
    problem gets (the exploration the prior offers RL), and the standard errors of Avg@n and Pass@k over problems."""
    strategies = {"worked": 0, "direct": 0, "other": 0}
    distinct_correct = []
    for record, gold in zip(per_problem, answers):
        correct = set()
        for text, extracted in zip(record["completions"], record["extracted"]):
            strategies[solution_strategy(text)] += 1
            if extracted is not None and extracted.strip() == gold:
                correct.add(text.strip())
        distinct_correct.append(len(correct))
    n = len(per_problem[0]["completions"])
    total = sum(strategies.values())
    return {
        "avg_at_n_stderr": _stderr([r["num_correct"] / n for r in per_problem]),
        "pass_at_k_stderr": {
            str(k): _stderr([pass_at_k(n, r["num_correct"], k) for r in per_problem]) for k in pass_k
        },
        **{f"frac_{name}": count / total for name, count in strategies.items()},
        "distinct_correct_per_problem": sum(distinct_correct) / len(distinct_correct),
    }


@torch.no_grad()
def first_token_stats(model, tokenizer, prompts: list[str]) -> dict:
    """The model's next-token distribution right after each prompt: the task's first branching point (answer
    directly, or start working from one of the terms). Returns its mean entropy and the mean probability of the
    direct strategy (``#``)."""
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
    direct = logp[:, tokenizer.convert_tokens_to_ids("#")].exp()
    return {"first_token_entropy": entropy.mean().item(), "first_token_p_direct": direct.mean().item()}


def evaluate_model(model, tokenizer, data, config: DemoConfig, label: str, path: Path) -> dict:
    """Avg@n, Cons@n, Pass@k and held-out diagnostics of `model`; all samples go to `path` (JSON)."""
    eval_config = EvalConfig(
        num_samples=config.eval_num_samples,
        temperature=config.eval_temperature,
        top_p=config.eval_top_p,
        max_new_tokens=MAX_COMPLETION_TOKENS,
        diagnostics_top_k=config.shaping_top_k,
        diagnostics_batch_size=64,
        seed=config.seed,
        run_name=label,
        progress=False,
    )
    start = time.perf_counter()
    result = evaluate(model, tokenizer, data["test"], eval_config)
    result["seconds"] = time.perf_counter() - start
    answers = list(data["test"]["answer"])
    result.update(completion_profile(result["per_problem"], answers, eval_config.pass_k))
    result.update(first_token_stats(model, tokenizer, list(data["test"]["prompt"])))
    path.write_text(json.dumps(result, indent=1))
    return {k: v for k, v in result.items() if k != "per_problem"}


def _eval_line(result: dict) -> str:
    n = result["num_samples"]
    diag = result.get("diagnostics") or {}
    return (
        f"Avg@{n} {100 * result['avg_at_n']:.1f}%  Cons@{n} {100 * result['cons_at_n']:.1f}%  "
        f"Pass@{n} {100 * result['pass_at_k'][str(n)]:.1f}%  held-out nll {diag.get('nll', float('nan')):.3f} "
        f"entropy {diag.get('entropy', float('nan')):.3f}  ({result['seconds']:.0f}s)"
    )


def run_preset(preset: str, config: DemoConfig, data, tokenizer, run_dir: Path, tag: str = "") -> dict:
    """Stage 1 with `preset`, evaluation, GRPO from the stage-1 checkpoint, evaluation; files go to `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    say(f"{tag} {preset}: stage 1, shaped SFT for {config.sft_steps} steps")
    stage1 = train_stage1(preset, config, data, tokenizer, run_dir)
    say(f"{tag} {preset}: evaluating the stage-1 model")
    model = stage1.pop("model")
    eval_stage1 = evaluate_model(model, tokenizer, data, config, f"{preset} stage 1", run_dir / "eval_stage1.json")
    say(f"    {_eval_line(eval_stage1)}")
    say(f"{tag} {preset}: GRPO from the stage-1 checkpoint for {config.grpo_steps} steps")
    rl = train_rl(preset, config, data, tokenizer, stage1["checkpoint"], run_dir)
    say(f"{tag} {preset}: evaluating the RL model")
    eval_rl = evaluate_model(rl.pop("model"), tokenizer, data, config, f"{preset} after RL", run_dir / "eval_rl.json")
    say(f"    {_eval_line(eval_rl)}")
    return {"stage1": stage1, "eval_stage1": eval_stage1, "rl": rl, "eval_rl": eval_rl}


def run_demo(config: DemoConfig | None = None) -> Path:
    """Run the whole demo and write its report; returns the report directory.

    Args:
        config (`DemoConfig`, *optional*): the settings; the default (full) profile when `None`.
    """
    config = config or DemoConfig()
    presets = config.preset_names()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    total_start, load_before = time.perf_counter(), os.getloadavg()
    torch.manual_seed(config.seed)
    task = ArithmeticTask()
    data = build_datasets(
        task, num_train=config.num_train_problems, num_test=config.num_test_problems, seed=config.seed
    )
    tokenizer = build_char_tokenizer(task_alphabet())
    say(
        f"{'quick' if config.quick else 'full'} demo: presets {', '.join(presets)}; task: {len(data['sft'])} stage-1 "
        f"solutions of {len(data['rl'])} problems, {len(data['test'])} held-out problems; model: Qwen3 "
        f"{config.num_layers} layers x {config.hidden_size}, vocabulary {len(tokenizer)}"
    )
    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        with _quiet_libraries():
            for i, preset in enumerate(presets, 1):
                run_dir = out / "runs" / preset
                runs[preset] = run_preset(preset, config, data, tokenizer, run_dir, f"({i}/{len(presets)})")
        seconds = time.perf_counter() - total_start
        write_report(out, config=config, runs=runs, task=task, data=data, seconds=seconds, load_before=load_before)
    finally:
        torch.set_num_threads(threads)
    say(f"done in {seconds:.0f}s; report: {out / 'report.md'}")
    return out
