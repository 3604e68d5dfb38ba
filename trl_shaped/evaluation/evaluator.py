"""`evaluate`: sample, score and diagnose a model on a list of problems, across processes when launched."""

from dataclasses import asdict

from transformers.utils import logging

from ..prompts import build_prompt
from ..rewards.judges import get_judge
from .config import EvalConfig
from .heldout import combine_text_sums, text_sums
from .metrics import (
    check_judge_on_row,
    judge_scores,
    judge_vote_keys,
    missing_judge_columns,
    resolve_judge,
    score_completions,
)
from .sampling import prompts_per_call, sample_completions
from .sharding import block_range, current_shard, gather_in_order
from .vllm_sampling import build_vllm_engine, sample_completions_vllm

logger = logging.get_logger(__name__)


def evaluate(
    model, tokenizer, problems, config: EvalConfig, *, llm=None, shard: bool | None = None, judge=None
) -> dict:
    """Sample, score and (optionally) diagnose `model` on `problems`.

    Under `accelerate launch` every process samples, scores and diagnoses its share of the problems (whole batches,
    see `sharding`), the shares are gathered, and every process returns the full result, equal to a one-process
    run: problem i is sampled from seeds derived from (config.seed, i) only. The judge (`config.judge`) is called
    once per process, for all of its completions, with the problems' columns as TRL passes them to a reward.

    Args:
        model, tokenizer: the causal LM (on this process's device) and its tokenizer.
        problems: rows (a list of dicts or a `datasets.Dataset`) with `config.prompt_column` and the columns
            `config.judge` reads (exact, math: `config.answer_column`, which reaches the judge as `answer`; code:
            `tests`); `config.completion_column`, when present, is the held-out text of the diagnostics (scored after
            its prompt).
        config (`EvalConfig`): sampling and scoring settings.
        llm (*optional*): a `vllm.LLM` to sample with when `config.use_vllm`; built from `config.model_name_or_path`
            (else `model.name_or_path`) when not given.
        shard (`bool`, *optional*): False evaluates everything in this process even when it is one of several;
            None (default) splits the work when launched.
        judge (*optional*): a reward function to score with instead of `config.judge` / `config.judge_args`.

    The prompts are the rows' prompt column through `config.template` (`trl_shaped.prompts.build_prompt`), as GRPO
    builds them; the judge gets what GRPO hands a reward function (conversational completions when the prompts are
    chat messages, `completion_ids`, `trainer_state`) and is called once on the first row before any sampling.

    Returns:
        dict: "run_name", "settings" (the sampling settings and the judge), "judge", "avg_at_n", "cons_at_n",
        "pass_at_k", "mean_score", "mean_completion_tokens", "diagnostics" (None when off or without reference text;
        NaN values with a warning when no token could be scored), "num_problems", "num_samples" and "per_problem"
        (with the completions and their scores).
    """
    rows = [dict(r) for r in problems]
    if config.max_problems is not None:
        rows = rows[: config.max_problems]
    if not rows:
        raise ValueError("problems must not be empty")
    if config.prompt_column not in rows[0]:
        raise ValueError(f"problems have no column {config.prompt_column!r}; columns: {sorted(rows[0])}")
    judge = resolve_judge(judge) if judge is not None else get_judge(config.judge, config.judge_args)
    template = config.template
    raw_prompts = [r.get(config.prompt_column) for r in rows]
    _check_column(raw_prompts, config.prompt_column, (str, list), "a string or a list of chat messages")
    # the prompts GRPO trains on: the template's system prompt, instruction and chat template (trl_shaped.prompts)
    prompts = [build_prompt(p, template, tokenizer) for p in raw_prompts]
    conversational = isinstance(prompts[0], list)
    columns = judge_columns(rows, config)
    columns["prompts"] = prompts
    missing = missing_judge_columns(judge, columns)
    if missing:
        named = [config.answer_column if name == "answer" else name for name in missing]
        raise ValueError(
            f"problems have no column {named[0]!r}, which judge {config.judge!r} reads; columns: {sorted(rows[0])}"
        )
    with_reference = config.diagnostics and config.completion_column in rows[0]
    if with_reference:
        _check_column([r.get(config.completion_column) for r in rows], config.completion_column, str, "a string")
    reference = rows[0].get(config.completion_column)
    check_judge_on_row(
        judge, columns, conversational=conversational, probe=reference if isinstance(reference, str) else ""
    )
    process = current_shard(shard)

    block = prompts_per_call(config.num_samples, config.temperature, config.batch_size)
    own_problems = block_range(len(rows), block, process)
    if process.num_processes > 1:
        logger.info(
            "evaluate: process %d of %d samples problems [%d, %d) of %d",
            process.process_index, process.num_processes, own_problems.start, own_problems.stop, len(rows),
        )  # fmt: skip
    sampling = dict(
        num_samples=config.num_samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        first_index=own_problems.start,
        progress=config.progress and process.is_main,
        return_lengths=True,
        stop_sequences=template.stop_sequences,
        return_ids=True,
    )
    if config.use_vllm:
        if llm is None:
            path = config.model_name_or_path or getattr(model, "name_or_path", None)
            if not path:
                raise ValueError("use_vllm=True needs model_name_or_path (a hub name or a saved directory) for vLLM")
            llm = build_vllm_engine(
                path,
                dtype=config.dtype,
                seed=config.seed,
                gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                max_model_len=config.vllm_max_model_len,
                trust_remote_code=config.trust_remote_code,
            )
        local = sample_completions_vllm(llm, tokenizer, prompts[own_problems.start : own_problems.stop], **sampling)
    else:
        local = sample_completions(
            model, tokenizer, prompts[own_problems.start : own_problems.stop], batch_size=config.batch_size, **sampling
        )
    own_columns = {name: values[own_problems.start : own_problems.stop] for name, values in columns.items()}
    local_scores = judge_scores(
        local[0], own_columns, judge=judge, conversational=conversational, completion_ids=local[2]
    )
    # the code judge's keys come from the runs just scored
    local_keys = judge_vote_keys(judge, local[0], own_columns, conversational=conversational)
    sampled = gather_in_order(list(zip(local[0], local[1], local_scores, local_keys, strict=True)), process, len(rows))
    completions, lengths, scores, keys = ([s[i] for s in sampled] for i in range(4))

    results = score_completions(
        completions,
        pass_k=config.pass_k,
        judge=judge,
        columns=columns,
        scores=scores,
        keys=keys,
        conversational=conversational,
    )
    for record, samples in zip(results["per_problem"], completions, strict=True):
        record["completions"] = samples
    all_lengths = [length for row in lengths for length in row]
    results["mean_completion_tokens"] = sum(all_lengths) / len(all_lengths)

    results["diagnostics"] = None
    if with_reference:
        own_texts = block_range(len(rows), config.diagnostics_batch_size, process)
        local_sums = text_sums(
            model,
            tokenizer,
            [r[config.completion_column] for r in rows[own_texts.start : own_texts.stop]],
            prompts=prompts[own_texts.start : own_texts.stop],
            top_k=config.diagnostics_top_k,
            batch_size=config.diagnostics_batch_size,
            max_length=config.diagnostics_max_length,
        )
        sums = gather_in_order(local_sums, process, len(rows))
        results["diagnostics"] = combine_text_sums(sums, warn=process.is_main)
    # what the numbers depend on; where they are written and logged is not part of it
    excluded = ("output_dir", "progress", "report_to", "project", "tracker_run_name")
    settings = {k: v for k, v in asdict(config).items() if k not in excluded}
    return {"run_name": config.run_name, "settings": settings, **results}


def judge_columns(rows: list[dict], config: EvalConfig) -> dict[str, list]:
    """What the judge gets besides the completions, one value per problem, as GRPO passes them to a reward function
    after `trl_shaped.prompts.format_rows`: the prompts as `prompts`, every column but `prompt` and `completion`
    (TRL's rule: a `problem` prompt column or a `solution` reference reaches the judge in both stages), and the answer
    column (as text) under the name `answer`."""
    skip = {"prompt", "completion", "answer"}
    columns = {name: [r.get(name) for r in rows] for name in rows[0] if name not in skip}
    columns["prompts"] = [r.get(config.prompt_column) for r in rows]
    if config.answer_column in rows[0]:
        columns["answer"] = [
            None if r.get(config.answer_column) is None else str(r[config.answer_column]) for r in rows
        ]
    return columns


def _check_column(values: list, column: str, types, allowed: str) -> None:
    bad = [i for i, v in enumerate(values) if not isinstance(v, types)]
    if bad:
        raise ValueError(
            f"column {column!r} must hold {allowed} in every row; rows {bad[:5]} hold "
            f"{sorted({type(values[i]).__name__ for i in bad})}"
        )
