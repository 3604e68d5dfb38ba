"""Peak memory of constructing ShapedGRPOTrainer against stock trl.GRPOTrainer, same policy, same beta.

What the stage-1 prior costs at construction: for a PEFT policy carrying a stage-1 adapter (the prior is a frozen
copy of the adapter on the shared base, as TRL's "ref" adapter) and for a full policy (the prior is a full frozen
copy when beta > 0 or the drift diagnostics are on, and nothing when neither is).

The policy is a Qwen3 (hidden 1024, 4 layers, vocabulary 32,000, float32) saved to disk first. The full policy is
passed as a path (both trainers load it while constructing); the LoRA policy (r=16 on the attention projections,
loaded from an adapter directory) is passed as a `PeftModel` instance, built before the measurement starts.

Memory is the peak resident set size (VmHWM, reset through /proc/self/clear_refs just before the constructor)
above the RSS at that moment: CPU tensors live in malloc'd memory that tracemalloc does not see, so RSS is the
measure that counts them. Each construction runs in its own subprocess; rounds alternate stock and ours, and the
minimum over rounds is reported.

Usage:
    python benchmarks/bench_prior_memory.py            # 2 rounds
    python benchmarks/bench_prior_memory.py --rounds 1
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import PeakMemory, machine_description, write_section

HIDDEN, LAYERS, VOCAB, LORA_R = 1024, 4, 32_000, 16
# (policy, beta, diagnostics_steps): the LoRA rows are the "LoRA policy", the full rows with diagnostics
# off its "full policy with diagnostics off"; the last row is what the drift diagnostics cost when TRL loads nothing.
CASES = [
    ("lora", 0.1, 10),
    ("lora", 0.0, 10),
    ("lora", 0.0, 0),
    ("full", 0.1, 0),
    ("full", 0.0, 0),
    ("full", 0.0, 10),
]


def prepare(root: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=8, tokenizer=tokenizer)
    model.save_pretrained(root / "full")
    tokenizer.save_pretrained(root / "full")
    base = AutoModelForCausalLM.from_pretrained(root / "full")
    lora = LoraConfig(r=LORA_R, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(root / "lora")


def worker(root: Path, policy: str, beta: float, diagnostics_steps: int, ours: bool) -> dict:
    from datasets import Dataset
    from peft import AutoPeftModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from trl_shaped import ShapedGRPOConfig, ShapedGRPOTrainer
    from trl_shaped.tiny import build_char_tokenizer

    def reward(completions, **kwargs):
        return [0.0] * len(completions)

    tokenizer = build_char_tokenizer()
    dataset = Dataset.from_dict({"prompt": ["1+1="] * 8})
    values = {
        "output_dir": str(root / "out"), "beta": beta, "per_device_train_batch_size": 4, "num_generations": 4,
        "use_cpu": True, "bf16": False, "report_to": [], "save_strategy": "no",
    }  # fmt: skip
    if ours:
        args, trainer_cls = ShapedGRPOConfig(**values, diagnostics_steps=diagnostics_steps), ShapedGRPOTrainer
    else:
        args, trainer_cls = GRPOConfig(**values), GRPOTrainer
    if policy == "full":
        model = str(root / "full")
    else:
        model = AutoPeftModelForCausalLM.from_pretrained(root / "lora", is_trainable=True)
        _touch([model])  # resident before the measurement: the policy is the same for both trainers
    memory = PeakMemory("cpu")
    memory.start()
    trainer = trainer_cls(model, [reward], args, train_dataset=dataset, processing_class=tokenizer)
    held = [trainer.model] + [m for m in (trainer.ref_model, getattr(trainer, "prior_model", None)) if m is not None]
    # transformers memory-maps safetensors checkpoints: a loaded weight takes no RSS until it is read. Read every
    # held parameter once, inside the window, so that what the trainer holds counts as it will once training runs.
    _touch(held)
    peak = memory.peak_above_base()
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for m in held for p in m.parameters()}
    return {
        "peak_mib": peak / 2**20,
        "process_peak_mib": (memory.base + peak) / 2**20,
        "param_mib": sum(storages.values()) / 2**20,
    }


def _touch(models) -> None:
    import torch

    with torch.no_grad():
        for model in models:
            for param in model.parameters():
                param.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print the table without writing RESULTS.md")
    cli = parser.parse_args()
    if cli.worker:
        root, policy, beta, steps, ours = json.loads(cli.worker)
        print(json.dumps(worker(Path(root), policy, beta, steps, ours)))
        return

    began = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root)
        for _ in range(cli.rounds):
            for case in CASES:
                for ours in (False, True):
                    spec = json.dumps([str(root), *case, ours])
                    out = subprocess.run(
                        [sys.executable, __file__, "--worker", spec],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    record = json.loads(out.stdout.strip().splitlines()[-1])
                    previous = results.get((case, ours))
                    if previous is None or record["peak_mib"] < previous["peak_mib"]:
                        results[(case, ours)] = record

    rows = [
        (
            "| policy | beta | diagnostics_steps | stock GRPOTrainer peak (MiB) | ShapedGRPOTrainer peak (MiB) | "
            "peak ratio | process peak RSS, stock / ours (MiB) | parameters held, stock / ours (MiB) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        stock, ours = results[(case, False)], results[(case, True)]
        policy, beta, steps = case
        rows.append(
            f"| {policy} | {beta} | {steps} | {stock['peak_mib']:.0f} | {ours['peak_mib']:.0f} | "
            f"**{ours['peak_mib'] / stock['peak_mib']:.3f}x** | "
            f"{stock['process_peak_mib']:.0f} / {ours['process_peak_mib']:.0f} | "
            f"{stock['param_mib']:.0f} / {ours['param_mib']:.0f} |"
        )
    body = "\n".join(
        [
            "## Prior memory: trainer construction (`benchmarks/bench_prior_memory.py`)",
            "",
            f"Command: `python benchmarks/bench_prior_memory.py --rounds {cli.rounds}` ({time.time() - began:.0f} s)",
            "",
            f"Machine: {machine_description('cpu')}.",
            "",
            (
                f"Qwen3, hidden {HIDDEN}, {LAYERS} layers, vocabulary {VOCAB:,}, float32. `full`: the policy passed "
                f"as a path (loaded inside both constructors); `lora`: a `PeftModel` with a pretrained r={LORA_R} "
                "adapter on the attention projections, built (and read once) before the measurement. Peak: peak RSS "
                "(VmHWM, reset just before the constructor) above the RSS at that moment, after reading every held "
                "parameter once (transformers memory-maps the checkpoint, so unread weights take no RSS); each "
                f"construction in its own subprocess, min over {cli.rounds} rounds. Process peak RSS: the same peak "
                "including what the process held before (imports, and for `lora` the policy). Parameters held: bytes "
                "of the distinct parameter storages of policy, reference and prior after construction (exact)."
            ),
            "",
            *rows,
            "",
            (
                "The rows of the issue (#13.3) are the `lora` rows and the `full` rows with `diagnostics_steps=0`. The "
                "last row is what the drift diagnostics cost when TRL loads no reference (`beta=0`): a full frozen "
                "prior; `diagnostics_steps=0` removes it, and for a LoRA policy the prior is one frozen adapter "
                "(second row)."
            ),
        ]
    )
    print(body)
    if not cli.no_write:
        write_section("bench_prior_memory", body)


if __name__ == "__main__":
    main()
