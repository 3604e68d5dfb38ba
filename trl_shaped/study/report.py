"""The study's report: `report.md` rendered from `results.json` (the claims were judged in `claims.py`, a pure
function of the cells' numbers; this module only renders them and records the environment).

The report leads with the verdict table, then whether the task can decide the central claim at all, then says what
the study's size can resolve, then gives every metric's mean and paired difference to ce with their intervals, the
figures, what ran, and the environment (torch, BLAS, threads).
"""

import json
import math
import os
import platform
import re
import sys
from pathlib import Path

from .claims import METRICS, NOT_RESOLVED, NOT_TESTED, PASS_AT_K_CEILING
from .config import ALL_PRESETS, BASELINE
from .stats import t_quantile

# Metrics shown in percent.
PERCENT = ("stage1_avg_at_n", "stage1_pass_at_k", "rl_avg_at_n", "rl_pass_at_k", "rl_avg_at_n_gain")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(config, load_before=None) -> dict:
    """What a rerun needs to repeat the numbers: versions, the BLAS torch was built with, thread settings."""
    import torch
    import transformers
    import trl

    shown = torch.__config__.show()
    # the BLAS / LAPACK torch was built with, and the math-library versions it reports (MKL, MKL-DNN, OpenBLAS)
    blas = re.findall(r"\b(?:BLAS_INFO|LAPACK_INFO)=[^,\s]+", shown)
    blas += [line.strip(" -") for line in shown.splitlines() if re.search(r"Math Kernel|MKL-DNN|OpenBLAS", line)]
    threads = [line.strip() for line in torch.__config__.parallel_info().splitlines() if "thread" in line.lower()]
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "blas": blas,
        "torch_threads_info": threads,
        "torch_config": torch.__config__.show(),
        "parallel_info": torch.__config__.parallel_info(),
        "cell_threads": config.num_threads if config.builtin else None,
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "platform": f"{platform.system()} {platform.machine()} ({cpu_model()})",
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "load_average_before": list(load_before) if load_before else None,
        "load_average_after": list(os.getloadavg()),
    }


def cpu_line(results: dict) -> list[str]:
    """The cells' CPU time (built-in task: each cell is one single-threaded process), when recorded."""
    cpu = [c["cpu_seconds"] for c in results["cells"] if c.get("cpu_seconds") is not None]
    if not cpu:
        return []
    return [
        f"- CPU time of the cells: {sum(cpu):.0f} s in all, {min(cpu):.0f}-{max(cpu):.0f} s per cell (on an idle core "
        f"a cell takes about its CPU time); {results['seconds']:.0f} s wall for this invocation"
    ]


def _interval(d: dict | None, scale: float = 1.0, signed: bool = False) -> str:
    if d is None:
        return "-"
    fmt = "{:+.4g}" if signed else "{:.4g}"
    mean = fmt.format(scale * d["mean"])
    if d["low"] is None:
        return f"{mean} (n={d['n']}: no interval)"
    return f"{mean} [{fmt.format(scale * d['low'])}, {fmt.format(scale * d['high'])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def open_claim_lines(claim: dict) -> list[str]:
    """What would resolve a claim left "not resolved": for each interval that left it open, the smallest difference
    these seeds resolve (the interval's half-width) and the seeds that would resolve its observed mean at the same
    spread (`claims.resolving_power`)."""
    resolution = claim.get("resolution") or {"open_by": [], "scale": 1}
    scale = resolution["scale"]
    unit = " points" if scale == 100 else ""
    lines = []
    for entry in resolution["open_by"]:
        half = "none (one seed)" if entry["half_width"] is None else f"{scale * entry['half_width']:.3g}{unit}"
        seeds = f"about {entry['seeds_needed']}" if entry["seeds_needed"] is not None else f"- ({entry['note']})"
        mean = f"{scale * entry['mean']:+.3g}{unit}"
        if entry["want"] is None:
            lines.append(
                f"`{entry['interval']}` ({entry['n']} seeds, must lie {entry['test']}): interval half-width {half}; "
                f"seeds to bring the observed mean {mean} within at the same spread: {seeds}"
            )
        else:
            signed = entry["mean"] * entry["want"]
            side = "the paper's side" if signed > 0 else "against the paper" if signed < 0 else "zero"
            lines.append(
                f"`{entry['interval']}` ({entry['n']} seeds, paper: {entry['test']}): the smallest difference these "
                f"seeds resolve is {half} (the interval's half-width); seeds to resolve the observed mean {mean} "
                f"({side}) at the same spread: {seeds}"
            )
    return lines


