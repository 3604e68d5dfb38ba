"""Run by tests/test_fsdp2.py as `python -m torch.distributed.run --nproc_per_node 2 this.py OUT` (gloo, CPU).

Every check of `_fsdp2_common` with the parameters sharded by `fully_shard` over the processes; rank 0 writes
OUT.json (losses and drift sums) and OUT-<name>.pt (trained LM-head weights, gathered whole):

- sft-untied, sft-tied, sft-offload: three steps of the shaped loss on a model wrapped by accelerate's
  `fsdp2_prepare_model` with the plugin of accelerate_configs/fsdp2.yaml (fsdp2_offload.yaml for sft-offload);
- resume-<FULL|SHARDED>_STATE_DICT: the same run saved after two steps with accelerate's FSDP checkpoint functions,
  loaded into a freshly sharded model and optimizer, and continued for the third step;
- drift: `completion_drift_sums` of the sharded policy against the prior prepared by `prepare_frozen_prior` (TRL's
  `prepare_fsdp`), summed over processes, before and after a policy forward (which leaves accelerate's tail unit
  gathered); the second process has no scored token. Then the same for a LoRA policy against its own base
  (the `"adapters_disabled"` prior).
"""

import json
import os
import sys
import types

import torch

# the shared test helpers lie one folder up, in tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _fsdp2_common import (
    STEPS,
    drift_batch,
    fsdp2_accelerator,
    local_rows,
    lora_policy,
    optimizer_of,
    sft_step,
    tiny,
)
from accelerate import PartialState
from accelerate.utils import fsdp_utils
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy
from torch.distributed.tensor import DTensor

from trl_shaped.grpo_trainer import completion_drift_sums
from trl_shaped.prior import prepare_frozen_prior
from trl_shaped.scripts import end_launched_process


def sharded_model(accelerator, seed: int = 0, tied: bool = False):
    return fsdp_utils.fsdp2_prepare_model(accelerator, tiny(seed=seed, tied=tied))


def whole_head(model) -> torch.Tensor | None:
    # a collective; the full state dict lands on rank 0 only (None elsewhere)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state.get("lm_head.weight", state.get("model.embed_tokens.weight"))


def sft_run(rank, world, tied: bool, config: str = "fsdp2", **overrides) -> dict:
    accelerator = fsdp2_accelerator(config, **overrides)
    model = sharded_model(accelerator, tied=tied)
    sharded = isinstance(model.get_output_embeddings().weight, DTensor)
    optimizer = optimizer_of(model)
    losses = [sft_step(model, optimizer, step, rank, world) for step in range(STEPS)]
    return {"losses": losses, "head_sharded": sharded, "lm_head": whole_head(model)}


def resume_run(rank, world, state_dict_type: str, directory: str) -> dict:
    accelerator = fsdp2_accelerator(state_dict_type=state_dict_type)
    plugin = accelerator.state.fsdp_plugin
    model = sharded_model(accelerator)
    optimizer = optimizer_of(model)
    losses = [sft_step(model, optimizer, step, rank, world) for step in range(STEPS - 1)]
    fsdp_utils.save_fsdp_model(plugin, accelerator, model, directory)
    fsdp_utils.save_fsdp_optimizer(plugin, accelerator, optimizer, model, directory)
    torch.distributed.barrier()
    # a fresh start from other weights (seed 3): only the checkpoint can bring back the run
    resumed = sharded_model(accelerator, seed=3)
    resumed_optimizer = optimizer_of(resumed)
    fsdp_utils.load_fsdp_model(plugin, accelerator, resumed, directory)
    fsdp_utils.load_fsdp_optimizer(plugin, accelerator, resumed_optimizer, resumed, directory)
    losses.append(sft_step(resumed, resumed_optimizer, STEPS - 1, rank, world))
    return {"losses": losses, "lm_head": whole_head(resumed)}


def drift_run(rank, world) -> dict:
    accelerator = fsdp2_accelerator()
    policy = sharded_model(accelerator, seed=0)
    # prepare_frozen_prior reads these of the trainer; FSDP is on, DeepSpeed off
    trainer = types.SimpleNamespace(
        accelerator=accelerator,
        temperature=1.0,
        args=types.SimpleNamespace(disable_dropout=True, cast_lm_head_to_fp32=False),
        is_deepspeed_enabled=False,
        is_fsdp_enabled=True,
    )
    prior = prepare_frozen_prior(tiny(seed=1), trainer)
    prior_sharded = isinstance(prior.get_output_embeddings().weight, DTensor)
    batch = local_rows(drift_batch(), rank, world)
    sums = []
    for forward_first in (False, True):
        if forward_first:
            with torch.no_grad():
                policy(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"])
        local = completion_drift_sums(policy, prior, "model", batch, rows=1, top_k=5)
        torch.distributed.all_reduce(local)
        sums.append(local.tolist())
    # a LoRA policy whose prior is its own base with the adapters disabled: one sharded model runs both
    lora = fsdp_utils.fsdp2_prepare_model(accelerator, lora_policy())
    adapter_sums = completion_drift_sums(lora, None, "adapters_disabled", batch, rows=1, top_k=5)
    torch.distributed.all_reduce(adapter_sums)
    return {"sums": sums, "prior_sharded": prior_sharded, "adapter_sums": adapter_sums.tolist()}


def main():
    out = sys.argv[1]
    PartialState(backend="gloo")  # the process group; accelerate's FSDP checkpoint functions log through it
    torch.set_num_threads(1)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    results = {f"sft-{'tied' if tied else 'untied'}": sft_run(rank, world, tied) for tied in (False, True)}
    # parameters and optimizer state offloaded to CPU memory; pinning it needs an accelerator device
    offload = CPUOffloadPolicy(pin_memory=False)
    results["sft-offload"] = sft_run(rank, world, tied=False, config="fsdp2_offload", cpu_offload=offload)
    for kind in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):
        results[f"resume-{kind}"] = resume_run(rank, world, kind, f"{out}-checkpoint-{kind}")
    results["drift"] = drift_run(rank, world)
    if rank == 0:
        for name, result in results.items():
            if "lm_head" in result:
                torch.save(result.pop("lm_head"), f"{out}-{name}.pt")
        with open(f"{out}.json", "w") as f:
            json.dump(results, f)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    end_launched_process()


if __name__ == "__main__":
    main()
