"""Shared pieces of the ShapedSFTTrainer tests: tiny data and models, configs, and the run the DeepSpeed tests compare.

Imported by tests/test_sft_*.py and by tests/launch/sft_zero.py (which `accelerate launch` runs).
"""

import json

import torch
from datasets import Dataset

from trl_shaped.sft_config import ShapedSFTConfig
from trl_shaped.sft_trainer import ShapedSFTTrainer
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

# Lengths differ from row to row, so token counts differ between micro-batches and processes: a normalisation by the
# wrong count (per micro-batch mean instead of num_items_in_batch) changes the losses and the gradients.
TEXTS = [f"{a}+{b}={a + b}" + " ok" * (a % 4) for a in range(12) for b in (3, 17, 250)]


def tokenizer():
    return build_char_tokenizer()


def text_dataset(n: int | None = None) -> Dataset:
    return Dataset.from_dict({"text": TEXTS[:n] if n else TEXTS})


def config(output_dir, **kwargs) -> ShapedSFTConfig:
    """A CPU config that logs every step and saves nothing unless asked; kwargs override."""
    defaults = dict(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return ShapedSFTConfig(**{**defaults, **kwargs})


def step_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


ZERO_VOCAB = 4096


def zero_parity_run(output_dir, world_size: int = 1, tie_word_embeddings: bool = False, **config_kwargs) -> dict:
    """Three steps of the tail-penalty loss on a global batch of 4 sequences split over `world_size` processes.

    Returns the per-step losses, the trained LM-head weight (gathered under ZeRO-3) and whether ZeRO-3 had it sharded.
    """
    tok = tokenizer()
    # DeepSpeed keeps parameters under 1e5 elements whole (its default `stage3_param_persistence_threshold`, which the
    # accelerate configs leave unset): a 4096-row head (the tokenizer uses the first 89 ids) is the one it shards.
    model = build_tiny_model(ZERO_VOCAB, tokenizer=tok, hidden_size=32, tie_word_embeddings=tie_word_embeddings, seed=0)
    args = config(
        output_dir,
        per_device_train_batch_size=4 // world_size,
        shaping_preset="tail_penalty",
        shaping_top_k=5,
        train_sampling_strategy="sequential",
        # On a CPU-only machine accelerate picks no backend for DeepSpeed and reports a single process; gloo fixes it
        ddp_backend="gloo" if world_size > 1 else None,
        **config_kwargs,
    )
    trainer = ShapedSFTTrainer(model=model, args=args, train_dataset=text_dataset(), processing_class=tok)
    trainer.train()
    weight = trainer.model.get_output_embeddings().weight
    sharded = weight.numel() == 0  # ZeRO-3 keeps a flat shard elsewhere and leaves an empty tensor outside forward
    if hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight]):
            weight = weight.detach().clone()
    return {"losses": step_losses(trainer), "lm_head": weight.detach().clone(), "sharded": sharded}


def save_result(result: dict, path) -> None:
    torch.save(result["lm_head"], f"{path}.pt")
    with open(f"{path}.json", "w") as f:
        json.dump({"losses": result["losses"], "sharded": result["sharded"]}, f)


def odd_eval_metrics(output_dir, world_size: int = 1) -> dict:
    """`evaluate` of the tail-penalty loss on 5 eval rows, 2 per process and batch: over 2 processes the last batch
    holds 1 real row and 3 that accelerate repeats to even it out."""
    tok = tokenizer()
    model = build_tiny_model(len(tok), tokenizer=tok, hidden_size=32, num_layers=1, seed=0)
    args = config(
        output_dir,
        per_device_eval_batch_size=2,
        shaping_preset="tail_penalty",
        shaping_top_k=5,
        use_cpu=True,
        ddp_backend="gloo" if world_size > 1 else None,
    )
    trainer = ShapedSFTTrainer(
        model=model, args=args, train_dataset=text_dataset(8), eval_dataset=text_dataset(5), processing_class=tok
    )
    return trainer.evaluate()
