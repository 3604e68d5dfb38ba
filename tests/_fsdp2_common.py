"""Shared pieces of the FSDP2 tests: the same runs on one unsharded process (the reference, in the test process) and
sharded with torch's `fully_shard` over 2 gloo processes (tests/launch/fsdp2_checks.py).

accelerate will not start FSDP on CPU processes, so no Trainer runs here. What runs is the code the trainers run under
FSDP2: accelerate's own `fsdp2_prepare_model` (the wrapping the policy gets: one unit per decoder layer, the
embedding, a tail unit with the final norm and the LM head, the root), TRL's `prepare_fsdp` through
`prior.prepare_frozen_prior` (the prior, sharded as one unit), `shaped_causal_lm_loss` (ShapedSFTTrainer's loss and
ShapedGRPOTrainer's auxiliary loss), `grpo_trainer.completion_drift_sums` (the drift diagnostics) and accelerate's
`save_fsdp_model` / `load_fsdp_model` and optimizer counterparts (what Trainer calls to checkpoint and resume under
FSDP), on an accelerator stand-in that holds a real `FullyShardedDataParallelPlugin`.
"""

import types
from pathlib import Path

import torch

from trl_shaped.lm_head import shaped_causal_lm_loss
from trl_shaped.shaping import ShapingConfig
from trl_shaped.tiny import build_tiny_model

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"
VOCAB = 512
ROWS, LENGTH = 4, 12  # global batch: ROWS sequences, split over the processes
STEPS = 3
SHAPING = ShapingConfig(beta=-0.5, top_k=5, tail_reward=-0.1)  # rank-aware terms on: not the CE path


def tiny(seed: int = 0, tied: bool = False):
    return build_tiny_model(VOCAB, hidden_size=32, num_layers=2, tie_word_embeddings=tied, seed=seed)


def sft_batch(step: int) -> dict:
    """The global batch of a step: random tokens, a varying number of unscored (-100) positions per row."""
    generator = torch.Generator().manual_seed(100 + step)
    input_ids = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=generator)
    labels = input_ids.clone()
    for row in range(ROWS):
        labels[row, : 2 + 2 * row] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def drift_batch() -> dict:
    """A GRPO generation batch of ROWS rows; the last two rows (the second process's share) have no scored token."""
    generator = torch.Generator().manual_seed(7)
    prompt_ids = torch.randint(0, VOCAB, (ROWS, 5), generator=generator)
    completion_ids = torch.randint(0, VOCAB, (ROWS, 6), generator=generator)
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[0, 4:] = 0
    completion_mask[ROWS // 2 :] = 0
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
    }


def local_rows(batch: dict, rank: int, world: int) -> dict:
    share = ROWS // world
    return {key: value[rank * share : (rank + 1) * share] for key, value in batch.items()}


def sft_step(model, optimizer, step: int, rank: int = 0, world: int = 1) -> float:
    """One optimizer step of the shaped loss on this process's rows; returns the global batch's loss.

    As Trainer does: the loss is normalised by the global count of scored tokens (`num_items_in_batch`) and scaled by
    the world size, since FSDP averages the gradients over processes.
    """
    batch = sft_batch(step)
    num_items = int((batch["labels"][:, 1:] != -100).sum())
    loss = shaped_causal_lm_loss(model, local_rows(batch, rank, world), SHAPING, num_items_in_batch=num_items)
    (loss * world).backward()
    optimizer.step()
    optimizer.zero_grad()
    total = loss.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(total)
    return total.item()


def optimizer_of(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2)


def reference_sft(tied: bool) -> dict:
    """The unsharded run: per-step losses and the trained LM-head weight."""
    model = tiny(tied=tied)
    optimizer = optimizer_of(model)
    losses = [sft_step(model, optimizer, step) for step in range(STEPS)]
    return {"losses": losses, "lm_head": model.get_output_embeddings().weight.detach().clone()}


def reference_drift() -> torch.Tensor:
    """`completion_drift_sums` of the unsharded policy (seed 0) against the unsharded prior (seed 1)."""
    from trl_shaped.grpo_trainer import completion_drift_sums

    with torch.no_grad():
        return completion_drift_sums(tiny(0), tiny(1), "model", drift_batch(), rows=1, top_k=5)


def lora_policy():
    """The seed-0 model with a LoRA adapter whose B matrices are non-zero: it differs from its base, the prior that
    the `"adapters_disabled"` kind reads with the adapters off."""
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(tiny(0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    return policy


def reference_adapter_drift() -> torch.Tensor:
    """`completion_drift_sums` of the unsharded LoRA policy against its own base (adapters disabled)."""
    from trl_shaped.grpo_trainer import completion_drift_sums

    return completion_drift_sums(lora_policy(), None, "adapters_disabled", drift_batch(), rows=1, top_k=5)


def fsdp2_accelerator(config: str = "fsdp2", **overrides):
    """What accelerate's FSDP2 helpers and TRL's `prepare_fsdp` read of an Accelerator, with the FSDP2 plugin that
    `accelerate launch --config_file accelerate_configs/<config>.yaml` builds (its `fsdp_config`, read here),
    `overrides` replacing plugin fields."""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin

    fsdp = yaml.safe_load((ACCELERATE_CONFIGS / f"{config}.yaml").read_text())["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        **{
            "fsdp_version": fsdp["fsdp_version"],
            "auto_wrap_policy": fsdp["fsdp_auto_wrap_policy"].lower(),
            "reshard_after_forward": fsdp["fsdp_reshard_after_forward"],
            "state_dict_type": fsdp["fsdp_state_dict_type"],
            "cpu_offload": fsdp["fsdp_offload_params"],
            "cpu_ram_efficient_loading": fsdp["fsdp_cpu_ram_efficient_loading"],
            "activation_checkpointing": fsdp["fsdp_activation_checkpointing"],
            **overrides,
        }
    )
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin),
        mixed_precision="no",  # the configs' bf16 is left out: the runs compare with float32 to 1e-6
        device=torch.device("cpu"),
        torch_device_mesh=None,
        parallelism_config=None,
        is_main_process=rank == 0,
        process_index=rank,
        num_processes=world,
        wait_for_everyone=torch.distributed.barrier,
        is_fsdp2=True,
    )
