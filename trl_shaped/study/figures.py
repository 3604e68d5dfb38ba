"""The study's figures, like the paper's, with every plotted number in `figures.json` beside the PNGs.

stage1.png      held-out NLL, entropy, top-k entropy and tail mass of the stage-1 models. Top row: mean per preset
                with its interval across seeds as whiskers, each seed as a gray dot beside it. Bottom row: the paired
                difference to ce (same seed) with its interval: what the verdicts are decided from
pass_at_k.png   Pass@k against k, before (dashed) and after (solid) RL: mean over seeds with its interval as a band
rl_curves.png   GRPO reward, entropy and completion length against the step: mean over seeds with a band
"""

import json
import math
from pathlib import Path

from ..evaluation.reporting import new_figure, save_figure
from .claims import series
from .config import ARMS, BASELINE
from .stats import paired_difference, t_interval

STAGE1_KEYS = ("nll", "entropy", "topk_entropy", "tail_mass")
RL_KEYS = {"reward": "reward", "entropy": "entropy (nats/token)", "completions/mean_length": "length (tokens)"}


def _band(values: list[float], confidence: float) -> dict:
    interval = t_interval(values, confidence)
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "values": values}


def _finite(x: float, fallback: float) -> float:
    return x if math.isfinite(x) else fallback


def figure_data(cells: list[dict], confidence: float = 0.95) -> dict:
    """Every number the figures plot, from the cell results: per preset, the stage-1 statistics, Pass@k per k (stage
    1 and after RL) and the RL curves per step, each as {"mean", "low", "high", "values" (one per seed)}."""
    by_preset = {}
    for cell in sorted(cells, key=lambda c: (ARMS.index(c["preset"]), c["seed"])):  # the paper's order, then dft
        by_preset.setdefault(cell["preset"], []).append(cell)
    data = {"confidence": confidence, "stage1": {}, "stage1_vs_ce": {}, "pass_at_k": {}, "rl_curves": {}}
    for preset, group in by_preset.items():
        diags = [c["eval_stage1"].get("diagnostics") or {} for c in group]
        data["stage1"][preset] = {
            key: _band([diag[key] for diag in diags], confidence)
            for key in STAGE1_KEYS
            if all(key in diag for diag in diags)
        }
        if preset != BASELINE and BASELINE in by_preset:
            data["stage1_vs_ce"][preset] = {}
            for key in STAGE1_KEYS:
                ours = {c["seed"]: (c["eval_stage1"].get("diagnostics") or {}).get(key) for c in group}
                base = {c["seed"]: (c["eval_stage1"].get("diagnostics") or {}).get(key) for c in by_preset[BASELINE]}
                seeds = [s for s in ours if s in base and ours[s] is not None and base[s] is not None]
                if seeds:
                    diff = paired_difference({s: ours[s] for s in seeds}, {s: base[s] for s in seeds}, confidence)
                    values = [ours[s] - base[s] for s in sorted(seeds)]
                    data["stage1_vs_ce"][preset][key] = {
                        "mean": diff.mean,
                        "low": diff.low,
                        "high": diff.high,
                        "values": values,
                    }
        data["pass_at_k"][preset] = {}
        for stage in ("eval_stage1", "eval_rl"):
            ks = sorted(int(k) for k in group[0][stage]["pass_at_k"])
            data["pass_at_k"][preset][stage] = {
                str(k): _band([c[stage]["pass_at_k"][str(k)] for c in group], confidence) for k in ks
            }
        data["rl_curves"][preset] = {}
        for key in RL_KEYS:
            per_seed = [dict(zip(*series(c["rl"]["log_history"], key), strict=True)) for c in group]
            steps = sorted(set.intersection(*(set(curve) for curve in per_seed))) if per_seed else []
            data["rl_curves"][preset][key] = {
                str(step): _band([curve[step] for curve in per_seed], confidence) for step in steps
            }
    return data


