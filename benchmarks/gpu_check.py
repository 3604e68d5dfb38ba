"""The GPU check: every CUDA path of the project, run once on one GPU in a few minutes, with its figures.

Four checks, each recorded even when another fails:

    accuracy    fused_linear_shaped_loss in float32 and bfloat16 against a float64 reference (shaped_loss on float64
                logits of the same inputs), every paper preset: relative error of the loss and of both gradients.
                bfloat16 runs the fused loss's low-precision branch (float32 accumulation of the weight gradient).
    loss        forward + backward time and peak memory at benchmarks/bench_loss.py's sizes, float32 and bfloat16:
                full-logits cross-entropy, TRL's chunked log-prob loss, the fused shaped loss (ce, tail_penalty), and
                Liger's fused linear cross-entropy / Cut Cross-Entropy when installed.
    sft_step    ShapedSFTTrainer (ce, tail_penalty) against stock SFTTrainer (loss_type "nll") in bf16 on a small
                Qwen3 with the real 151,936-token vocabulary: per-step losses, step time, peak memory.
    grpo        a few ShapedGRPOTrainer steps in bf16 from a tiny model with the drift diagnostics and the auxiliary
                shaped loss on every step, with vLLM colocated when vLLM is installed.

Writes OUT_DIR/gpu_check.json (every figure) and OUT_DIR/gpu_check.md (a RESULTS.md section to paste; without
--dry_run it also replaces the `gpu_check` section of benchmarks/RESULTS.md). Exits 1 when a check failed.

Usage:
    python benchmarks/gpu_check.py                       # one CUDA GPU, a few minutes
    python benchmarks/gpu_check.py --dry_run --out_dir /tmp/gpu_check   # the plumbing on CPU, tiny sizes (seconds)
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_loss import FULL_SIZES, parse_size, trl_chunked_loss
from results_file import PeakMemory, machine_description, write_section

from trl_shaped import PAPER_PRESETS, fused_linear_shaped_loss, shaped_loss

VOCAB = 151_936
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------- accuracy
def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).norm() / reference.norm().clamp(min=1e-300)).item()


def accuracy(n: int, h: int, v: int, device: str) -> dict:
    """Per dtype and preset: relative errors of the fused loss and its gradients against float64."""
    gen = torch.Generator().manual_seed(0)
    hidden64 = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight64 = torch.randn(v, h, generator=gen, dtype=torch.float64) * (3 / math.sqrt(h))
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.05] = -100
    labels = labels.to(device)
    results = {}
    for dtype_name, dtype in DTYPES.items():
        for preset, config in PAPER_PRESETS.items():
            # the same rounded inputs for both: the error is the computation's, not the inputs' rounding
            hidden = hidden64.to(dtype).to(device).requires_grad_()
            weight = weight64.to(dtype).to(device).requires_grad_()
            loss = fused_linear_shaped_loss(hidden, weight, labels, config=config)
            grad_hidden, grad_weight = torch.autograd.grad(loss, (hidden, weight))
            hidden_ref = hidden.detach().double().requires_grad_()
            weight_ref = weight.detach().double().requires_grad_()
            loss_ref = shaped_loss(hidden_ref @ weight_ref.t(), labels, config=config)
            grad_hidden_ref, grad_weight_ref = torch.autograd.grad(loss_ref, (hidden_ref, weight_ref))
            results[f"{dtype_name}/{preset}"] = {
                "loss": relative_error(loss.detach(), loss_ref.detach()),
                "grad_hidden": relative_error(grad_hidden, grad_hidden_ref),
                "grad_weight": relative_error(grad_weight, grad_weight_ref),
            }
    return {"size": f"{n}x{h}x{v}", "relative_errors": results}


# ---------------------------------------------------------------------------------------------------- loss speed
def loss_variants(device: str) -> dict:
    """name -> loss(hidden, weight, labels); the optional kernels only where installed (and on CUDA)."""
    variants = {
        "ce_full": lambda h, w, y: F.cross_entropy((h @ w.t()).float(), y),
        "trl_chunked": trl_chunked_loss,
        "fused_ce": lambda h, w, y: fused_linear_shaped_loss(h, w, y, config=PAPER_PRESETS["ce"]),
        "fused_tail_penalty": lambda h, w, y: fused_linear_shaped_loss(h, w, y, config=PAPER_PRESETS["tail_penalty"]),
    }
    if device.startswith("cuda"):
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
            variants["liger_fused_ce"] = lambda h, w, y: liger(w, h, y)
        except ImportError:
            pass
        try:
            from cut_cross_entropy import linear_cross_entropy

            variants["cut_cross_entropy"] = lambda h, w, y: linear_cross_entropy(h, w, y)
        except ImportError:
            pass
    return variants


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loss_speed(sizes: list[str], repeats: int, device: str) -> dict:
    """Per dtype, size and variant: min and median time of forward + backward, and peak memory above the inputs."""
    variants = loss_variants(device)
    results = {}
    for dtype_name, dtype in DTYPES.items():
        for size in sizes:
            n, h, v = parse_size(size)
            gen = torch.Generator().manual_seed(0)
            hidden = torch.randn(n, h, generator=gen).to(device=device, dtype=dtype).requires_grad_()
            weight = (torch.randn(v, h, generator=gen) * (3 / math.sqrt(h))).to(device=device, dtype=dtype)
            weight.requires_grad_()
            labels = torch.randint(0, v, (n,), generator=gen)
            labels[torch.rand(n, generator=gen) < 0.05] = -100
            labels = labels.to(device)
            for name, loss_fn in variants.items():
                key = f"{dtype_name}/{size}/{name}"
                try:
                    times = []
                    for _ in range(repeats + 1):  # the first call warms up kernels and caches
                        hidden.grad = weight.grad = None
                        probe = PeakMemory(device)
                        probe.start()
                        sync(device)
                        start = time.perf_counter()
                        loss_fn(hidden, weight, labels).backward()
                        sync(device)
                        times.append(time.perf_counter() - start)
                    peak = probe.peak_above_base() - weight.numel() * weight.element_size()
                    times = sorted(times[1:])
                    results[key] = {"time_min": times[0], "time_median": times[len(times) // 2], "extra_bytes": peak}
                except Exception as error:  # noqa: BLE001 - a kernel that does not take this dtype/size is a result
                    results[key] = {"error": f"{type(error).__name__}: {error}"[:300]}
            del hidden, weight
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return {"repeats": repeats, "results": results}


# ---------------------------------------------------------------------------------------------------- SFT step
def sft_step(vocab: int, hidden: int, layers: int, batch: int, seq: int, steps: int, device: str) -> dict:
    """Stock SFTTrainer and ShapedSFTTrainer (ce, tail_penalty) on the same model and data, bf16 on CUDA."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trl_shaped import ShapedSFTConfig, ShapedSFTTrainer
    from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

    cuda = device.startswith("cuda")
    tokenizer = build_char_tokenizer()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, ((1 + steps) * batch, seq), generator=gen).tolist()
    dataset = Dataset.from_dict({"input_ids": ids})

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *_, **__):
            sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    runs = {}
    for variant in ("stock_sft_nll", "shaped_ce", "shaped_tail_penalty"):
        model = build_tiny_model(
            vocab, hidden_size=hidden, num_layers=layers, tokenizer=tokenizer, max_position_embeddings=max(512, seq)
        )
        common = dict(
            output_dir=tempfile.mkdtemp(prefix="gpu_check_sft_"),
            per_device_train_batch_size=batch,
            max_steps=1 + steps,
            max_length=seq,
            learning_rate=1e-4,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            use_cpu=not cuda,
            bf16=cuda,
            disable_tqdm=True,
            seed=0,
        )
        if variant == "stock_sft_nll":
            trainer_cls, args = SFTTrainer, SFTConfig(loss_type="nll", **common)
        else:
            preset = variant.removeprefix("shaped_")
            trainer_cls, args = ShapedSFTTrainer, ShapedSFTConfig(shaping_preset=preset, **common)
        timer = StepTimer()
        trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.add_callback(timer)
        probe = PeakMemory(device)
        probe.start()
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        runs[variant] = {"losses": losses, "step_times": timer.times[1:], "peak_bytes": probe.peak_above_base()}
        del trainer, model
        if cuda:
            torch.cuda.empty_cache()
    stock, shaped = runs["stock_sft_nll"]["losses"], runs["shaped_ce"]["losses"]
    gap = max(abs(a - b) / abs(a) for a, b in zip(stock, shaped, strict=True))
    return {"shape": f"batch {batch} x {seq} tokens, hidden {hidden}, {layers} layers, vocabulary {vocab}",
            "precision": "bf16" if cuda else "float32", "runs": runs, "ce_vs_stock_max_relative_loss_gap": gap}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- GRPO
