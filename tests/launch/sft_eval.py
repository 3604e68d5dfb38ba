"""Run by tests/test_sft_eval_processes.py as `accelerate launch --config_file accelerate_configs/cpu.yaml this.py
OUT.json`: ShapedSFTTrainer.evaluate on an odd eval set over 2 processes; rank 0 writes the metrics to OUT.json."""

import json
import os
import sys

import torch

# the shared test helpers lie one folder up, in tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _sft_common import odd_eval_metrics

from trl_shaped.scripts import end_launched_process


def main():
    out = sys.argv[1]
    metrics = odd_eval_metrics(os.path.join(os.path.dirname(out), "run"), world_size=int(os.environ["WORLD_SIZE"]))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump(metrics, f)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    end_launched_process()  # gloo's threads outlive the process group; interpreter finalization can abort on them


if __name__ == "__main__":
    main()
