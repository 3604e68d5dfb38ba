"""Run by tests/test_sft_deepspeed.py as `accelerate launch --config_file accelerate_configs/zeroN.yaml this.py OUT`.

Trains the tiny model of `_sft_common.zero_parity_run` under DeepSpeed on every process, with a separate LM head and
then with tied embeddings; rank 0 writes OUT-{untied,tied}.json (per-step losses, whether the LM head was sharded)
and OUT-{untied,tied}.pt (the gathered LM-head weight).
"""

import os
import sys

import torch

# the shared test helpers (_sft_common, _grpo_common) lie one folder up, in tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _sft_common import save_result, zero_parity_run

from trl_shaped.scripts import end_launched_process


def main():
    out = sys.argv[1]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for tied in (False, True):
        result = zero_parity_run(os.path.dirname(out), world_size=world_size, tie_word_embeddings=tied)
        if int(os.environ.get("RANK", "0")) == 0:
            save_result(result, f"{out}-{'tied' if tied else 'untied'}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    end_launched_process()  # gloo's threads outlive the process group; interpreter finalization can abort on them


if __name__ == "__main__":
    main()
