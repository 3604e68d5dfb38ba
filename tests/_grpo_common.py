"""Shared pieces of the GRPO tests: a tiny stage-1 checkpoint, an arithmetic prompt dataset, a config factory."""

import dataclasses
import os
import random

from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig

from trl_shaped import ShapedGRPOConfig, ShapedSFTConfig, ShapedSFTTrainer
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model


def arithmetic_prompts(n: int = 32, seed: int = 0) -> Dataset:
    """Prompts "a+b=" with the sum in the `answer` column."""
    rng = random.Random(seed)
    rows = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(n)]
    return Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in rows], "answer": [str(a + b) for a, b in rows]})


def arithmetic_solutions(n: int = 32, seed: int = 1) -> Dataset:
    """Prompt-completion data in the demo's format: a worked line that ends with "#### <integer>"."""
    rng = random.Random(seed)
    rows = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(n)]
    return Dataset.from_dict(
        {"prompt": [f"{a}+{b}=" for a, b in rows], "completion": [f"{a + b} #### {a + b}" for a, b in rows]}
    )


def tiny_policy(tokenizer=None, seed: int = 0):
    tokenizer = tokenizer or build_char_tokenizer()
    return build_tiny_model(len(tokenizer), hidden_size=32, num_layers=1, tokenizer=tokenizer, seed=seed), tokenizer


def write_stage1_checkpoint(path, steps: int = 2, peft_config=None) -> str:
    """Train a tiny model with ShapedSFTTrainer for a few steps and save it (full weights or a LoRA adapter).

    For a LoRA adapter the base model is saved first (under `path`/base) and loaded from there, so that the
    adapter's config names a base model that can be loaded again.
    """
    model, tokenizer = tiny_policy()
    if peft_config is not None:
        base = os.path.join(str(path), "base")
        model.save_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
    args = ShapedSFTConfig(
        output_dir=str(path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        shaping_preset="precision",
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = ShapedSFTTrainer(
        model=model,
        args=args,
        train_dataset=arithmetic_solutions(),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


def grpo_config(output_dir, stock: bool = False, **overrides) -> ShapedGRPOConfig:
    """The tests' config; `stock=True` gives TRL's GRPOConfig with the same TRL fields (ours left out)."""
    values = dict(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        learning_rate=5e-2,
        temperature=1.0,
        diagnostics_steps=1,
        diagnostics_top_k=5,
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    if stock:
        ours = {f.name for f in dataclasses.fields(ShapedGRPOConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
        return GRPOConfig(**{k: v for k, v in values.items() if k not in ours})
    return ShapedGRPOConfig(**values)


def varied_reward(completions, completion_ids, **kwargs):
    """A reward that differs between almost any two completions (a hash of the sampled ids), so groups carry signal."""
    return [(sum((i + 1) * t for i, t in enumerate(ids)) % 97) / 97 for ids in completion_ids]
