"""`trl-shaped eval`: Avg@n / Cons@n / Pass@k and distribution diagnostics of a model on a dataset split.

```bash
trl-shaped eval --model_name_or_path runs/rl_precision --dataset_name data/test.jsonl --num_samples 64
trl-shaped eval --config recipes/eval_math.yaml --model_name_or_path runs/rl_math --judge math --report_to tensorboard
accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/eval.py --config recipes/eval_paper.yaml
trl-shaped eval --suite recipes/eval_suite.yaml --model_name_or_path runs/rl_precision --num_samples 16
```

With `--suite FILE` (or a `--config` file that has a `benchmarks` list) the model is evaluated on every benchmark of
the suite (`trl_shaped.evaluation.suite`) and one table is written with the macro average, each benchmark's report
beside it; flags given on the command line hold for every benchmark.

Under `accelerate launch` every process loads the model on its own device and evaluates its share of the problems;
the results are gathered and the main process alone writes the files (the same files a single process writes) and
logs the metrics to the trackers of `--report_to`.
"""

import logging
import sys
from pathlib import Path

import torch

from trl_shaped.evaluation import EvalConfig, evaluate, markdown_summary, write_results
from trl_shaped.evaluation.sharding import current_shard, launched, partial_state
from trl_shaped.evaluation.suite import evaluate_suite, suite_base, suite_configs, write_suite
from trl_shaped.evaluation.tracking import log_evaluation
from trl_shaped.scripts import make_trl_parser, parse_or_exit, split_config_flag
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


def explicit_keys(argv) -> set[str]:
    """The `EvalConfig` keys given as flags in `argv` (``--seed 1``, ``--seed=1``, ``--no_progress``)."""
    keys = set()
    for arg in argv:
        if arg.startswith("--") and arg not in ("--config", "--suite"):
            key = arg[2:].split("=", 1)[0]
            keys.add(key[3:] if key.startswith("no_") else key)
    return keys


def suite_from_config(argv: list[str]) -> list[str]:
    """`argv` with a `--config FILE` that is a suite (a YAML mapping with a `benchmarks` list) given as `--suite`."""
    import yaml

    if "--config" not in argv or "--suite" in argv:
        return argv
    index = argv.index("--config")
    try:
        content = yaml.safe_load(Path(argv[index + 1]).read_text(encoding="utf-8"))
    except (IndexError, OSError, yaml.YAMLError, UnicodeDecodeError):
        return argv  # parse_or_exit reports the problem
    if isinstance(content, dict) and "benchmarks" in content:
        return argv[:index] + ["--suite"] + argv[index + 1 :]
    return argv


def _log_launched_shares() -> None:
    if launched():  # say which share of the problems each process takes
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        evaluation_logger = logging.getLogger("trl_shaped.evaluation")
        evaluation_logger.addHandler(handler)
        evaluation_logger.setLevel(logging.INFO)


def main_suite(config: EvalConfig, explicit=()) -> dict:
    """`main` for a suite: the model loaded once, every benchmark evaluated, one table written (`write_suite`) and its
    macro average logged to `config.report_to`.

    Returns:
        the table (`trl_shaped.evaluation.suite.suite_table`) with "results" (each benchmark's `evaluate` result) and
        "files" added.
    """
    _log_launched_shares()
    config = suite_base(config, config.suite, explicit)
    configs = suite_configs(config, config.suite, explicit)
    model, tokenizer = load_model(config)
    llm = None
    if config.use_vllm:  # one engine for every benchmark
        from trl_shaped.evaluation.vllm_sampling import build_vllm_engine

        llm = build_vllm_engine(
            config.model_name_or_path,
            dtype=config.dtype,
            seed=config.seed,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            max_model_len=config.vllm_max_model_len,
            trust_remote_code=config.trust_remote_code,
        )
    results, table = evaluate_suite(model, tokenizer, configs, load_problems, llm=llm)
    out = f"{config.output_dir}/{config.run_name}"
    files = {"json": f"{out}.json", "markdown": f"{out}.md"}
    if current_shard().is_main:
        settings = {"suite": config.suite, **{name: c.run_name for name, c in configs}}
        files = write_suite(table, results, config.output_dir, name=config.run_name, settings=settings)
        summary = (Path(files["markdown"])).read_text()
        print(summary)
        log_evaluation(
            table,
            config.report_to,
            project=config.project,
            run_name=config.tracker_run_name or config.run_name,
            output_dir=config.output_dir,
            summary=summary,
        )
    if launched():
        torch.distributed.barrier()
    return {**table, "results": results, "files": files}


def main(config: EvalConfig, explicit=()) -> dict:
    """Load the model (hub name or local path), tokenizer and dataset of `config`, evaluate, write the files and log
    the metrics to `config.report_to` (on the main process only when launched). With `config.suite`, `main_suite`.

    Returns:
        the result of `evaluate` (on every process), with "files" (the paths written, as strings) added.
    """
    if config.suite:
        return main_suite(config, explicit)
    _log_launched_shares()
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
    """Parse `argv` (`--config file.yaml` or `--suite file.yaml` plus overrides), evaluate, and write the files. Bad
    values, a bad suite included, are usage errors (exit status 2) before the model is loaded."""
    argv = suite_from_config(split_config_flag(list(sys.argv[1:] if argv is None else argv)))
    parser = make_parser(prog)
    (config,) = parse_or_exit(parser, argv, required={"model_name_or_path": REQUIRED["model_name_or_path"]})
    explicit = explicit_keys(argv)
    if config.suite:
        try:
            suite_configs(config, config.suite, explicit)
        except ValueError as error:
            parser.error(str(error))
    elif config.dataset_name in (None, ""):
        parser.error(f"argument --dataset_name is required: {REQUIRED['dataset_name']} (or --suite FILE)")
    return main(config, explicit)


if __name__ == "__main__":
    run()
