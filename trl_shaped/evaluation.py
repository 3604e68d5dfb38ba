"""Evaluation: sample n completions per problem, score them, and measure the model's distribution on held-out text.

The metrics are the paper's (METHOD.md section 4): Avg@n (mean accuracy over n samples), Cons@n (majority vote)
and Pass@k with the unbiased estimator, plus the distribution diagnostics of METHOD.md section 5 on held-out text.

Public signatures (the CLI's `trl-shaped eval` and the demo call these):

    pass_at_k(n, c, k) -> float
        Unbiased pass@k = 1 - C(n - c, k) / C(n, k) for n samples of which c are correct.
    majority_vote(answers) -> str | None
        The most frequent non-None answer; ties go to the answer whose first occurrence comes first.
    cons_at_n(answers, correct) -> float
        1.0 if the majority answer (as above) is correct, else 0.0 (also 0.0 when no sample has an answer).
        `correct[i]` says whether sample i is correct; samples with the same answer must agree on it.
    sample_completions(model, tokenizer, prompts, *, num_samples, temperature=0.7, top_p=0.95, max_new_tokens=256,
                       batch_size=64, seed=0, progress=True, return_lengths=False) -> list[list[str]]
        n sampled completions per prompt (str prompts, or lists of chat messages rendered with the chat template);
        with return_lengths, also their lengths in tokens. temperature=0 is greedy.
    score_completions(completions, answers, *, pass_k=(1,)) -> dict
        Extracts answers with `trl_shaped.rewards.extract_answer`, judges them with `exact_answer_reward` and
        returns {"avg_at_n", "cons_at_n", "pass_at_k": {k: value}, "per_problem": [...]}.
    text_diagnostics(model, tokenizer, texts, *, prompts=None, top_k=100, batch_size=8, max_length=1024) -> dict
        Token-weighted means of nll, entropy, topk_entropy, topk_mass, tail_mass, target_prob, target_in_topk,
        top1_accuracy, plus perplexity = exp(nll) and num_tokens. With `prompts`, only the text after each
        prompt is scored (as a completion-only SFT loss would).
    evaluate(model, tokenizer, problems, config: EvalConfig) -> dict
        Everything above on a list of rows (dicts or a `datasets.Dataset`) with a prompt and an answer column.
    write_results(results, output_dir, *, name="eval") -> dict[str, pathlib.Path]
        `<name>.json`, `<name>.md` and `<name>_pass_at_k.png` in `output_dir`.
    plot_pass_at_k(runs, path) / plot_entropy_per_preset(runs, path)
        PNG comparisons of several runs: `runs` maps a label (e.g. a preset name) to a result of `evaluate`.
    load_problems(config: EvalConfig) -> datasets.Dataset
        The rows of config.dataset_name (hub name, local directory or data file) and config.dataset_split.
    evaluate_main(config: EvalConfig) -> dict
        Loads the model and tokenizer (hub name or local path) and the dataset, evaluates, writes the files.

All accuracies are fractions in [0, 1]; the markdown summary prints them as percentages.
"""

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `n` samples of which `c` are correct: 1 - C(n - c, k) / C(n, k).

    Uses the product form 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never builds the (huge) binomials.

    Args:
        n (`int`): samples drawn, n >= 1.
        c (`int`): correct samples, 0 <= c <= n.
        k (`int`): the budget, 1 <= k <= n.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer, None answers not voting.

    Tie rule (deterministic): among the answers with the highest count, the one that occurs first in `answers`.
    Returns None when no answer is given at all.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def cons_at_n(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Cons@n of one problem: 1.0 if the majority answer is correct, else 0.0.

    Args:
        answers: the extracted (normalised) answer of each sample, None where none was found.
        correct: whether each sample is correct, same length as `answers`.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct must have the same length, got {len(answers)} and {len(correct)}")
    winner = majority_vote(answers)
    if winner is None:
        return 0.0
    return float(bool(correct[list(answers).index(winner)]))


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


def _render_prompt(tokenizer, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    # conversational prompt: a list of {"role", "content"} messages
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: Sequence,
    *,
    num_samples: int,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    return_lengths: bool = False,
):
    """Sample `num_samples` completions per prompt with `model.generate` (left padding, batched).

    Args:
        model: a causal LM (`transformers` or peft-wrapped).
        tokenizer: its tokenizer; needs a pad token (the eos token is used when it has none).
        prompts: strings, or lists of chat messages (rendered with the chat template, generation prompt added).
        num_samples (`int`): completions per prompt (n).
        temperature (`float`): sampling temperature; 0 means greedy (the one greedy answer is repeated n times).
        top_p (`float`): nucleus sampling threshold in (0, 1].
        max_new_tokens (`int`): generation budget per completion.
        batch_size (`int`): sequences per `generate` call (prompts per call = batch_size // num_samples, at least 1).
        seed (`int`): seeds torch before sampling so that a run is reproducible.
        progress (`bool`): show a tqdm progress bar over prompts.
        return_lengths (`bool`): also return the completions' lengths in tokens (eos included when generated).

    Returns:
        `list[list[str]]` (one list of n decoded completions per prompt, special tokens removed), and with
        `return_lengths` a matching `list[list[int]]`.
    """
    from tqdm.auto import tqdm

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    greedy = temperature == 0
    per_prompt = 1 if greedy else num_samples
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    texts = [_render_prompt(tokenizer, p) for p in prompts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    # Left padding so that every row's generation starts right after its own prompt.
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # many base-model tokenizers have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    prompts_per_call = max(1, batch_size // per_prompt)
    # top_k=0 switches off the top-k filter a model's generation_config may carry (often 50): only top-p applies.
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    completions, lengths = [], []
    try:
        bar = tqdm(total=len(texts), desc="sampling", unit="prompt", disable=not progress)
        for start in range(0, len(texts), prompts_per_call):
            chunk = texts[start : start + prompts_per_call]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            rows = [[] for _ in chunk]
            row_lengths = [[] for _ in chunk]
            remaining = per_prompt
            while remaining > 0:  # when n > batch_size one prompt takes several calls
                m = min(remaining, max(1, batch_size // len(chunk)))
                out = model.generate(
                    **enc,
                    **sampling,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=m,
                    pad_token_id=pad_id,
                    eos_token_id=eos_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                for j, seq in enumerate(new):
                    stop = (seq == eos_id).nonzero() if eos_id is not None else seq[:0]
                    length = int(stop[0]) + 1 if len(stop) else len(seq)  # no eos: it ran to max_new_tokens
                    rows[j // m].append(tokenizer.decode(seq[:length], skip_special_tokens=True))
                    row_lengths[j // m].append(length)
                remaining -= m
            if greedy:
                rows = [r * num_samples for r in rows]
                row_lengths = [r * num_samples for r in row_lengths]
            completions.extend(rows)
            lengths.extend(row_lengths)
            bar.update(len(chunk))
        bar.close()
    finally:
        tokenizer.padding_side, tokenizer.pad_token = old_side, old_pad
        model.train(was_training)
    return (completions, lengths) if return_lengths else completions


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


def _answer_key(answer: str | None) -> str | None:
    """The form answers are grouped by for the majority vote: the rewards' normalisation when it has one."""
    if answer is None:
        return None
    from trl_shaped import rewards

    normalize = getattr(rewards, "normalize_answer", None)
    return normalize(answer) if normalize is not None else answer.strip()


def score_completions(
    completions: Sequence[Sequence[str]], answers: Sequence[str], *, pass_k: Sequence[int] = (1,)
) -> dict:
    """Avg@n, Cons@n and Pass@k of sampled completions against gold answers.

    A sample is correct when `trl_shaped.rewards.exact_answer_reward` gives it a positive reward, so evaluation
    and RL judge answers the same way.

    Args:
        completions: for each problem, its n completions (same n for all problems).
        answers: the gold answer of each problem.
        pass_k: the k of Pass@k, each in [1, n].

    Returns:
        dict with "num_problems", "num_samples", "avg_at_n", "cons_at_n", "pass_at_k" ({str(k): value}) and
        "per_problem" (a list of {"answer", "num_correct", "majority_answer", "cons_correct", "extracted"}).
    """
    from trl_shaped.rewards import exact_answer_reward, extract_answer

    if len(completions) != len(answers):
        raise ValueError(
            f"completions and answers must have the same length, got {len(completions)} and {len(answers)}"
        )
    if not completions:
        raise ValueError("completions must not be empty")
    n = len(completions[0])
    if any(len(c) != n for c in completions):
        raise ValueError("every problem must have the same number of completions")
    for k in pass_k:
        if not 1 <= k <= n:
            raise ValueError(f"pass_k values must be in [1, num_samples={n}], got {k}")
    per_problem = []
    for samples, gold in zip(completions, answers, strict=True):
        rewards = exact_answer_reward(list(samples), [gold] * n)
        correct = [r is not None and r > 0 for r in rewards]
        extracted = [extract_answer(s) for s in samples]
        keys = [_answer_key(a) for a in extracted]
        per_problem.append(
            {
                "answer": gold,
                "num_correct": sum(correct),
                "majority_answer": majority_vote(keys),
                "cons_correct": cons_at_n(keys, correct) == 1.0,
                "extracted": extracted,
            }
        )
    num = len(per_problem)
    return {
        "num_problems": num,
        "num_samples": n,
        "avg_at_n": sum(p["num_correct"] / n for p in per_problem) / num,
        "cons_at_n": sum(p["cons_correct"] for p in per_problem) / num,
        "pass_at_k": {str(k): sum(pass_at_k(n, p["num_correct"], k) for p in per_problem) / num for k in pass_k},
        "per_problem": per_problem,
    }


# ----------------------------------------------------------------------------------------------------------------
# Distribution diagnostics on held-out text
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def text_diagnostics(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    prompts: Sequence[str] | None = None,
    top_k: int = 100,
    batch_size: int = 8,
    max_length: int | None = 1024,
    progress: bool = False,
) -> dict:
    """The distribution diagnostics of METHOD.md section 5 on held-out text, averaged over scored tokens.

    Each text is tokenised without special tokens; when `prompts` is given, `texts[i]` is the completion of
    `prompts[i]`, the two are tokenised separately and concatenated with the eos token appended (as TRL's SFT
    does for prompt-completion data), and only the completion tokens are scored.

    Args:
        model, tokenizer: the causal LM and its tokenizer.
        texts: the held-out texts (or completions, with `prompts`).
        prompts: optional prompts; see above.
        top_k (`int`): the k of the top-k set K_t.
        batch_size (`int`): sequences per forward pass.
        max_length (`int`, *optional*): truncate sequences to this many tokens (None: no truncation).
        progress (`bool`): show a tqdm progress bar.

    Returns:
        dict of floats: nll, perplexity, entropy, topk_entropy, topk_mass, tail_mass, target_prob,
        target_in_topk, top1_accuracy (token-weighted means) and num_tokens.
    """
    from tqdm.auto import tqdm

    from trl_shaped import distribution_stats

    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(f"prompts and texts must have the same length, got {len(prompts)} and {len(texts)}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sequences = []  # (input_ids, first scored position)
    for i, text in enumerate(texts):
        if prompts is None:
            ids, start = tokenizer(text, add_special_tokens=False)["input_ids"], 1
        else:
            prompt_ids = tokenizer(_render_prompt(tokenizer, prompts[i]), add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if tokenizer.eos_token_id is not None and (
                not completion_ids or completion_ids[-1] != tokenizer.eos_token_id
            ):
                completion_ids = completion_ids + [tokenizer.eos_token_id]
            ids, start = prompt_ids + completion_ids, max(1, len(prompt_ids))
        if max_length is not None:
            ids = ids[:max_length]
        if len(ids) > start:
            sequences.append((ids, start))
    if not sequences:
        raise ValueError("no text has a token to score (empty texts, or everything truncated by max_length)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = {}
    try:
        for b in tqdm(range(0, len(sequences), batch_size), desc="diagnostics", disable=not progress):
            batch = sequences[b : b + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for r, (ids, start) in enumerate(batch):
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention_mask[r, : len(ids)] = 1
                labels[r, start : len(ids)] = torch.tensor(ids[start:])
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            # logits[t] scores token t + 1: align before calling the (no-shift) diagnostics
            stats = distribution_stats(logits[:, :-1], labels[:, 1:].to(device), top_k=top_k, reduction="sum")
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
    finally:
        model.train(was_training)
    count = totals.pop("num_tokens")
    result = {key: value / count for key, value in totals.items()}
    result["perplexity"] = math.exp(result["nll"])
    result["num_tokens"] = int(count)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Config and entry points
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Configuration of `trl-shaped eval` and `evaluate`.

    Args:
        model_name_or_path (`str`, *optional*): hub name or local directory of the model (for `evaluate_main`).
        dataset_name (`str`, *optional*): hub name, local directory, or a data file (.json/.jsonl/.csv/.parquet/.txt).
        dataset_config (`str`, *optional*): configuration name passed to `datasets.load_dataset`.
        dataset_split (`str`): split to evaluate.
        prompt_column, answer_column, completion_column (`str`): column names; the completion column (optional in
            the data) gives the held-out text of the diagnostics.
        max_problems (`int`, *optional*): evaluate only the first problems.
        num_samples (`int`): n, completions per problem.
        temperature, top_p (`float`): sampling parameters (the paper: 0.7, 0.95 for base models).
        max_new_tokens (`int`): generation budget.
        pass_k (`list[int]`, *optional*): the k of Pass@k; default powers of two up to n, and n.
        batch_size (`int`): sequences per generate call.
        diagnostics (`bool`): compute the distribution diagnostics on the held-out text.
        diagnostics_top_k (`int`), diagnostics_batch_size (`int`), diagnostics_max_length (`int`).
        seed (`int`), dtype (`str`), trust_remote_code (`bool`), output_dir (`str`), run_name (`str`),
        progress (`bool`): see the field help.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub name or local path of the model."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub name, local directory, or data file (.json/.jsonl/.csv/.parquet/.txt) to evaluate."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="test", metadata={"help": "Dataset split to evaluate."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold answers."})
    completion_column: str = field(
        default="completion",
        metadata={"help": "Column holding reference completions: the held-out text of the diagnostics, if present."},
    )
    max_problems: int | None = field(default=None, metadata={"help": "Evaluate only the first this many problems."})
    num_samples: int = field(default=16, metadata={"help": "Completions sampled per problem (n of Avg@n, Cons@n)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold, in (0, 1]."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum tokens generated per completion."})
    pass_k: list[int] | None = field(
        default=None, metadata={"help": "k values of Pass@k, each in [1, num_samples]. Default: 1, 2, 4, ..., n."}
    )
    batch_size: int = field(default=64, metadata={"help": "Sequences per generate call."})
    diagnostics: bool = field(default=True, metadata={"help": "Compute distribution diagnostics on held-out text."})
    diagnostics_top_k: int = field(default=100, metadata={"help": "k of the top-k set of the diagnostics."})
    diagnostics_batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass of the diagnostics."})
    diagnostics_max_length: int | None = field(
        default=1024, metadata={"help": "Truncate diagnostic sequences to this many tokens."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed of the sampling."})
    dtype: str = field(
        default="float32",
        metadata={"help": "Model dtype when loading.", "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})
    output_dir: str = field(default="eval_results", metadata={"help": "Where the JSON, markdown and plots go."})
    run_name: str = field(default="eval", metadata={"help": "Label of this run in file names and plots."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        checks = [
            ("num_samples", self.num_samples >= 1, ">= 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("diagnostics_top_k", self.diagnostics_top_k >= 1, ">= 1"),
            ("diagnostics_batch_size", self.diagnostics_batch_size >= 1, ">= 1"),
            ("max_problems", self.max_problems is None or self.max_problems >= 1, ">= 1 or None"),
            (
                "diagnostics_max_length",
                self.diagnostics_max_length is None or self.diagnostics_max_length >= 2,
                ">= 2",
            ),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if self.pass_k is None:
            self.pass_k = sorted(
                {2**i for i in range(self.num_samples.bit_length()) if 2**i <= self.num_samples} | {self.num_samples}
            )
        bad = [k for k in self.pass_k if not 1 <= int(k) <= self.num_samples]
        if bad:
            raise ValueError(f"pass_k values must be in [1, num_samples={self.num_samples}], got {bad}")
        self.pass_k = sorted({int(k) for k in self.pass_k})


def evaluate(model, tokenizer, problems, config: EvalConfig) -> dict:
    """Sample, score and (optionally) diagnose `model` on `problems`.

    Args:
        model, tokenizer: the causal LM and its tokenizer.
        problems: rows (a list of dicts or a `datasets.Dataset`) with `config.prompt_column` and
            `config.answer_column`; `config.completion_column`, when present, is the held-out text of the
            diagnostics (scored after its prompt).
        config (`EvalConfig`): sampling and scoring settings.

    Returns:
        dict: "run_name", "settings" (the sampling settings), "avg_at_n", "cons_at_n", "pass_at_k",
        "mean_completion_tokens", "diagnostics" (None when off or without reference text), "num_problems",
        "num_samples" and "per_problem" (with the completions).
    """
    rows = [dict(r) for r in problems]
    if config.max_problems is not None:
        rows = rows[: config.max_problems]
    if not rows:
        raise ValueError("problems must not be empty")
    for column in (config.prompt_column, config.answer_column):
        if column not in rows[0]:
            raise ValueError(f"problems have no column {column!r}; columns: {sorted(rows[0])}")
    prompts = [r[config.prompt_column] for r in rows]
    completions, lengths = sample_completions(
        model,
        tokenizer,
        prompts,
        num_samples=config.num_samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=config.progress,
        return_lengths=True,
    )
    results = score_completions(completions, [str(r[config.answer_column]) for r in rows], pass_k=config.pass_k)
    for record, samples in zip(results["per_problem"], completions, strict=True):
        record["completions"] = samples
    all_lengths = [length for row in lengths for length in row]
    results["mean_completion_tokens"] = sum(all_lengths) / len(all_lengths)
    results["diagnostics"] = None
    if config.diagnostics and config.completion_column in rows[0]:
        results["diagnostics"] = text_diagnostics(
            model,
            tokenizer,
            [r[config.completion_column] for r in rows],
            prompts=prompts,
            top_k=config.diagnostics_top_k,
            batch_size=config.diagnostics_batch_size,
            max_length=config.diagnostics_max_length,
        )
    settings = {k: v for k, v in asdict(config).items() if k not in ("output_dir", "progress")}
    return {"run_name": config.run_name, "settings": settings, **results}


def _markdown(results: dict) -> str:
    s = results.get("settings", {})
    lines = [
        f"# Evaluation: {results.get('run_name', 'eval')}",
        "",
        f"{results['num_problems']} problems, n = {results['num_samples']} samples each"
        + (f", temperature {s['temperature']}, top-p {s['top_p']}" if "temperature" in s else "")
        + ".",
        "",
        "| metric | value |",
        "|---|---|",
        f"| Avg@{results['num_samples']} | {100 * results['avg_at_n']:.2f}% |",
        f"| Cons@{results['num_samples']} | {100 * results['cons_at_n']:.2f}% |",
    ]
    lines += [f"| Pass@{k} | {100 * v:.2f}% |" for k, v in results["pass_at_k"].items()]
    if "mean_completion_tokens" in results:
        lines.append(f"| mean completion length (tokens) | {results['mean_completion_tokens']:.1f} |")
    diag = results.get("diagnostics")
    if diag:
        lines += ["", f"Distribution diagnostics on held-out text ({diag['num_tokens']} tokens):", ""]
        lines += ["| diagnostic | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in diag.items() if k != "num_tokens"]
    return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: str | os.PathLike, *, name: str = "eval") -> dict:
    """Write `<name>.json`, `<name>.md` (a summary table) and `<name>_pass_at_k.png` into `output_dir`.

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
    paths["json"].write_text(json.dumps(results, indent=2, default=str))
    paths["markdown"].write_text(_markdown(results))
    plot_pass_at_k({results.get("run_name", name): results}, paths["pass_at_k_plot"])
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def plot_pass_at_k(runs: dict, path: str | os.PathLike) -> Path:
    """Pass@k against k (log2 axis), one line per run.

    Args:
        runs: label -> result of `evaluate` (or any dict with "pass_at_k": {k: value}).
        path: the PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in runs.items():
        ks = sorted(int(k) for k in result["pass_at_k"])
        ax.plot(ks, [100 * result["pass_at_k"][str(k)] for k in ks], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title("Pass@k")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_entropy_per_preset(runs: dict, path: str | os.PathLike) -> Path:
    """Grouped bars of global entropy and top-k entropy per run (e.g. per preset), from the diagnostics.

    Args:
        runs: label -> result of `evaluate` with diagnostics (or a diagnostics dict itself).
        path: the PNG to write.
    """
    plt = _pyplot()
    labels = list(runs)
    diags = [r.get("diagnostics", r) if isinstance(r.get("diagnostics", r), dict) else {} for r in runs.values()]
    missing = [label for label, d in zip(labels, diags, strict=True) if "entropy" not in d]
    if missing:
        raise ValueError(f"runs without diagnostics: {missing}")
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(labels) + 2), 3.5))
    x = range(len(labels))
    width = 0.4
    ax.bar([i - width / 2 for i in x], [d["entropy"] for d in diags], width, label="entropy")
    ax.bar([i + width / 2 for i in x], [d["topk_entropy"] for d in diags], width, label="top-k entropy")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels)
    ax.set_ylabel("nats per token")
    ax.set_title("Entropy on held-out text")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def load_problems(config: EvalConfig):
    """The evaluation rows of `config.dataset_name` (hub name, local directory or data file), split applied."""
    from trl_shaped.scripts.data import load_split

    if config.dataset_name is None:
        raise ValueError("dataset_name is required: a hub name, a local directory or a data file")
    return load_split(config.dataset_name, config.dataset_split, name=config.dataset_config)


def evaluate_main(config: EvalConfig) -> dict:
    """Load the model (hub name or local path), tokenizer and dataset of `config`, evaluate, and write the files.

    Returns:
        the result of `evaluate`, with "files" (the paths written, as strings) added.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.model_name_or_path is None:
        raise ValueError("model_name_or_path is required: a hub name or a local directory")
    problems = load_problems(config)
    dtype = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        config.model_name_or_path, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    if torch.cuda.is_available():
        model = model.to("cuda")
    results = evaluate(model, tokenizer, problems, config)
    paths = write_results(results, config.output_dir, name=config.run_name)
    results["files"] = {k: str(v) for k, v in paths.items()}
    print(_markdown(results))
    return results
