"""`trl-shaped eval`: Avg@n / Cons@n / Pass@k and distribution diagnostics of a model on a dataset split.

```bash
trl-shaped eval --model_name_or_path runs/rl_precision --dataset_name data/test.jsonl --num_samples 64
trl-shaped eval --config recipes/eval_math.yaml --model_name_or_path runs/rl_math --judge math --report_to tensorboard
accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/eval.py --config recipes/eval_paper.yaml
```

Under `accelerate launch` every process loads the model on its own device and evaluates its share of the problems;
the results are gathered and the main process alone writes the files (the same files a single process writes) and
logs the metrics to the trackers of `--report_to`.
"""

import logging

import torch

from trl_shaped.evaluation import EvalConfig, evaluate, markdown_summary, write_results
from trl_shaped.evaluation.sharding import current_shard, launched, partial_state
from trl_shaped.evaluation.tracking import log_evaluation
from trl_shaped.scripts import make_trl_parser, run_script
from trl_shaped.scripts.data import load_split

# What the command line cannot run without (EvalConfig leaves them optional: `evaluate` takes a model and rows).
REQUIRED = {
    "model_name_or_path": "a hub name or a local model directory",
    "dataset_name": "a hub name, a local directory or a data file",
}


def make_parser(prog: str | None = None):
    return make_trl_parser((EvalConfig,), prog)


def load_problems(config: EvalConfig):
    """The evaluation rows of `config.dataset_name` (hub name, local directory or data file), split applied."""
    if config.dataset_name is None:
        raise ValueError("dataset_name is required: a hub name, a local directory or a data file")
    return load_split(config.dataset_name, config.dataset_split, name=config.dataset_config)


def load_model(config: EvalConfig):
    """(model, tokenizer) of `config.model_name_or_path`, the model on this process's device and in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.model_name_or_path is None:
        raise ValueError("model_name_or_path is required: a hub name or a local directory")
    dtype = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        config.model_name_or_path, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    if launched():  # the device accelerate gives this rank
        device = partial_state().device
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def main(config: EvalConfig) -> dict:
    """Load the model (hub name or local path), tokenizer and dataset of `config`, evaluate, write the files and log
    the metrics to `config.report_to` (on the main process only when launched).

    Returns:
        the result of `evaluate` (on every process), with "files" (the paths written, as strings) added.
    """
    if launched():  # say which share of the problems each process takes
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        evaluation_logger = logging.getLogger("trl_shaped.evaluation")
        evaluation_logger.addHandler(handler)
        evaluation_logger.setLevel(logging.INFO)
    problems = load_problems(config)
    model, tokenizer = load_model(config)
    results = evaluate(model, tokenizer, problems, config)
    if current_shard().is_main:
        paths = write_results(results, config.output_dir, name=config.run_name)
        summary = markdown_summary(results)
        print(summary)
        log_evaluation(
            results,
            config.report_to,
            project=config.project,
            run_name=config.tracker_run_name or config.run_name,
            output_dir=config.output_dir,
            summary=summary,
        )
    else:
        out = config.output_dir
        paths = {k: f"{out}/{config.run_name}{s}" for k, s in (("json", ".json"), ("markdown", ".md"))}
        paths["pass_at_k_plot"] = f"{out}/{config.run_name}_pass_at_k.png"
    if launched():  # the files exist when any process returns
        torch.distributed.barrier()
    results["files"] = {k: str(v) for k, v in paths.items()}
    return results


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides), evaluate, and write the files."""
    return run_script(make_parser, main, argv, prog, required=REQUIRED)


if __name__ == "__main__":
    run()
