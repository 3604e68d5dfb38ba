"""Forward + backward time and peak memory of the shaped losses against full-logits cross-entropy.

Variants, all from the same hidden states (N, H), LM-head weight (V, H) and labels (5% ignored):
    ce_full             logits = hidden @ W^T, F.cross_entropy (the matmul-bound baseline)
    shaped_full         logits = hidden @ W^T, shaped_loss with the tail_penalty preset (the readable reference)
    trl_chunked         TRL's own chunked log-prob path (trl.kernels.ChunkedLogProbFunction), loss = mean NLL
    fused_<preset>      fused_linear_shaped_loss for each preset of PAPER_PRESETS (default chunk size)
    fused_tail_penalty+stats   the same with return_stats=True (diagnostics from the same pass)

Times: one process per size runs every variant in turn, in a rotated order on each repeat, and reports the min
and the median over repeats (other processes share this machine's cores). Memory: each variant runs once in its
own subprocess; the figure is the peak above what the inputs, the weight and the weight's gradient occupy
(peak RSS on a CPU, torch.cuda.max_memory_allocated on a GPU). Every figure is also given as a ratio to ce_full.

Usage:
    python benchmarks/bench_loss.py --quick          # two sizes, a few minutes on a 2-core CPU
    python benchmarks/bench_loss.py                  # five sizes up to 4,096 tokens x 151,936 (about half an hour)
    python benchmarks/bench_loss.py --sizes 4096x1024x151936 --repeats 3
"""

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from results_file import PeakMemory, machine_description, write_section

from trl_shaped import PAPER_PRESETS, fused_linear_shaped_loss, shaped_loss

QUICK_SIZES = ["1024x512x32000", "1024x512x151936"]
# The grid, as far as a 2-core CPU allows in a run of about half an hour: every variant at the smaller
# sizes, and the core variants at the target size (151,936 x 4,096 tokens). Larger sizes run with --sizes.
FULL_SIZES = ["1024x512x32000", "1024x1024x32000", "4096x512x32000", "1024x512x151936", "4096x512x151936"]
CORE_VARIANTS = ["ce_full", "shaped_full", "trl_chunked", "fused_ce", "fused_tail_penalty"]
LARGE_TOKENS_X_VOCAB = 4096 * 151936
VARIANTS = [
    "ce_full",
    "shaped_full",
    "trl_chunked",
    *(f"fused_{name}" for name in PAPER_PRESETS),
    "fused_tail_penalty+stats",
]
# Float32 (N, V) buffers alive at the peak of the full-logits variants (logits, log-probs, weights, gradients);
# used only to skip a variant that cannot fit in this machine's memory.
FULL_LOGITS_BUFFERS = {"ce_full": 3, "shaped_full": 5}


def parse_size(size: str) -> tuple[int, int, int]:
    n, h, v = (int(x) for x in size.split("x"))
    return n, h, v


def make_inputs(n: int, h: int, v: int, device: str):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    # Logits with a standard deviation of ~3: a peaked but not degenerate next-token distribution.
    weight = (torch.randn(v, h, generator=gen) * (3 / math.sqrt(h))).to(device).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.05] = -100
    return hidden, weight, labels.to(device)


def trl_chunked_loss(hidden, weight, labels):
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    mask = labels != -100
    logprobs = ChunkedLogProbFunction.apply(
        hidden[mask], weight, None, labels[mask], 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ()
    )[0]
    return -logprobs.sum() / mask.sum().clamp(min=1)


def run_variant(name: str, hidden, weight, labels) -> None:
    """One forward + backward of `name`."""
    if name == "ce_full":
        loss = F.cross_entropy(hidden @ weight.t(), labels)
    elif name == "shaped_full":
        loss = shaped_loss(hidden @ weight.t(), labels, config=PAPER_PRESETS["tail_penalty"])
    elif name == "trl_chunked":
        loss = trl_chunked_loss(hidden, weight, labels)
    elif name == "fused_tail_penalty+stats":
        loss, _ = fused_linear_shaped_loss(
            hidden, weight, labels, config=PAPER_PRESETS["tail_penalty"], return_stats=True
        )
    else:
        loss = fused_linear_shaped_loss(hidden, weight, labels, config=PAPER_PRESETS[name.removeprefix("fused_")])
    loss.backward()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker_times(size: str, variants: list[str], repeats: int, device: str) -> dict:
    hidden, weight, labels = make_inputs(*parse_size(size), device)
    times = {name: [] for name in variants}
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for name in order:
            hidden.grad = weight.grad = None
            gc.collect()
            sync(device)
            start = time.perf_counter()
            run_variant(name, hidden, weight, labels)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def worker_memory(size: str, variant: str, device: str) -> dict:
    hidden, weight, labels = make_inputs(*parse_size(size), device)
    # A tiny call first, so that lazily initialised kernels and thread pools are not billed to the variant.
    tiny = make_inputs(8, hidden.shape[1], 64, device)
    run_variant(variant, *tiny)
    del tiny
    gc.collect()
    probe = PeakMemory(device)
    probe.start()
    run_variant(variant, hidden, weight, labels)
    weight_grad_bytes = weight.numel() * weight.element_size()
    return {"extra_bytes": probe.peak_above_base() - weight_grad_bytes}


