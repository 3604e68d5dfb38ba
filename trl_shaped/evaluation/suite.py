"""A suite: one model over several benchmarks (math, code, logic), one table with the macro average the paper reports.

A suite file is YAML: settings shared by every benchmark (any `EvalConfig` key) and a `benchmarks` list, each entry a
`name` and the `EvalConfig` keys of that benchmark (its data, columns, judge, judge_args, prompt template, n, pass_k):

    num_samples: 16
    benchmarks:
      - name: math500
        dataset_name: data/math/math500.jsonl
        prompt_column: problem
        judge: math
        prompt_template: math
      - name: mbpp
        dataset_name: data/code/test.jsonl
        judge: code
        prompt_template: code

A benchmark's settings are, from weakest to strongest: `EvalConfig`'s defaults and the `--config` recipe, the suite's
shared settings, the benchmark's entry, and the flags given on the command line (`--seed`, `--num_samples`, ...,
which hold for every benchmark). Every benchmark's config is built (and checked) before the model is loaded. A
benchmark's Pass@k defaults to the powers of two up to its own n unless `pass_k` is set in the suite or on the command
line. The model, its sampler (vLLM's engine is built once) and where the files go are the suite's (`SUITE_ONLY`).

    suite_base(base, path, explicit=...)      the command's config with the suite's whole-suite settings
    suite_configs(base, path, explicit=...)   [(name, EvalConfig)] of a suite file
    evaluate_suite(model, tokenizer, configs, load_problems)   every benchmark's `evaluate` result and the table
    suite_table(results)                      per-benchmark Avg@n, Cons@n, Pass@k; their macro average
    suite_markdown(table), write_suite(table, results, output_dir, name)
"""

import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path

from .config import EvalConfig
from .reporting import to_jsonable, write_results

# what is set for the whole suite, not per benchmark: where the files go, the model and its sampler (loaded once)
SUITE_ONLY = (
    "output_dir", "run_name", "suite", "model_name_or_path", "dtype", "trust_remote_code", "use_vllm",
    "vllm_gpu_memory_utilization", "vllm_max_model_len", "report_to", "project", "tracker_run_name",
)  # fmt: skip


