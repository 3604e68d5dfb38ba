"""Training-step time and peak memory: ShapedSFTTrainer (presets ce, tail_penalty) against stock trl.SFTTrainer.

The model is a small Qwen3 (hidden 256, 2 layers by default) with the real 151,936-token vocabulary, so the LM head
and the loss dominate as they do in a real model's SFT step. The data are pre-tokenised rows of random token ids
over the whole vocabulary (no padding), identical for every variant. Stock SFTTrainer runs with loss_type "nll"
(TRL 1.16 computes it with its own chunked log-prob LM head).

Each variant trains in its own subprocess (`trainer.train()` for 1 + steps optimizer steps; the first is warm-up)
and reports the time of every later step (a TrainerCallback around each step) and its peak memory above the
memory held just before `train()` (peak RSS on a CPU, torch.cuda.max_memory_allocated on a GPU): activations,
gradients, optimizer state and the loss's own buffers. Rounds of the three subprocesses are interleaved and the
minimum step time over all rounds is reported, with the median, and both as ratios to stock SFTTrainer.

Usage:
    python benchmarks/bench_step.py --quick      # 2 rounds x 2 timed steps, batch 4 x 256 tokens
    python benchmarks/bench_step.py              # 2 rounds x 3 timed steps, batch 8 x 512 tokens
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results_file import PeakMemory, machine_description, write_section

VOCAB = 151_936
VARIANTS = ["stock_sft_nll", "shaped_ce", "shaped_tail_penalty"]


def worker(variant: str, batch: int, seq: int, hidden: int, layers: int, steps: int, device: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trl_shaped import ShapedSFTConfig, ShapedSFTTrainer
    from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(
        VOCAB,
        architecture="qwen3",
        hidden_size=hidden,
        num_layers=layers,
        tokenizer=tokenizer,
        max_position_embeddings=max(512, seq),
        seed=0,
    )
    gen = torch.Generator().manual_seed(0)
    rows = (1 + steps) * batch
    ids = torch.randint(0, VOCAB, (rows, seq), generator=gen).tolist()
    dataset = Dataset.from_dict({"input_ids": ids})
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="bench_step_"),
        per_device_train_batch_size=batch,
        max_steps=1 + steps,
        max_length=seq,
        learning_rate=1e-4,
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not device.startswith("cuda"),
        seed=0,
    )
    if variant == "stock_sft_nll":
        trainer_cls, args = SFTTrainer, SFTConfig(loss_type="nll", **common)
    else:
        preset = variant.removeprefix("shaped_")
        trainer_cls, args = ShapedSFTTrainer, ShapedSFTConfig(shaping_preset=preset, **common)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *_, **__):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    probe = PeakMemory(device)
    probe.start()
    trainer.train()
    return {"step_times": timer.times[1:], "peak_bytes": probe.peak_above_base()}


def spawn(args: list[str], timeout: float) -> dict | None:
    try:
        out = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, help="timed steps per subprocess (after one warm-up step)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the three subprocesses")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = args.batch or (4 if args.quick else 8)
    seq = args.seq or (256 if args.quick else 512)
    steps = args.steps or (2 if args.quick else 3)
    rounds = args.rounds or 2
    if args.worker:
        print(json.dumps(worker(args.worker, batch, seq, args.hidden, args.layers, steps, args.device)))
        return

    started = time.time()
    shape = [
        "--batch",
        str(batch),
        "--seq",
        str(seq),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
        "--steps",
        str(steps),
        "--device",
        args.device,
    ]
    results = {v: {"step_times": [], "peak_bytes": []} for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
            print(f"[{time.time() - started:6.0f}s] round {r + 1}/{rounds}: {variant}", flush=True)
            out = spawn([*shape, "--worker", variant], args.timeout)
            if out is not None:
                results[variant]["step_times"] += out["step_times"]
                results[variant]["peak_bytes"].append(out["peak_bytes"])

    base = results["stock_sft_nll"]
    base_t = min(base["step_times"]) if base["step_times"] else None
    base_m = min(base["peak_bytes"]) if base["peak_bytes"] else None
    memory_name = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    lines = [
        "## Training step (`benchmarks/bench_step.py`)",
        "",
        (
            f"Command: `python benchmarks/bench_step.py {' '.join(sys.argv[1:])}`".rstrip()
            + f" ({time.time() - started:.0f} s)"
        ),
        "",
        f"Machine: {machine_description(args.device)}.",
        "",
        (
            f"Qwen3, vocabulary {VOCAB:,}, hidden {args.hidden}, {args.layers} layers, float32 weights under bf16 "
            f"autocast (SFTConfig default); batch {batch} x {seq} "
            f"tokens of random ids; AdamW. {rounds} interleaved rounds x {steps} timed steps per variant (after one "
            f"warm-up step). Memory: {memory_name} above what is held before `train()`, min over rounds."
        ),
        "",
        "| variant | step min (s) | step median (s) | time / stock (min) | peak memory (MiB) | memory / stock |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        t, m = results[variant]["step_times"], results[variant]["peak_bytes"]
        if not t:
            lines.append(f"| {variant} | failed | | | | |")
            continue
        t_min, t_med, m_min = min(t), sorted(t)[len(t) // 2], min(m)
        lines.append(
            f"| {variant} | {t_min:.3f} | {t_med:.3f} | {t_min / base_t:.3f}x | {m_min / 2**20:.0f} | "
            f"{m_min / base_m:.3f}x |"
            if base_t and base_m
            else f"| {variant} | {t_min:.3f} | {t_med:.3f} | | {m_min / 2**20:.0f} | |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        write_section("bench_step", table)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
