"""Logging an evaluation to the trackers a training stage reports to (`EvalConfig.report_to`), once, at the end.

Each tracker is driven through its own public API, as transformers' callbacks drive it for training:

    trackio       trackio.init(project, name) / trackio.log / trackio.finish
    wandb         wandb.init(project, name, group=$WANDB_RUN_GROUP) / wandb.log / wandb.finish
    tensorboard   torch.utils.tensorboard.SummaryWriter(output_dir) / add_scalar / add_text / close (the run name
                  and the markdown summary as text)

The metrics go under ``eval/``: ``avg_at_n``, ``cons_at_n``, ``pass_at_<k>``, ``mean_score``,
``mean_completion_tokens`` and the distribution diagnostics (``eval/diagnostics/<name>``), at step 0. `trl-shaped
eval` logs from its main process only.
"""

import importlib.util
import math
import os
import warnings

TRACKERS = ("trackio", "wandb", "tensorboard")
# The module each tracker needs (tensorboard: torch's SummaryWriter writes with the tensorboard package).
_MODULES = {"trackio": "trackio", "wandb": "wandb", "tensorboard": "tensorboard"}


def check_report_to(report_to, *, warn: bool = False) -> list[str]:
    """`report_to` as the list of trackers to log to: TRL's names, "none" (nothing) or "all" (every installed one of
    `TRACKERS`). A name TRL does not know, or a tracker of `TRACKERS` that is not installed, is a ValueError naming
    the field; another of TRL's trackers (a study's `report_to` reaches its evaluation stages too) is skipped, with
    a warning when `warn`."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    allowed = sorted({*INTEGRATION_TO_CALLBACK, *TRACKERS, "all", "none"})
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"report_to must name trackers out of {allowed}, got {unknown}")
    if "all" in names:
        return [name for name in TRACKERS if _installed(name)]
    missing = [name for name in names if name in TRACKERS and not _installed(name)]
    if missing:
        raise ValueError(f"report_to names {missing}, which is not installed here: pip install {' '.join(missing)}")
    skipped = [name for name in names if name not in (*TRACKERS, "none")]
    if skipped and warn:
        warnings.warn(f"evaluation results are logged to {list(TRACKERS)} only; report_to {skipped} skipped")
    return [name for name in dict.fromkeys(names) if name in TRACKERS]


def _installed(tracker: str) -> bool:
    return importlib.util.find_spec(_MODULES[tracker]) is not None


def tracked_metrics(results: dict) -> dict[str, float]:
    """The scalars of an `evaluate` result that a tracker gets, under ``eval/`` (non-finite diagnostics left out)."""
    metrics = {"eval/avg_at_n": results["avg_at_n"], "eval/cons_at_n": results["cons_at_n"]}
    metrics.update({f"eval/pass_at_{k}": value for k, value in results["pass_at_k"].items()})
    for name in ("mean_score", "mean_completion_tokens"):
        if results.get(name) is not None:
            metrics[f"eval/{name}"] = results[name]
    for name, value in (results.get("diagnostics") or {}).items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics[f"eval/diagnostics/{name}"] = value
    return {name: float(value) for name, value in metrics.items()}


def log_evaluation(results: dict, report_to, *, project: str, run_name: str, output_dir: str, summary: str = ""):
    """Log `results` (an `evaluate` result) once to each tracker of `report_to`.

    Args:
        results (`dict`): what `evaluate` returned.
        report_to: tracker names (see `check_report_to`).
        project (`str`): the trackio / wandb project (wandb: `WANDB_PROJECT` wins when set, as in transformers).
        run_name (`str`): the run's name in the trackers.
        output_dir (`str`): where the tensorboard event file goes.
        summary (`str`): the markdown summary, logged as text where the tracker takes text.

    Returns:
        list[str]: the trackers logged to.
    """
    trackers = check_report_to(report_to, warn=True)
    metrics = tracked_metrics(results)
    config = {"judge": results.get("judge"), **results.get("settings", {})}
    for tracker in trackers:
        if tracker == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=output_dir)
            for name, value in metrics.items():
                writer.add_scalar(name, value, global_step=0)
            writer.add_text("eval/run_name", run_name, global_step=0)  # tensorboard names runs by folder only
            if summary:
                writer.add_text("eval/summary", summary, global_step=0)
            writer.close()
        elif tracker == "wandb":
            import wandb

            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", project),
                name=run_name,
                group=os.environ.get("WANDB_RUN_GROUP"),
                config=config,
            )
            run.log(metrics, step=0)
            run.finish()
        elif tracker == "trackio":
            import trackio

            trackio.init(project=project, name=run_name, config=config)
            trackio.log(metrics)  # its first step: 0
            trackio.finish()
    return trackers
