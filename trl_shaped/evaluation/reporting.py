"""Reporting evaluation results: markdown summary, JSON, and PNG plots that the demo and the study runner share.

The plots take plain numbers, so that a single run and a mean over seeds with its interval draw the same way:

    plot_curves(curves, path, ...)        lines with optional bands; curves: label -> {"x", "y"[, "lower", "upper"]}
    plot_pass_at_k(runs, path)            Pass@k against k; runs: label -> {"pass_at_k": {k: value}
                                          [, "pass_at_k_lower": {k: value}, "pass_at_k_upper": {k: value}]}
    plot_metric_bars(runs, path, metrics) grouped bars with optional error bars; runs: label -> {metric: value
                                          [, "<metric>_lower": value, "<metric>_upper": value]}
    plot_entropy_per_preset(runs, path)   plot_metric_bars of entropy and top-k entropy, from `evaluate` results

Accuracies are fractions in [0, 1] and are drawn as percentages. Lower/upper are the ends of an interval (e.g. a 95%
interval across seeds), not distances from the mean.
"""

import json
import math
import os
from pathlib import Path


def to_jsonable(value):
    """`value` with NaN/inf floats as None (strict JSON has no NaN), paths as strings, NumPy/torch scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # NumPy / torch scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _number(value, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def markdown_summary(results: dict) -> str:
    """A markdown table of one `evaluate` result: Avg@n, Cons@n, Pass@k, completion length, diagnostics."""
    s = results.get("settings", {})
    n = results["num_samples"]
    lines = [
        f"# Evaluation: {results.get('run_name', 'eval')}",
        "",
        f"{results['num_problems']} problems, n = {n} samples each"
        + (f", temperature {s['temperature']}, top-p {s['top_p']}" if "temperature" in s else "")
        + ".",
        "",
        f"Scored by the judge `{results.get('judge', s.get('judge', 'exact'))}`: a sample is correct when its score is "
        "1.0 (mean score: the mean of every sample's score).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| Avg@{n} | {100 * results['avg_at_n']:.2f}% |",
        f"| Cons@{n} | {100 * results['cons_at_n']:.2f}% |",
    ]
    lines += [f"| Pass@{k} | {100 * v:.2f}% |" for k, v in results["pass_at_k"].items()]
    if results.get("mean_score") is not None:
        lines.append(f"| mean score | {results['mean_score']:.4f} |")
    if "mean_completion_tokens" in results:
        lines.append(f"| mean completion length (tokens) | {results['mean_completion_tokens']:.1f} |")
    diag = results.get("diagnostics")
    if diag:
        lines += ["", f"Distribution diagnostics on held-out text ({diag['num_tokens']} tokens):", ""]
        lines += ["| diagnostic | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v, '.4f')} |" for k, v in diag.items() if k != "num_tokens"]
        if not diag["num_tokens"]:
            lines += ["", "No token of the held-out text could be scored (empty texts, or max_length too small)."]
    return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: str | os.PathLike, *, name: str = "eval") -> dict:
    """Write `<name>.json` (strict JSON: NaN as null), `<name>.md` (a summary table) and `<name>_pass_at_k.png`.

    Returns:
        dict mapping "json", "markdown" and "pass_at_k_plot" to the paths written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / f"{name}.json",
        "markdown": out / f"{name}.md",
        "pass_at_k_plot": out / f"{name}_pass_at_k.png",
    }
    paths["json"].write_text(json.dumps(to_jsonable(results), indent=2, allow_nan=False))
    paths["markdown"].write_text(markdown_summary(results))
    plot_pass_at_k({results.get("run_name", name): results}, paths["pass_at_k_plot"])
    return paths


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1):
    """A matplotlib `Figure` and its axes (as `pyplot.subplots` returns them), built without pyplot.

    No global figure registry and no backend switch: a notebook user's backend stays as it was, and the figure is
    freed with its last reference.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """`fig` written to `path` (the format from its suffix) after a tight layout."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return Path(path)


