"""The demo's report: `report.md`, `results.json` and PNG plots, every number read from the runs the demo made.

`write_report` takes what the pipeline measured (trainer log histories, evaluation results, timings) and writes:

    results.json      all of it, machine-readable (the numbers the markdown quotes)
    report.md         tables, plots and the findings, phrased from the numbers (including when the paper's ordering
                      does not appear)
    stage1.png        stage-1 training curves and held-out distribution statistics per preset
    rl_curves.png     GRPO reward, entropy, completion length (and KL to the prior) per preset
    pass_at_k.png     Pass@k against k before and after RL per preset
"""

import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch

HELDOUT_KEYS = ("nll", "perplexity", "entropy", "topk_entropy", "tail_mass", "target_prob")
RL_KEYS = {"reward": "reward", "entropy": "entropy", "completions/mean_length": "completion length (tokens)"}
# Presets the paper calls precision-oriented (beta < 0, tail penalty) and diversity-oriented.
PRECISION_ORIENTED = ("precision", "tail_penalty")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key` in a trainer's `log_history` (entries without it are skipped)."""
    points = [(entry["step"], float(entry[key])) for entry in log_history if key in entry and "step" in entry]
    return [p[0] for p in points], [p[1] for p in points]


def start_end(values: list[float]) -> tuple[float, float]:
    """Means of the first and the last quarter of a logged curve (single logs are noisy)."""
    if not values:
        return math.nan, math.nan
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def paper_k(pass_at_k: dict, n: int) -> int:
    """The k the findings compare: the largest logged k <= n / 2, as the paper's Pass@64 of 128 samples."""
    ks = sorted(int(k) for k in pass_at_k)
    return max([k for k in ks if k <= max(1, n // 2)] or ks[:1])


def _summarise(runs: dict) -> dict:
    """The per-preset numbers of the report, straight from the runs."""
    summary = {}
    for preset, run in runs.items():
        rl_history = run["rl"]["log_history"]
        curves = {}
        for key in (*RL_KEYS, "kl_to_prior"):
            _, values = series(rl_history, key)
            first, last = start_end(values)
            curves[key] = {"start": first, "end": last, "min": min(values) if values else math.nan}
        _, dropped = series(rl_history, "dynamic_sampling/frac_groups_dropped")
        summary[preset] = {
            "heldout_stage1": run["eval_stage1"]["diagnostics"],
            "heldout_rl": run["eval_rl"]["diagnostics"],
            "rl_curves": curves,
            "rl_frac_groups_dropped": sum(dropped) / len(dropped) if dropped else math.nan,
            "stage1_seconds": run["stage1"]["seconds"],
            "rl_seconds": run["rl"]["seconds"],
        }
    return summary


def _fmt_order(values: dict) -> str:
    return " < ".join(f"{name} {value:.4f}" for name, value in sorted(values.items(), key=lambda kv: kv[1]))


def findings(runs: dict, summary: dict) -> list[str]:
    """The report's conclusions, each computed from the measured numbers (so they say when the paper's ordering does
    not appear)."""
    out = []
    presets = list(runs)
    entropy = {p: summary[p]["heldout_stage1"]["entropy"] for p in presets}
    nll = {p: summary[p]["heldout_stage1"]["nll"] for p in presets}
    out.append(f"Stage-1 entropy on held-out text: {_fmt_order(entropy)}.")
    if {"ce", "precision", "diversity"} <= set(presets):
        holds = entropy["precision"] < entropy["ce"] < entropy["diversity"]
        out.append(
            "The paper's entropy ordering (precision lowest, diversity highest, CE between) "
            + ("appears at this scale." if holds else "does NOT appear at this scale.")
        )
    branch = {p: runs[p]["eval_stage1"]["first_token_entropy"] for p in presets}
    sentence = f"Stage-1 entropy at the first branching point (right after the prompt): {_fmt_order(branch)}"
    if {"ce", "precision", "diversity"} <= set(presets):
        holds = branch["precision"] < branch["ce"] < branch["diversity"]
        sentence += "; the paper's ordering " + ("appears there." if holds else "does NOT appear there.")
    out.append(sentence if sentence.endswith(".") else sentence + ".")
    if "tail_penalty" in presets and "ce" in presets:
        tail = {p: summary[p]["heldout_stage1"]["tail_mass"] for p in ("ce", "tail_penalty")}
        lower = tail["tail_penalty"] < tail["ce"]
        out.append(
            f"Mass outside the top-k: tail_penalty {tail['tail_penalty']:.4f} vs ce {tail['ce']:.4f} "
            + ("(lower, as intended)." if lower else "(NOT lower at this scale).")
        )
    low, high = min(nll.values()), max(nll.values())
    out.append(
        f"Held-out NLL ranges from {low:.4f} to {high:.4f} nats/token across presets "
        f"(spread {100 * (high - low) / low:.1f}% of the lowest); the paper reports about equal perplexity."
    )

    n = runs[presets[0]]["eval_rl"]["num_samples"]
    k = paper_k(runs[presets[0]]["eval_rl"]["pass_at_k"], n)
    after = {p: runs[p]["eval_rl"]["pass_at_k"][str(k)] for p in presets}
    avg_after = {p: runs[p]["eval_rl"]["avg_at_n"] for p in presets}
    best = max(after, key=after.get)
    best_avg = max(avg_after, key=avg_after.get)
    out.append(
        f"After RL, Pass@{k}: "
        + ", ".join(f"{p} {100 * v:.1f}%" for p, v in after.items())
        + f"; Avg@{n}: "
        + ", ".join(f"{p} {100 * v:.1f}%" for p, v in avg_after.items())
        + "."
    )
    precision_like = [p for p in presets if p in PRECISION_ORIENTED]
    if precision_like and len(presets) > len(precision_like):
        others = [p for p in presets if p not in PRECISION_ORIENTED]
        top_prec = max(precision_like, key=after.get)
        top_other = max(others, key=after.get)
        gap = after[top_prec] - after[top_other]
        noise = 2 * max(runs[p]["eval_rl"]["pass_at_k_stderr"][str(k)] for p in (top_prec, top_other))
        if abs(gap) < noise:
            verdict = (
                f"is not resolved at this scale: {top_prec} vs {top_other} differ by {100 * gap:+.1f} points, "
                f"within twice the standard error ({100 * noise:.1f})"
            )
        elif gap > 0:
            verdict = "appears at this scale"
        else:
            verdict = "does NOT appear at this scale"
        out.append(
            f"The paper's finding that precision-oriented priors ({', '.join(precision_like)}) give the best Pass@k "
            f"after RL {verdict} (best Pass@{k}: {best}; best Avg@{n}: {best_avg})."
        )
    stderr = max(runs[p]["eval_rl"]["avg_at_n_stderr"] for p in presets)
    spread = max(avg_after.values()) - min(avg_after.values())
    out.append(
        f"Noise: the standard error of Avg@{n} over the {runs[presets[0]]['eval_rl']['num_problems']} test problems "
        f"is up to {100 * stderr:.1f} points, against a spread of {100 * spread:.1f} points between presets"
        + (", so the ranking after RL is not resolved." if spread < 2 * stderr else ".")
    )

    out.append(
        "These are single runs of one seed: how much the stage-1 and RL outcomes move between seeds is not "
        "measured here (rerun with `--seed` to see it)."
    )
    gains = {p: runs[p]["eval_rl"]["avg_at_n"] - runs[p]["eval_stage1"]["avg_at_n"] for p in presets}
    out.append(
        "RL changed Avg@" + f"{n} by " + ", ".join(f"{p} {100 * g:+.1f} points" for p, g in gains.items()) + "."
    )
    changes = {
        p: summary[p]["rl_curves"]["entropy"]["end"] - summary[p]["rl_curves"]["entropy"]["start"] for p in presets
    }
    lengths = {
        p: summary[p]["rl_curves"]["completions/mean_length"]["end"]
        - summary[p]["rl_curves"]["completions/mean_length"]["start"]
        for p in presets
    }
    out.append(
        "During RL the policy entropy changed by "
        + ", ".join(f"{p} {d:+.3f}" for p, d in changes.items())
        + " nats/token and the completion length changed by "
        + ", ".join(f"{p} {d:+.1f}" for p, d in lengths.items())
        + " tokens (mean of the last quarter of logged steps minus the first)."
    )
    if "diversity" in presets and len(presets) > 1:
        largest = min(changes, key=changes.get)
        shortest = min(lengths, key=lengths.get)
        out.append(
            "The paper's observation that a high-entropy prior collapses its entropy most under RL "
            + (
                "appears"
                if largest == "diversity" and changes["diversity"] < 0
                else f"does NOT appear (largest decrease or smallest increase: {largest})"
            )
            + "; that it shortens its responses most "
            + (
                "appears."
                if shortest == "diversity" and lengths["diversity"] < 0
                else f"does NOT appear (largest decrease or smallest increase: {shortest})."
            )
        )
    return out


def _plot_stage1(runs: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for preset, run in runs.items():
        steps, values = series(run["stage1"]["log_history"], "nll")
        axes[0].plot(steps, values, label=preset)
        steps, values = series(run["stage1"]["log_history"], "entropy")
        axes[1].plot(steps, values, label=preset)
    axes[0].set_title("stage 1: training NLL")
    axes[1].set_title("stage 1: training entropy")
    for ax in axes[:2]:
        ax.set_xlabel("step")
        ax.set_ylabel("nats / token")
        ax.grid(alpha=0.3)
        ax.legend()
    keys = ("nll", "entropy", "topk_entropy", "tail_mass")
    width = 0.8 / len(runs)
    for i, (preset, run) in enumerate(runs.items()):
        diag = run["eval_stage1"]["diagnostics"]
        axes[2].bar([j + i * width for j in range(len(keys))], [diag[k] for k in keys], width, label=preset)
    axes[2].set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    axes[2].set_xticklabels(keys)
    axes[2].set_title("stage-1 model on held-out text")
    axes[2].legend()
    presets = list(runs)
    values = [runs[p]["eval_stage1"]["first_token_entropy"] for p in presets]
    bars = axes[3].bar(presets, values, color=[f"C{i}" for i in range(len(presets))])
    axes[3].bar_label(bars, fmt="%.4f")  # the differences are small: print them
    axes[3].margins(y=0.12)
    axes[3].set_title("entropy at the first branching point")
    axes[3].set_ylabel("nats")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rl(runs: dict, path: Path) -> None:
    plt = _pyplot()
    keys = dict(RL_KEYS, kl_to_prior="KL(policy || prior)")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    for ax, (key, title) in zip(axes, keys.items()):
        for preset, run in runs.items():
            steps, values = series(run["rl"]["log_history"], key)
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=preset)
        ax.set_title(f"GRPO: {title}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pass_at_k(runs: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (preset, run) in enumerate(runs.items()):
        for stage, style in (("eval_stage1", "--"), ("eval_rl", "-")):
            pass_k = run[stage]["pass_at_k"]
            ks = sorted(int(k) for k in pass_k)
            label = f"{preset} ({'stage 1' if stage == 'eval_stage1' else 'after RL'})"
            ax.plot(ks, [100 * pass_k[str(k)] for k in ks], style, color=f"C{i}", marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title("Pass@k before (dashed) and after (solid) RL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shaping(shaping: dict) -> str:
    """The non-default knobs of a resolved ShapingConfig, e.g. "(beta=-0.25)"; "(plain cross-entropy)" if none."""
    knobs = [f"{k}={shaping[k]:g}" for k in ("beta", "head_reward", "tail_reward") if shaping[k]]
    if shaping["head_reward"] or shaping["tail_reward"]:
        knobs.append(f"top_k={shaping['top_k']}")
    return f"({', '.join(knobs)})" if knobs else "(plain cross-entropy)"


def _load(environment: dict) -> str:
    before, after = environment["load_average_before"], environment["load_average_after"]
    return (f"{before[0]:.2f} before, " if before else "") + f"{after[0]:.2f} after"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _markdown(
    config, runs: dict, summary: dict, found: list[str], task, data, seconds: float, environment: dict
) -> str:
    presets = list(runs)
    first = runs[presets[0]]
    n = first["eval_rl"]["num_samples"]
    example = data["sft"][0]
    s1, rl = first["stage1"]["settings"], first["rl"]["settings"]
    terms = str(task.min_terms) if task.min_terms == task.max_terms else f"{task.min_terms}-{task.max_terms}"
    lines = [
        "# trl_shaped demo: does the stage-1 distribution matter to RL?",
        "",
        (
            f"Measured by a run of `trl-shaped demo` ({'quick' if config.quick else 'full'} profile) in "
            f"{seconds:.0f} s "
            f"({environment['torch_threads']} torch threads, {environment['device']}, {environment['platform']}; "
            f"1-minute load average {_load(environment)}). "
            "Every number below is read from the runs this command made; `results.json` holds them all."
        ),
        "",
        "## What ran",
        "",
        (
            f"- **Task**: signed sums of {terms} terms (operands 1..{task.max_operand}), answered "
            f"with a worked solution in any valid order, or directly ({100 * task.direct_prob:.0f}% of the corpus), "
            f"ending with `#### <answer>`. {len(data['rl'])} training problems ({len(data['sft'])} stage-1 "
            f"solutions), {len(data['test'])} held-out problems. Example: `{example['prompt'].strip()}` -> "
            f"`{example['completion']}`."
        ),
        (
            f"- **Model**: Qwen3 architecture, {config.num_layers} layers, hidden {config.hidden_size}, character "
            "tokenizer over the task's alphabet; every preset starts from the same initial weights."
        ),
        (
            f"- **Stage 1**: `ShapedSFTTrainer`, {s1['max_steps']} steps x {s1['per_device_train_batch_size']} "
            f"sequences, lr {s1['learning_rate']} ({s1['lr_scheduler_type']}); shaping per preset: "
            + "; ".join(f"{p} {_shaping(runs[p]['stage1']['settings']['shaping'])}" for p in presets)
            + "."
        ),
        (
            "- **Stage 2**: `ShapedGRPOTrainer` from each stage-1 checkpoint (also its prior), "
            f"{rl['max_steps']} steps x {rl['per_device_train_batch_size'] // rl['num_generations']} prompts x "
            f"{rl['num_generations']} samples "
            f"at temperature {rl['temperature']}, KL coefficient {rl['beta']}, clip range [{1 - rl['epsilon']:g}, "
            f"{1 + rl['epsilon_high']:g}], loss `{rl['loss_type']}`, dynamic sampling "
            f"{'on' if rl['dynamic_sampling'] else 'off'} (up to {rl['max_resample_rounds']} extra rounds), lr "
            f"{rl['learning_rate']} ({rl['lr_scheduler_type']}), reward `exact_answer_reward`."
        ),
        (
            f"- **Evaluation**: {n} samples per held-out problem at temperature {config.eval_temperature}, top-p "
            f"{config.eval_top_p}: Avg@{n}, Cons@{n}, Pass@k (unbiased estimator); distribution statistics on the "
            "held-out reference solutions (completion tokens only)."
        ),
        "",
        "## Findings (as measured)",
        "",
        *[f"- {sentence}" for sentence in found],
        "",
        "## Stage 1: the prior's distribution on held-out text",
        "",
    ]
    lines += _table(
        ["preset", "nll", "perplexity", "entropy", "top-k entropy", "tail mass", "target prob"]
        + ["first-token entropy", "P(direct)", "train time (s)"],
        [
            [p]
            + [f"{summary[p]['heldout_stage1'][k]:.4f}" for k in HELDOUT_KEYS]
            + [f"{runs[p]['eval_stage1'][k]:.4f}" for k in ("first_token_entropy", "first_token_p_direct")]
            + [f"{summary[p]['stage1_seconds']:.0f}"]
            for p in presets
        ],
    )
    lines += [
        "",
        (
            "The first six columns average over every completion token of the held-out reference solutions; the "
            "first-token columns are the distribution right after the prompt, the task's main branching point (answer "
            "directly with `#`, or start working from one of the terms)."
        ),
    ]
    lines += ["", "![stage 1](stage1.png)", "", "## Stage 2: GRPO from each prior", ""]
    lines += ["Start and end are the means of the first and the last quarter of the logged steps.", ""]
    rows = []
    for p in presets:
        c = summary[p]["rl_curves"]
        rows.append(
            [p]
            + [f"{c[k]['start']:.3f} -> {c[k]['end']:.3f}" for k in RL_KEYS]
            + [
                f"{c['kl_to_prior']['end']:.4f}",
                f"{summary[p]['rl_frac_groups_dropped']:.2f}",
                f"{summary[p]['rl_seconds']:.0f}",
            ]
        )
    lines += _table(
        ["preset", "reward", "entropy", "completion length", "KL to prior (end)", "groups dropped", "time (s)"], rows
    )
    lines += ["", "![RL curves](rl_curves.png)", "", "## Evaluation before and after RL", ""]
    ks = sorted(int(k) for k in first["eval_rl"]["pass_at_k"])
    rows = []
    for p in presets:
        for stage, name in (("eval_stage1", "stage 1"), ("eval_rl", "after RL")):
            r = runs[p][stage]
            rows.append(
                [
                    p,
                    name,
                    f"{100 * r['avg_at_n']:.1f} ± {100 * r['avg_at_n_stderr']:.1f}",
                    f"{100 * r['cons_at_n']:.1f}",
                ]
                + [f"{100 * r['pass_at_k'][str(k)]:.1f}" for k in ks]
                + [
                    f"{100 * r['frac_worked']:.0f} / {100 * r['frac_direct']:.0f}",
                    f"{r['distinct_correct_per_problem']:.2f}",
                    f"{r['mean_completion_tokens']:.1f}",
                    f"{r['diagnostics']['entropy']:.4f}",
                    f"{r['first_token_entropy']:.4f}",
                ]
            )
    lines += _table(
        ["preset", "model", f"Avg@{n} (%)", f"Cons@{n} (%)"]
        + [f"Pass@{k} (%)" for k in ks]
        + ["worked / direct (%)", "distinct correct solutions", "length (tokens)", "held-out entropy"]
        + ["first-token entropy"],
        rows,
    )
    lines += [
        "",
        (
            "Avg@n is given with its standard error over problems. *worked / direct*: share of sampled completions "
            "that show steps or state only the answer; *distinct correct solutions*: distinct correct completions per "
            f"problem among the {n} samples (the exploration the model offers RL)."
        ),
        "",
        "![Pass@k](pass_at_k.png)",
        "",
        "## Files",
        "",
        "- `results.json`: every number above, plus the full trainer log histories.",
        (
            "- `runs/<preset>/stage1`, `runs/<preset>/rl`: checkpoints (with `trainer_state.json`); "
            "`runs/<preset>/eval_stage1.json`, `eval_rl.json`: every sampled completion."
        ),
        "",
    ]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_report(out: Path, *, config, runs: dict, task, data, seconds: float, load_before=None) -> dict:
    """Write results.json, report.md and the plots into `out`.

    Args:
        out (`Path`): the report directory.
        config (`DemoConfig`): the settings the demo ran with.
        runs (`dict`): preset -> {"stage1", "rl": {"checkpoint", "seconds", "log_history"}, "eval_stage1", "eval_rl":
            results of `trl_shaped.evaluation.evaluate` with the demo's completion profile}.
        task (`ArithmeticTask`), data (`DatasetDict`): the generated task.
        seconds (`float`): wall time of the demo up to the report.
        load_before (`tuple`, *optional*): `os.getloadavg()` when the demo started (other processes slow it down).

    Returns:
        dict mapping "markdown", "json" and each plot name to its path.
    """
    out = Path(out)
    environment = {
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "load_average_before": list(load_before) if load_before else None,
        "load_average_after": list(os.getloadavg()),
    }
    summary = _summarise(runs)
    found = findings(runs, summary)
    paths = {
        "json": out / "results.json",
        "markdown": out / "report.md",
        "stage1_plot": out / "stage1.png",
        "rl_plot": out / "rl_curves.png",
        "pass_at_k_plot": out / "pass_at_k.png",
    }
    _plot_stage1(runs, paths["stage1_plot"])
    _plot_rl(runs, paths["rl_plot"])
    _plot_pass_at_k(runs, paths["pass_at_k_plot"])
    results = {
        "config": asdict(config),
        "seconds": seconds,
        "environment": environment,
        "task": {**asdict(task), **{f"num_{split}": len(data[split]) for split in data}},
        "findings": found,
        "summary": summary,
        "presets": runs,
    }
    paths["json"].write_text(json.dumps(_jsonable(results), indent=1))
    paths["markdown"].write_text(_markdown(config, runs, summary, found, task, data, seconds, environment))
    return paths