def read_suite(path) -> tuple[dict, list[dict]]:
    """(shared settings, benchmark entries) of the suite file `path`.

    Raises:
        ValueError: naming `suite` and what is wrong with the file (missing, not YAML, no benchmarks, a benchmark
            without a unique name, an unknown key).
    """
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"suite: can't read {str(path)!r}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"suite: {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(content, dict) or not isinstance(content.get("benchmarks"), list) or not content["benchmarks"]:
        raise ValueError(f"suite: {str(path)!r} must be a mapping with a non-empty `benchmarks` list")
    shared = {k: v for k, v in content.items() if k != "benchmarks"}
    known = {f.name for f in fields(EvalConfig)}
    names = []
    for index, entry in enumerate(content["benchmarks"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise ValueError(f"suite: benchmark {index} of {str(path)!r} must be a mapping with a `name`")
        names.append(entry["name"])
        for key in entry:
            if key != "name" and key not in known:
                raise ValueError(f"suite: benchmark {entry['name']!r} sets {key!r}, which is not a trl-shaped eval key")
            if key in SUITE_ONLY:
                raise ValueError(f"suite: benchmark {entry['name']!r} sets {key!r}, which is set for the whole suite")
    unknown = [key for key in shared if key not in known]
    if unknown:
        raise ValueError(f"suite: {str(path)!r} sets {unknown}, which are not trl-shaped eval keys")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"suite: benchmark names must be unique, {repeated} repeat")
    bad = [n for n in names if os.sep in n or n.startswith(".")]
    if bad:
        raise ValueError(f"suite: benchmark names become file names; {bad} cannot")
    return shared, content["benchmarks"]


def suite_base(base: EvalConfig, path, explicit=()) -> EvalConfig:
    """`base` with the suite file's shared settings of the whole suite (`SUITE_ONLY`: the model's dtype, vLLM, where the
    files go ...) applied, except those given on the command line (`explicit`)."""
    from dataclasses import replace

    shared, _ = read_suite(path)
    changes = {k: v for k, v in shared.items() if k in SUITE_ONLY and k not in set(explicit) and k != "suite"}
    return replace(base, **changes) if changes else base


def suite_configs(base: EvalConfig, path, explicit=()) -> list[tuple[str, EvalConfig]]:
    """The `EvalConfig` of every benchmark of the suite file `path`, in its order.

    Args:
        base (`EvalConfig`): the command's config (defaults, `--config` recipe and command-line flags).
        path: the suite file.
        explicit: the keys given on the command line: they hold for every benchmark, over the suite's values.

    Raises:
        ValueError: from `read_suite`, or a benchmark's bad value, naming the benchmark.
    """
    base = suite_base(base, path, explicit)
    shared, entries = read_suite(path)
    explicit = set(explicit)
    configs = []
    for entry in entries:
        values = asdict(base)
        values.update({k: v for k, v in shared.items() if k not in explicit})
        values.update({k: v for k, v in entry.items() if k != "name" and k not in explicit})
        values.update({k: getattr(base, k) for k in SUITE_ONLY})
        values["suite"] = None
        if "pass_k" not in entry and "pass_k" not in shared and "pass_k" not in explicit:
            values["pass_k"] = None  # the default of this benchmark's n, not of the base config's
        values["run_name"] = entry["name"]
        try:
            configs.append((entry["name"], EvalConfig(**values)))
        except ValueError as error:
            raise ValueError(f"suite: benchmark {entry['name']!r}: {error}") from None
    if base.run_name in [name for name, _ in configs]:
        raise ValueError(f"suite: a benchmark is named {base.run_name!r} like the suite's run_name; rename one")
    return configs


def _macro(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _macro_diagnostics(results: dict) -> dict | None:
    diagnostics = [r["diagnostics"] for r in results.values() if r.get("diagnostics")]
    if not diagnostics:
        return None
    keys = [k for k in diagnostics[0] if all(isinstance(d.get(k), (int, float)) for d in diagnostics)]
    out = {k: _macro([float(d[k]) for d in diagnostics]) for k in keys if k != "num_tokens"}
    out["num_tokens"] = sum(int(d.get("num_tokens", 0)) for d in diagnostics)
    return out


def suite_table(results: dict) -> dict:
    """The suite's table from its benchmarks' `evaluate` results (name -> result, in order).

    Returns:
        dict: "benchmarks" (name -> judge, num_problems, num_samples, avg_at_n, cons_at_n, pass_at_k, mean_score,
        mean_completion_tokens), and the macro average over the benchmarks (each benchmark counts once, whatever its
        size, as the paper averages): "avg_at_n", "cons_at_n", "mean_score", "pass_at_k" (the k every benchmark
        reports), "diagnostics" (the mean of the benchmarks that have them), "num_samples" (the smallest n).
    """
    keep = ("judge", "num_problems", "num_samples", "avg_at_n", "cons_at_n", "pass_at_k", "mean_score")
    rows = {name: {k: r.get(k) for k in (*keep, "mean_completion_tokens")} for name, r in results.items()}
    common = set.intersection(*(set(r["pass_at_k"]) for r in results.values()))
    ks = sorted(common, key=int)
    return {
        "benchmarks": rows,
        "avg_at_n": _macro([r["avg_at_n"] for r in results.values()]),
        "cons_at_n": _macro([r["cons_at_n"] for r in results.values()]),
        "mean_score": _macro([r["mean_score"] for r in results.values()]),
        "pass_at_k": {k: _macro([r["pass_at_k"][k] for r in results.values()]) for k in ks},
        "num_samples": min(r["num_samples"] for r in results.values()),
        "num_problems": sum(r["num_problems"] for r in results.values()),
        "diagnostics": _macro_diagnostics(results),
    }


def suite_markdown(table: dict, run_name: str = "suite") -> str:
    """One markdown table: a row per benchmark (Avg@n, Cons@n, Pass@k) and the macro average."""
    ks = list(table["pass_at_k"])
    head = ["benchmark", "judge", "problems", "n", "Avg@n", "Cons@n", *[f"Pass@{k}" for k in ks]]
    lines = [
        f"# Evaluation suite: {run_name}",
        "",
        "Avg@n, Cons@n and Pass@k per benchmark (each benchmark's own n); the average weighs every benchmark once.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def percent(value):
        return f"{100 * value:.2f}%" if value is not None else "-"

    for name, row in table["benchmarks"].items():
        cells = [name, f"`{row['judge']}`", str(row["num_problems"]), str(row["num_samples"])]
        cells += [percent(row["avg_at_n"]), percent(row["cons_at_n"])]
        cells += [percent(row["pass_at_k"].get(k)) for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    average = ["**average**", "", str(table["num_problems"]), ""]
    average += [f"**{percent(table['avg_at_n'])}**", percent(table["cons_at_n"])]
    average += [percent(table["pass_at_k"][k]) for k in ks]
    lines.append("| " + " | ".join(average) + " |")
    return "\n".join(lines) + "\n"


def evaluate_suite(model, tokenizer, configs, load_problems, *, llm=None) -> tuple[dict, dict]:
    """Evaluate `model` on every benchmark of `configs` (`suite_configs`), one after the other.

    Args:
        model, tokenizer: the model (loaded once for the whole suite) and its tokenizer.
        configs: [(name, EvalConfig)].
        load_problems: config -> the benchmark's rows (`trl_shaped.scripts.eval.load_problems`).
        llm (*optional*): a vLLM engine shared by the benchmarks when they sample with vLLM.

    Returns:
        (results, table): name -> the benchmark's `evaluate` result, and `suite_table(results)`.
    """
    from .evaluator import evaluate

    results = {}
    for name, config in configs:
        results[name] = evaluate(model, tokenizer, load_problems(config), config, llm=llm)
    return results, suite_table(results)


def write_suite(table: dict, results: dict, output_dir, *, name: str = "suite", settings: dict | None = None) -> dict:
    """Write `<name>.json` and `<name>.md` (the table) and every benchmark's own report beside them
    (`<benchmark>.json`, `.md`, `_pass_at_k.png`, `write_results`). Returns the paths written (as strings)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {bench: {k: str(v) for k, v in write_results(r, out, name=bench).items()} for bench, r in results.items()}
    document = {"run_name": name, **table, "settings": settings or {}, "files": files}
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md"}
    paths["json"].write_text(json.dumps(to_jsonable(document), indent=2, allow_nan=False))
    paths["markdown"].write_text(suite_markdown(table, name))
    return {**{k: str(v) for k, v in paths.items()}, "benchmarks": files}