def resolution(results: dict) -> list[str]:
    """What this study's size can and cannot resolve, from its numbers: the t quantile of its seed count, and for
    each unresolved claim which intervals left it open, how wide they are, and how many seeds would close them.
    Returns markdown list lines."""
    config = results["config"]
    finished = [len(seeds) for seeds in seeds_finished(results).values() if seeds]
    n = min(finished) if finished else 0
    lines = []
    if n < 2:
        lines.append(
            "- With one seed no interval exists: every comparison is 'not resolved' (a single run decides nothing)."
        )
    else:
        lines.append(
            f"- {n} seeds per preset (the fewest any preset finished): a {100 * config['confidence']:.0f}% interval is "
            "the mean +- "
            f"{t_quantile(n, config['confidence']):.2f} standard errors, so a difference is resolved only when it "
            "exceeds that many standard errors of its per-seed values. For each claim left open: the interval that "
            "decided it, the smallest difference it resolves (its half-width), and roughly how many seeds would "
            "resolve its observed mean if the spread stayed the same."
        )
    for claim in results["claims"]:
        if claim["verdict"] == NOT_RESOLVED:
            resolved_by = claim.get("resolution") or {"open_by": [], "seeds_needed": None}
            needed, several = resolved_by["seeds_needed"], len(resolved_by["open_by"]) > 1
            total = f" A verdict at the same means and spreads: about {needed} seeds." if several and needed else ""
            lines.append(f"- Not resolved: *{claim['claim']}*.{total}")
            lines += [f"  - {line}" for line in open_claim_lines(claim)]
        elif claim["verdict"] == NOT_TESTED:
            lines.append(f"- Not tested: *{claim['claim']}* ({claim['evidence']}).")
    return lines


def decidability_lines(results: dict) -> list[str]:
    """Whether the task can decide the central claim at all (`claims.decidability`): a task on which the presets do
    not move the prior, or every prior saturates Pass@k, leaves it open however many seeds run."""
    checks = results.get("decidability")
    if not checks:
        return []
    lines = [
        "## Can this task decide the central claim?",
        "",
        '"The precision prior gives the best Pass@k after RL" can only show where the presets move the stage-1 '
        f"prior, ce's Pass@k after RL leaves room below {100 * PASS_AT_K_CEILING:.0f}%, and RL learns from the prior. "
        "A check that fails rules the claim out of reach on this task; one that holds in the means only needs more "
        "seeds.",
        "",
    ]
    lines += _table(["precondition", "status", "evidence (mean [interval])"],
                    [[c["check"], f"**{c['status']}**", c["evidence"]] for c in checks])  # fmt: skip
    return lines + [""]


def extra_arms_lines(presets: list[str]) -> list[str]:
    """A note on the arms that are not the paper's presets (dft): outside the verdicts, in the tables."""
    extra = [p for p in presets if p not in ALL_PRESETS]
    if not extra:
        return []
    return [
        "",
        f"{', '.join(extra)} (TRL's DFT loss: cross-entropy weighted by the detached target probability) is not one of "
        "the paper's presets: the claims leave it out; the tables and figures compare it with ce like the presets.",
    ]


def figure_lines(figures: dict) -> list[str]:
    """The figures' markdown; a figure left out for want of data is named with the reason."""
    lines = []
    for name, title in (("stage1", "stage 1"), ("pass_at_k", "Pass@k"), ("rl_curves", "RL curves")):
        path = figures.get(name)
        if path is None:
            reason = figures.get("omitted", {}).get(name, "no data")
            lines += [f"*Figure {title} left out: {reason}.*", ""]
        else:
            lines += [f"![{title}]({Path(path).name})", ""]
    return lines


def missing_lines(results: dict) -> list[str]:
    """`--report_only` before every cell finished: which cells the numbers leave out, and how far each got."""
    missing = results.get("missing_cells") or []
    if not missing:
        return []
    total = len(results["cells"]) + len(missing)
    lines = [
        "## Cells missing from this report",
        "",
        f"This report covers {len(results['cells'])} of {total} cells (`--report_only`): every interval and verdict "
        "below is computed from the finished cells only. Missing:",
        "",
    ]
    for cell in missing:
        state = f"stages done: {', '.join(cell['stages_done'])}" if cell["stages_done"] else (
            "started, no stage done" if cell["started"] else "not started"
        )  # fmt: skip
        lines.append(f"- {cell['preset']} seed {cell['seed']} ({state})")
    return lines + [""]


def _task_line(config: dict) -> str:
    """``code task (judge: code)``: the built-in study's task and the judge of its RL rewards and evaluations."""
    from ..tasks import get_task

    task = get_task(config.get("task", "arithmetic"), **json.loads(config.get("task_args") or "{}"))
    return f"{task.name} task (judge: {task.judge})"


def seeds_finished(results: dict) -> dict[str, list[int]]:
    """preset -> the seeds of its finished cells (results of an older version: from its cells list)."""
    if "seeds_finished" in results:
        return results["seeds_finished"]
    found = {}
    for cell in results["cells"]:
        found.setdefault(cell["preset"], []).append(cell["seed"])
    return {p: sorted(s) for p, s in found.items()}


def _seeds(values: dict | None, base: dict | None = None) -> str:
    """The seeds behind one number: those with a value (paired: those both have)."""
    seeds = sorted(int(s) for s in (values or {}) if base is None or s in base)
    return ", ".join(map(str, seeds)) or "-"


def seeds_line(results: dict) -> str:
    """How many seeds entered the numbers, per preset, against those asked for."""
    config, finished = results["config"], seeds_finished(results)
    asked = config["num_seeds"]
    shown = "; ".join(f"{p}: {', '.join(map(str, s)) or 'none'}" for p, s in finished.items())
    counts = {len(s) for s in finished.values()}
    head = f"{counts.pop()} seeds" if len(counts) == 1 else "seeds"
    return f"{head} finished of {asked} asked ({shown})"