def arithmetic_rows(n: int, seed: int) -> list[tuple[int, int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, (n, 2), generator=gen).tolist()


def digit_reward(completions, answer, **kwargs):
    # 1 when the completion starts with the answer, else a small hash of it: groups differ, so advantages exist
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [1.0 if t.strip().startswith(a) else (sum(map(ord, t)) % 7) / 70 for t, a in zip(texts, answer, strict=True)]


def grpo(steps: int, device: str, out_dir: Path) -> dict:
    """A few ShapedGRPOTrainer steps: diagnostics and the auxiliary loss every step, vLLM colocated if installed."""
    import importlib.util

    from datasets import Dataset

    from trl_shaped import ShapedGRPOConfig, ShapedGRPOTrainer
    from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

    cuda = device.startswith("cuda")
    use_vllm = cuda and importlib.util.find_spec("vllm") is not None
    tokenizer = build_char_tokenizer()
    policy_dir = out_dir / "grpo_policy"
    build_tiny_model(len(tokenizer), hidden_size=64, num_layers=2, tokenizer=tokenizer).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    prompts = Dataset.from_dict(
        {"prompt": [f"{a}+{b}=" for a, b in arithmetic_rows(64, 0)],
         "answer": [str(a + b) for a, b in arithmetic_rows(64, 0)]}
    )  # fmt: skip
    aux = Dataset.from_dict(
        {"prompt": [f"{a}+{b}=" for a, b in arithmetic_rows(64, 1)],
         "completion": [str(a + b) for a, b in arithmetic_rows(64, 1)]}
    )  # fmt: skip
    vllm = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2) if use_vllm else {}
    if use_vllm:  # colocated vLLM joins a torch.distributed group: one process of one, when not launched
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("MASTER_PORT", "29517")
    args = ShapedGRPOConfig(
        output_dir=str(out_dir / "grpo_run"),
        max_steps=steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        learning_rate=1e-3,
        diagnostics_steps=1,
        shaping_aux_coef=0.1,
        shaping_preset="tail_penalty",
        shaping_top_k=5,
        logging_steps=1,
        use_cpu=not cuda,
        bf16=cuda,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **vllm,
    )
    trainer = ShapedGRPOTrainer(
        str(policy_dir), reward_funcs=[digit_reward], args=args, train_dataset=prompts, aux_dataset=aux
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = ("loss", "reward", "kl_to_prior", "policy_entropy", "prior_entropy", "aux_shaped_loss")
    return {"vllm": use_vllm, "precision": "bf16" if cuda else "float32", "steps": len(logged), "seconds": seconds,
            "logged": [{k: entry.get(k) for k in keys} for entry in logged]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    lines = [
        "## GPU check (`benchmarks/gpu_check.py`)",
        "",
        f"Command: `{report['command']}` ({report['seconds']:.0f} s). Machine: {report['machine']}.",
        "",
    ]
    checks = report["checks"]
    for name, check in checks.items():
        if "error" in check:
            lines += [f"**{name}: failed**: `{check['error'].splitlines()[-1][:300]}`", ""]
    if "result" in checks.get("accuracy", {}):
        acc = checks["accuracy"]["result"]
        lines += [
            f"### Fused loss against float64 ({acc['size']}, relative errors)",
            "",
            "| dtype/preset | loss | grad hidden | grad weight |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {e['loss']:.2e} | {e['grad_hidden']:.2e} | {e['grad_weight']:.2e} |"
            for k, e in acc["relative_errors"].items()
        ]
        lines.append("")
    if "result" in checks.get("loss", {}):
        lines += [
            "### Loss forward + backward (min / median seconds, peak MiB above inputs and weight gradient)",
            "",
            "| dtype/size/variant | time min | time median | extra MiB |",
            "|---|---|---|---|",
        ]
        for key, r in checks["loss"]["result"]["results"].items():
            if "error" in r:
                lines.append(f"| {key} | {r['error'][:80]} | | |")
            else:
                lines.append(
                    f"| {key} | {r['time_min']:.4f} | {r['time_median']:.4f} | {r['extra_bytes'] / 2**20:.0f} |"
                )
        lines.append("")
    if "result" in checks.get("sft_step", {}):
        sft = checks["sft_step"]["result"]
        lines += [
            f"### SFT step ({sft['shape']}, {sft['precision']})",
            "",
            "| trainer | losses | step time min (s) | peak MiB |",
            "|---|---|---|---|",
        ]
        for variant, run in sft["runs"].items():
            losses = ", ".join(f"{x:.4f}" for x in run["losses"])
            step = f"{min(run['step_times']):.4f}" if run["step_times"] else ""
            lines.append(f"| {variant} | {losses} | {step} | {run['peak_bytes'] / 2**20:.0f} |")
        lines += [
            "",
            f"Largest relative gap between shaped ce and stock losses: {sft['ce_vs_stock_max_relative_loss_gap']:.2e}.",
            "",
        ]
    if "result" in checks.get("grpo", {}):
        g = checks["grpo"]["result"]
        lines += [
            f"### GRPO ({g['steps']} steps, {g['precision']}, vLLM colocated: {g['vllm']}, {g['seconds']:.1f} s)",
            "",
            "| step | " + " | ".join(g["logged"][0]) + " |" if g["logged"] else "",
            "|---" * (len(g["logged"][0]) + 1) + "|" if g["logged"] else "",
        ]
        for i, entry in enumerate(g["logged"]):
            cells = " | ".join("" if v is None else f"{v:.4g}" for v in entry.values())
            lines.append(f"| {i + 1} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def run_check(name: str, function, *args) -> dict:
    print(f"[gpu_check] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        result = {"result": function(*args)}
    except Exception:  # noqa: BLE001 - every check is recorded; the others still run
        result = {"error": traceback.format_exc()}
        print(result["error"], file=sys.stderr, flush=True)
    result["seconds"] = time.perf_counter() - start
    print(f"[gpu_check] {name}: {'failed' if 'error' in result else 'ok'} ({result['seconds']:.1f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", help="tiny sizes on CPU: the plumbing, no figures")
    parser.add_argument("--out_dir", default=str(Path(__file__).parent / "gpu_check"), help="JSON and markdown here")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per loss variant")
    parser.add_argument("--grpo_steps", type=int, default=3)
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --dry_run for the CPU plumbing")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    started = time.perf_counter()
    if args.dry_run:
        checks = {
            "accuracy": run_check("accuracy", accuracy, 24, 8, 64, device),
            "loss": run_check("loss", loss_speed, ["32x8x64"], 1, device),
            "sft_step": run_check("sft_step", sft_step, 512, 32, 1, 2, 16, 1, device),
            "grpo": run_check("grpo", grpo, 1, device, out_dir),
        }
    else:
        checks = {
            "accuracy": run_check("accuracy", accuracy, 2048, 512, 32000, device),
            "loss": run_check("loss", loss_speed, FULL_SIZES, args.repeats, device),
            "sft_step": run_check("sft_step", sft_step, VOCAB, 256, 2, 8, 512, 3, device),
            "grpo": run_check("grpo", grpo, args.grpo_steps, device, out_dir),
        }
    report = {
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(device),
        "device": device,
        "dry_run": args.dry_run,
        "seconds": time.perf_counter() - started,
        "checks": checks,
    }
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
    section = markdown(report)
    (out_dir / "gpu_check.md").write_text(section + "\n")
    if not args.dry_run:
        write_section("gpu_check", section)
    print(f"[gpu_check] wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}", flush=True)
    return 1 if any("error" in check for check in checks.values()) else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