def _plot_stage1(data: dict, path: Path) -> None:
    presets = list(data["stage1"])
    fig, grid = new_figure((4 * len(STAGE1_KEYS), 6.8), 2, len(STAGE1_KEYS))
    for ax, key in zip(grid[1], STAGE1_KEYS, strict=True):
        others = [p for p in presets if key in data["stage1_vs_ce"].get(p, {})]
        for i, preset in enumerate(others):
            band = data["stage1_vs_ce"][preset][key]
            mean = band["mean"]
            err = [[_finite(mean - band["low"], 0.0)], [_finite(band["high"] - mean, 0.0)]]
            color = f"C{presets.index(preset)}"
            ax.errorbar(i, mean, yerr=err, color=color, marker="o", markersize=7, capsize=5, linewidth=2)
            ax.plot([i + 0.15] * len(band["values"]), band["values"], ".", color="gray")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlim(-0.5, max(1, len(others)) - 0.5)
        ax.set_xticks(range(len(others)))
        ax.set_xticklabels([f"{p} - {BASELINE}" for p in others], rotation=20)
        ax.set_title(f"paired difference: {key}")
        ax.grid(alpha=0.3, axis="y")
    for ax, key in zip(grid[0], STAGE1_KEYS, strict=True):
        for i, preset in enumerate(presets):
            band = data["stage1"][preset].get(key)
            if band is None:
                continue
            mean = band["mean"]
            err = [[_finite(mean - band["low"], 0.0)], [_finite(band["high"] - mean, 0.0)]]
            # mean and interval as a point with whiskers (the axis is zoomed: bars from a cut axis would mislead)
            ax.errorbar(i, mean, yerr=err, color=f"C{i}", marker="o", markersize=7, capsize=5, linewidth=2)
            ax.plot([i + 0.15] * len(band["values"]), band["values"], ".", color="gray")
        ax.set_xlim(-0.5, len(presets) - 0.5)
        ax.set_xticks(range(len(presets)))
        ax.set_xticklabels(presets, rotation=20)
        ax.set_title(f"stage 1: held-out {key}")
        lows = [data["stage1"][p][key]["values"] for p in presets if key in data["stage1"][p]]
        if lows:  # zoom on the values: the differences are small against the level
            flat = [v for vs in lows for v in vs]
            span = max(flat) - min(flat) or abs(max(flat)) or 1.0
            ax.set_ylim(min(flat) - span, max(flat) + span)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"mean over seeds, {100 * data['confidence']:.0f}% interval, one dot per seed", fontsize=9)
    save_figure(fig, path, dpi=110)


def _plot_pass_at_k(data: dict, path: Path) -> None:
    fig, ax = new_figure((6, 4.2))
    for i, (preset, stages) in enumerate(data["pass_at_k"].items()):
        for stage, style in (("eval_stage1", "--"), ("eval_rl", "-")):
            bands = stages[stage]
            ks = [int(k) for k in bands]
            mean = [100 * bands[str(k)]["mean"] for k in ks]
            # a t interval can cross 0% or 100%: draw it within the range a rate can take (figures.json keeps it whole)
            low = [max(0.0, 100 * _finite(bands[str(k)]["low"], bands[str(k)]["mean"])) for k in ks]
            high = [min(100.0, 100 * _finite(bands[str(k)]["high"], bands[str(k)]["mean"])) for k in ks]
            label = f"{preset} ({'stage 1' if stage == 'eval_stage1' else 'after RL'})"
            ax.plot(ks, mean, style, color=f"C{i}", marker="o", label=label)
            ax.fill_between(ks, low, high, color=f"C{i}", alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title(f"Pass@k before (dashed) and after (solid) RL, {100 * data['confidence']:.0f}% bands")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def _plot_rl(data: dict, path: Path) -> None:
    fig, axes = new_figure((4.4 * len(RL_KEYS), 3.6), 1, len(RL_KEYS))
    for ax, (key, title) in zip(axes, RL_KEYS.items(), strict=True):
        for i, (preset, curves) in enumerate(data["rl_curves"].items()):
            bands = curves[key]
            steps = [int(s) for s in bands]
            if not steps:
                continue
            mean = [bands[str(s)]["mean"] for s in steps]
            ax.plot(steps, mean, color=f"C{i}", label=preset)
            low = [_finite(bands[str(s)]["low"], bands[str(s)]["mean"]) for s in steps]
            high = [_finite(bands[str(s)]["high"], bands[str(s)]["mean"]) for s in steps]
            ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.15)
        ax.set_title(f"GRPO: {title}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def missing_data(data: dict) -> dict[str, str]:
    """The figures that would be empty, each with the reason (they are left out and the report says why)."""
    reasons = {}
    if not any(data["stage1"].values()):
        reasons["stage1"] = "no cell recorded held-out diagnostics of its stage-1 model"
    if not any(band for curves in data["rl_curves"].values() for band in curves.values()):
        reasons["rl_curves"] = (
            "no GRPO step logged reward, entropy or completion length in every cell of a preset (the cells' "
            "`rl.log_history` is empty: a stage that wrote no log history, or logging_steps beyond max_steps)"
        )
    return reasons


def write_figures(out: Path, cells: list[dict], confidence: float = 0.95) -> dict:
    """Write the PNGs that have data and `figures.json` into `out`; returns name -> path (None for a figure left out)
    and "omitted": name -> why."""
    out = Path(out)
    data = figure_data(cells, confidence)
    plots = {"stage1": _plot_stage1, "pass_at_k": _plot_pass_at_k, "rl_curves": _plot_rl}
    omitted = missing_data(data)
    paths = {"json": out / "figures.json", "omitted": omitted}
    for name, plot in plots.items():
        path = out / f"{name}.png"
        path.unlink(missing_ok=True)  # a figure of an earlier report must not stand in for this one's
        paths[name] = None if name in omitted else path
        if name not in omitted:
            plot(data, path)
    clean = json.loads(json.dumps(data), parse_constant=lambda c: None)  # -inf/inf (one seed) -> null
    paths["json"].write_text(json.dumps(clean, indent=1))
    return paths