def render_markdown(results: dict, figures: dict) -> str:
    """The markdown of the report from `results` (see `runner.run_study`) and the figure paths."""
    config, env = results["config"], results["environment"]
    presets = list(results["presets"])
    builtin = config["model_name_or_path"] is None
    lines = [
        "# trl_shaped study: the paper's claims across seeds",
        "",
        f"{len(presets)} presets ({', '.join(presets)}), {seeds_line(results)}, "
        + (f"built-in {_task_line(config)}" + (" (quick profile)" if config["quick"] else "") if builtin
           else f"model `{config['model_name_or_path']}` through the recipes")
        + f", {results['seconds']:.0f} s. Verdicts come from {100 * config['confidence']:.0f}% Student-t intervals "
        "across seeds of paired differences (same seed: same initialisation, data order and sampling), never from one "
        "run.",
        "",
        *missing_lines(results),
        "## Verdicts",
        "",
    ]  # fmt: skip
    lines += _table(
        ["claim", "verdict", "evidence (mean [interval])"],
        [[c["claim"], f"**{c['verdict']}**", c["evidence"]] for c in results["claims"]],
    )
    lines += [
        "",
        f"*At equal perplexity* means: the interval of each preset's paired held-out NLL difference to ce lies within "
        f"+-{100 * config['equal_nll_tolerance']:.0f}% of ce's mean NLL; otherwise the entropy order is not resolved.",
        *extra_arms_lines(presets),
        "",
        *decidability_lines(results),
        "## What this size can and cannot resolve",
        "",
        *resolution(results),
        "",
        "## Every metric: mean and paired difference to ce",
        "",
    ]
    rows = []
    for metric, description in METRICS.items():
        scale = 100 if metric in PERCENT else 1
        for p in presets:
            mean = results["presets"][p].get(metric)
            if mean is None:
                continue
            diff = results["vs_ce"].get(metric, {}).get(p)
            values = results["values"].get(metric, {})
            rows.append(
                [
                    description + (" (%)" if scale == 100 else ""),
                    p,
                    _interval(mean, scale),
                    _seeds(values.get(p)),
                    _interval(diff, scale, True),
                    _seeds(values.get(p), values.get(BASELINE)) if diff else "-",
                ]
            )
    header = ["metric", "preset", "mean [interval]", "seeds", f"preset - {BASELINE} [interval]", "paired seeds"]
    lines += _table(header, rows)
    lines += [
        "",
        f"Pass@k is {', '.join(results.get('pass_at_k_compared') or ['-'])} samples: k = n/2 of the evaluation's own n "
        "(the paper's Pass@64 of 128), or the largest logged k below it. A difference whose seeds agree exactly is no "
        "verdict with fewer than 3 seeds. RL changes are the mean of "
        "the last quarter of the logged GRPO steps minus the first quarter.",
        "",
        *figure_lines(figures),
        "## What ran",
        "",
    ]
    keys = (
        ("num_train_problems", "num_test_problems", "tokenizer", "bpe_vocab_size", "hidden_size", "num_layers")
        + ("sft_steps", "sft_batch_size", "grpo_steps", "grpo_prompts_per_step", "num_generations")
        + ("eval_num_samples", "eval_temperature", "shaping_top_k", "max_parallel", "num_threads")
        if builtin
        else ("model_name_or_path", "stage1_recipe", "rl_recipe", "eval_recipe", "accelerate_config")
        + ("stage1_args", "rl_args", "eval_args")
    )
    lines += [f"- `{k}`: {config[k]}" for k in keys]
    lines += [
        "- cells: `cells/<preset>/seed<k>/` (result.json, checkpoints, evaluation samples, log.txt)",
        *cpu_line(results),
        "",
        "## Environment (what a rerun must match to repeat the numbers bit for bit)",
        "",
        f"- python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}",
        f"- {env['platform']}, {env['cpu_count']} CPUs, CUDA {'available' if env['cuda'] else 'not available'}",
        f"- BLAS: {'; '.join(env['blas']) or 'not reported by torch'}",
        f"- torch threads per cell: {env['cell_threads']}; thread variables of the runner: {env['thread_env']}",
        f"- the runner's torch: {'; '.join(env.get('torch_threads_info', []))}",
        "- load average (1 min) before/after: "
        + f"{(env['load_average_before'] or [math.nan])[0]:.2f} / {env['load_average_after'][0]:.2f}",
        "",
        "The same machine, threads and versions repeat every number bit for bit; another CPU, BLAS or thread count "
        "changes the floating-point rounding, which training amplifies, so single runs differ there: compare the "
        "intervals, not one seed. `results.json` holds the full torch configuration and parallel info.",
        "",
    ]
    return "\n".join(lines)


def write_report(out: Path, results: dict, figures: dict) -> Path:
    """Write `report.md` into `out`; returns its path."""
    path = Path(out) / "report.md"
    path.write_text(render_markdown(results, figures))
    return path
