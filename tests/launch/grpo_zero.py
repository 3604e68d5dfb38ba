"""Run by tests/test_grpo_distributed.py as
`accelerate launch --config_file accelerate_configs/zeroN.yaml this.py POLICY_DIR OUT.json`.

A short ShapedGRPOTrainer run under DeepSpeed on every process, with the prior as KL anchor (beta > 0), dynamic
sampling (half the prompts give all-equal rewards), drift diagnostics every step and the auxiliary shaped loss.
On the first diagnostics step the last process has no scored completion token (its completion mask zeroed, as when
all its completions were truncated). The drift chunks are recorded with a chunk budget of 4 rows of the true
vocabulary. Rank 0 writes the log history to OUT.json.
"""

import functools
import json
import os
import sys

import torch

# the shared test helpers (_sft_common, _grpo_common) lie one folder up, in tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _grpo_common import arithmetic_prompts, arithmetic_solutions, grpo_config, varied_reward

from trl_shaped import ShapedGRPOTrainer, drift
from trl_shaped.loss_core import default_chunk_size
from trl_shaped.scripts import end_launched_process
from trl_shaped.tiny import build_char_tokenizer

VOCAB = 4096  # the policy's head rows (tests/test_grpo_distributed.py)


def half_constant_reward(completions, prompts, completion_ids, **kwargs):
    # Prompts starting with an even digit give the same reward to every completion: their groups carry no signal
    dense = varied_reward(completions, completion_ids)
    return [0.5 if int(p[0]) % 2 == 0 else r for p, r in zip(prompts, dense, strict=True)]


def record_dynamic_sampling(trainer) -> list:
    """Wrap the trainer's dynamic sampling: after each call, every process's final rows are gathered and, per group,
    its prompt fingerprint (one per row) and whether its advantages are informative are recorded."""
    batches, inner = [], trainer._dynamic_sampling

    def wrapped(batch, local_size):
        local = inner(batch, local_size)
        mask = local["prompt_mask"]
        positions = torch.arange(1, mask.size(1) + 1, device=mask.device)
        fingerprint = ((local["prompt_ids"] * mask) * positions.flip(0)).sum(dim=1).float()
        rows = trainer.accelerator.gather(torch.stack([fingerprint, local["advantages"].float()], dim=1)).cpu()
        groups = rows.view(-1, trainer.num_generations, 2)
        batches.append(
            {
                "same_prompt": [bool((g[:, 0] == g[0, 0]).all()) for g in groups],
                "informative": [bool(g[:, 1].amax() - g[:, 1].amin() > 1e-6) for g in groups],
                "local_rows": int(local["advantages"].numel()),
            }
        )
        return local

    trainer._dynamic_sampling = wrapped
    return batches


def record_drift_chunks() -> list:
    """Chunk the drift statistics by 4 rows of the true vocabulary's float32 logits; record each call's arguments."""
    calls = []

    def chunk_size(num_tokens, vocab_size):
        rows = default_chunk_size(num_tokens, vocab_size, budget_bytes=4 * 4 * VOCAB)
        calls.append({"num_tokens": num_tokens, "vocab_size": vocab_size, "rows": rows})
        return rows

    drift.default_chunk_size = chunk_size
    return calls


def without_scored_tokens_on_the_last_process_once(trainer) -> None:
    inner, done = trainer._drift_diagnostics_sums, []

    @functools.wraps(inner)
    def wrapped(batch):
        if not done and trainer.accelerator.process_index == trainer.accelerator.num_processes - 1:
            batch = {**batch, "completion_mask": torch.zeros_like(batch["completion_mask"])}
        done.append(True)
        return inner(batch)

    trainer._drift_diagnostics_sums = wrapped


def main():
    policy_dir, out = sys.argv[1], sys.argv[2]
    args = grpo_config(
        os.path.join(os.path.dirname(out), "run"),
        max_steps=3,
        per_device_train_batch_size=2,
        steps_per_generation=2,  # one generation every two optimizer steps: TRL's old-logprob path is exercised
        beta=0.1,
        dynamic_sampling=True,
        max_resample_rounds=2,
        shaping_aux_coef=0.1,
        shaping_preset="tail_penalty",
        shaping_top_k=5,
        aux_max_length=32,
        use_cpu=False,  # DeepSpeed picks its CPU accelerator
        # On a CPU-only machine accelerate picks no backend for DeepSpeed and reports a single process; gloo fixes it
        ddp_backend="gloo",
    )
    trainer = ShapedGRPOTrainer(
        policy_dir,
        reward_funcs=[half_constant_reward],
        args=args,
        train_dataset=arithmetic_prompts(),
        processing_class=build_char_tokenizer(),
        aux_dataset=arithmetic_solutions(),
    )
    batches = record_dynamic_sampling(trainer)
    chunks = record_drift_chunks()
    without_scored_tokens_on_the_last_process_once(trainer)
    trainer.train()
    # ZeRO-3 leaves an empty tensor outside the forward for a sharded parameter
    sharded = trainer.model.get_output_embeddings().weight.numel() == 0
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            record = {"log_history": trainer.state.log_history, "lm_head_sharded": sharded, "batches": batches}
            json.dump({**record, "drift_chunks": chunks}, f)
    trainer.accelerator.end_training()
    end_launched_process()  # gloo's threads outlive the process group; interpreter finalization can abort on them


if __name__ == "__main__":
    main()