def plot_curves(
    curves: dict,
    path: str | os.PathLike,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    log2_x: bool = False,
    marker: str | None = "o",
) -> Path:
    """Lines with optional shaded bands, one per label.

    Args:
        curves: label -> {"x": [...], "y": [...]} plus, optionally, "lower" and "upper" (same length as "y"): the
            band's ends, e.g. a 95% interval across seeds at each x.
        path: the PNG to write.
        xlabel, ylabel, title (`str`): axis labels and title.
        log2_x (`bool`): log2 x axis (Pass@k against k).
        marker (`str`, *optional*): matplotlib marker of the points.
    """
    fig, ax = new_figure((5.5, 3.8))
    for i, (label, curve) in enumerate(curves.items()):
        x, y = list(curve["x"]), list(curve["y"])
        if len(x) != len(y):
            raise ValueError(f"curve {label!r}: x and y have different lengths ({len(x)} and {len(y)})")
        ax.plot(x, y, marker=marker, color=f"C{i}", label=label)
        if curve.get("lower") is not None and curve.get("upper") is not None:
            if not len(curve["lower"]) == len(curve["upper"]) == len(y):
                raise ValueError(f"curve {label!r}: lower and upper must have one value per point")
            ax.fill_between(x, curve["lower"], curve["upper"], color=f"C{i}", alpha=0.2, linewidth=0)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_pass_at_k(runs: dict, path: str | os.PathLike, *, title: str = "Pass@k") -> Path:
    """Pass@k (%) against k on a log2 axis, one line per run, with a band where the run gives one.

    Args:
        runs: label -> a result of `evaluate`, or any dict with "pass_at_k": {k: value in [0, 1]} (k as int or str);
            optional "pass_at_k_lower" and "pass_at_k_upper" ({k: value}, same keys) draw a band (e.g. the 95%
            interval of the mean over seeds).
        path: the PNG to write.
        title (`str`): the plot title.
    """
    curves = {}
    for label, run in runs.items():
        values = {int(k): v for k, v in run["pass_at_k"].items()}
        ks = sorted(values)
        curve = {"x": ks, "y": [100 * values[k] for k in ks]}
        if run.get("pass_at_k_lower") is not None and run.get("pass_at_k_upper") is not None:
            lower = {int(k): v for k, v in run["pass_at_k_lower"].items()}
            upper = {int(k): v for k, v in run["pass_at_k_upper"].items()}
            if set(lower) != set(values) or set(upper) != set(values):
                raise ValueError(f"run {label!r}: pass_at_k_lower/upper must have the k of pass_at_k ({ks})")
            curve |= {"lower": [100 * lower[k] for k in ks], "upper": [100 * upper[k] for k in ks]}
        curves[label] = curve
    return plot_curves(curves, path, xlabel="k", ylabel="Pass@k (%)", title=title, log2_x=True)


def plot_metric_bars(
    runs: dict,
    path: str | os.PathLike,
    metrics: dict | list | tuple,
    *,
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Grouped bars: one group per run (e.g. per preset), one bar per metric, error bars where given.

    Args:
        runs: label -> {metric: value}, optionally with "<metric>_lower" and "<metric>_upper" (the interval's ends,
            drawn as an error bar).
        path: the PNG to write.
        metrics: the metric keys to draw, or a dict key -> legend label.
        ylabel, title (`str`): axis label and title.
    """
    names = dict(metrics) if isinstance(metrics, dict) else {m: m for m in metrics}
    labels = list(runs)
    missing = {label: [m for m in names if m not in runs[label]] for label in labels}
    missing = {label: m for label, m in missing.items() if m}
    if missing:
        raise ValueError(f"runs without the metrics to plot: {missing}")
    fig, ax = new_figure((max(4, 1.3 * len(labels) + 2), 3.6))
    width = 0.8 / len(names)
    for j, (metric, legend) in enumerate(names.items()):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(labels))]
        means = [runs[label][metric] for label in labels]
        yerr = None
        if all(f"{metric}_lower" in runs[label] and f"{metric}_upper" in runs[label] for label in labels):
            yerr = [
                [m - runs[label][f"{metric}_lower"] for m, label in zip(means, labels, strict=True)],
                [runs[label][f"{metric}_upper"] - m for m, label in zip(means, labels, strict=True)],
            ]
        ax.bar(xs, means, width, yerr=yerr, capsize=3 if yerr else 0, label=legend, color=f"C{j}")
    ax.set_xticks(list(range(len(labels))))
    ax.set_xticklabels(labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_entropy_per_preset(runs: dict, path: str | os.PathLike) -> Path:
    """Grouped bars of entropy and top-k entropy per run (e.g. per preset), from the held-out diagnostics.

    Args:
        runs: label -> a result of `evaluate` with diagnostics, or a diagnostics dict itself; "entropy_lower" /
            "entropy_upper" (and the same for "topk_entropy") in it draw error bars.
        path: the PNG to write.
    """
    diags = {}
    for label, run in runs.items():
        diag = run.get("diagnostics", run)
        diags[label] = diag if isinstance(diag, dict) else {}
    missing = [label for label, d in diags.items() if "entropy" not in d]
    if missing:
        raise ValueError(f"runs without diagnostics: {missing}")
    return plot_metric_bars(
        diags,
        path,
        {"entropy": "entropy", "topk_entropy": "top-k entropy"},
        ylabel="nats per token",
        title="Entropy on held-out text",
    )