def available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def fits(variant: str, size: str, device: str) -> bool:
    n, h, v = parse_size(size)
    need = FULL_LOGITS_BUFFERS.get(variant, 1) * n * v * 4 + 3 * v * h * 4
    if device.startswith("cuda"):
        return need < torch.cuda.mem_get_info()[0] * 0.9
    return need < available_bytes() * 0.85


def spawn(args: list[str], timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_ratio(value, base) -> str:
    return "" if value is None or not base else f"{value / base:.2f}x"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two sizes, three repeats")
    parser.add_argument("--sizes", nargs="*", help="NxHxV sizes (tokens x hidden x vocabulary)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    parser.add_argument("--no-write", action="store_true", help="print the table without writing RESULTS.md")
    parser.add_argument("--worker", choices=["times", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "times":
        print(json.dumps(worker_times(args.sizes[0], args.variants, args.repeats, args.device)))
        return
    if args.worker == "memory":
        print(json.dumps(worker_memory(args.sizes[0], args.variants[0], args.device)))
        return

    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    repeats = args.repeats or 3
    started = time.time()
    sections = []
    for size in sizes:
        tokens, _, vocab = parse_size(size)
        wanted = args.variants
        if not args.sizes and not args.quick and tokens * vocab >= LARGE_TOKENS_X_VOCAB and args.variants == VARIANTS:
            wanted = CORE_VARIANTS
        variants = [v for v in wanted if fits(v, size, args.device)]
        skipped = [v for v in wanted if v not in variants]
        print(f"[{time.time() - started:6.0f}s] {size}: timing {len(variants)} variants x {repeats}", flush=True)
        base = ["--sizes", size, "--device", args.device]
        times = spawn([*base, "--worker", "times", "--repeats", str(repeats), "--variants", *variants], args.timeout)
        memory = {}
        for variant in variants:
            print(f"[{time.time() - started:6.0f}s] {size}: memory of {variant}", flush=True)
            memory[variant] = spawn([*base, "--worker", "memory", "--variants", variant], args.timeout)
        sections.append(table(size, wanted, times, memory, skipped))
        print(sections[-1], flush=True)

    body = [
        "## Loss: forward + backward (`benchmarks/bench_loss.py`)",
        "",
        (
            f"Command: `python benchmarks/bench_loss.py {' '.join(sys.argv[1:])}`".rstrip()
            + f" ({time.time() - started:.0f} s)"
        ),
        "",
        f"Machine: {machine_description(args.device)}.",
        "",
        (
            "Time: min and median of forward + backward over repeats, variants interleaved in one process. Memory: "
            "peak above inputs + weight + weight gradient, each variant in its own process "
            f"({'torch.cuda.max_memory_allocated' if args.device.startswith('cuda') else 'peak RSS'}). "
            "Ratios are to `ce_full` of the same size. Sizes are tokens x hidden x vocabulary, float32."
        ),
        "",
        *sections,
    ]
    if not args.no_write:
        write_section("bench_loss", "\n".join(body))


def table(size, variants, times, memory, skipped) -> str:
    rows = [
        f"### {size}",
        "",
        "| variant | time min (s) | time median (s) | time / ce_full (min) | extra memory (MiB) | memory / ce_full |",
        "|---|---|---|---|---|---|",
    ]
    base_t = min(times["ce_full"]) if times and times.get("ce_full") else None
    base_m = (memory.get("ce_full") or {}).get("extra_bytes")
    for name in variants:
        if name in skipped:
            rows.append(f"| {name} | skipped: too large for this machine's free memory | | | | |")
            continue
        t = times.get(name) if times else None
        m = (memory.get(name) or {}).get("extra_bytes")
        t_min = min(t) if t else None
        t_med = sorted(t)[len(t) // 2] if t else None
        rows.append(
            "| {} | {} | {} | {} | {} | {} |".format(
                name,
                f"{t_min:.3f}" if t_min is not None else "failed",
                f"{t_med:.3f}" if t_med is not None else "",
                fmt_ratio(t_min, base_t),
                f"{m / 2**20:.0f}" if m is not None else "failed",
                fmt_ratio(m, base_m),
            )
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
