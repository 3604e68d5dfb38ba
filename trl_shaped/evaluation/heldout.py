"""Distribution diagnostics of a model on held-out text (docs/method.md, diagnostics), token-weighted.

The work is split so that a sharded evaluation adds up to exactly what one process computes: `text_sums` scores
texts in fixed batches (positions [0, b), [b, 2b), ... of its input) and returns per-text sums; `combine_text_sums`
adds those sums in text order and divides. A shard that starts at a multiple of the batch size forms the very same
batches, so its sums are bit for bit those of a single process.
"""

import math
import warnings
from collections.abc import Sequence

import torch

from trl_shaped import distribution_stats

from ..validation import check_int
from .sampling import render_prompt

STATS = ("nll", "entropy", "topk_entropy", "topk_mass", "tail_mass", "target_prob", "target_in_topk", "top1_accuracy")


def diagnostic_sequence(tokenizer, text: str, prompt=None, max_length: int | None = None):
    """(token ids, first scored position) of one text, or None when it has no token to score.

    Without a prompt every token after the first is scored. With one, prompt and text are tokenised apart and
    concatenated with the eos token appended to the text (as TRL's SFT does for prompt-completion data), and only
    the text's tokens are scored. `max_length` truncates the concatenation.
    """
    if prompt is None:
        ids, start = tokenizer(text, add_special_tokens=False)["input_ids"], 1
    else:
        prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_token_id
        if eos is not None and (not completion_ids or completion_ids[-1] != eos):
            completion_ids = completion_ids + [eos]
        ids, start = prompt_ids + completion_ids, max(1, len(prompt_ids))
    if max_length is not None:
        ids = ids[:max_length]
    return (ids, start) if len(ids) > start else None


@torch.no_grad()
def text_sums(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    prompts: Sequence | None = None,
    top_k: int = 100,
    batch_size: int = 8,
    max_length: int | None = 1024,
    progress: bool = False,
) -> list[dict | None]:
    """Per-text sums of the diagnostics over the scored tokens: one dict per text ({stat: sum, "num_tokens": count}),
    None for a text without a scored token. Arguments as in `text_diagnostics`."""
    from tqdm.auto import tqdm

    if prompts is not None and len(prompts) != len(texts):
        raise ValueError(f"prompts and texts must have the same length, got {len(prompts)} and {len(texts)}")
    check_int("batch_size", batch_size, minimum=1)
    sequences = [
        diagnostic_sequence(tokenizer, text, None if prompts is None else prompts[i], max_length)
        for i, text in enumerate(texts)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: list[dict | None] = [None] * len(sequences)
    try:
        for b in tqdm(range(0, len(sequences), batch_size), desc="diagnostics", disable=not progress):
            members = [i for i in range(b, min(b + batch_size, len(sequences))) if sequences[i] is not None]
            if not members:
                continue
            width = max(len(sequences[i][0]) for i in members)
            input_ids = torch.full((len(members), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(members), width), dtype=torch.long)
            labels = torch.full((len(members), width), -100, dtype=torch.long)
            for r, i in enumerate(members):
                ids, start = sequences[i]
                input_ids[r, : len(ids)] = torch.tensor(ids)
                attention_mask[r, : len(ids)] = 1
                labels[r, start : len(ids)] = torch.tensor(ids[start:])
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            # logits[t] scores token t + 1: align before calling the (no-shift) diagnostics
            targets = labels[:, 1:].to(device)
            stats = distribution_stats(logits[:, :-1], targets, top_k=top_k, reduction="none")
            per_row = {key: stats[key].sum(dim=-1).tolist() for key in STATS}
            counts = (targets != -100).sum(dim=-1).tolist()
            for r, i in enumerate(members):
                sums[i] = {key: per_row[key][r] for key in STATS} | {"num_tokens": int(counts[r])}
    finally:
        model.train(was_training)
    return sums


def combine_text_sums(sums: Sequence[dict | None], *, warn: bool = True) -> dict:
    """Token-weighted means from `text_sums` output (added in order), plus perplexity = exp(nll) and num_tokens.

    With no scored token at all (empty texts, or everything cut by max_length) a mean does not exist: every value
    is NaN (num_tokens 0), not the nll 0 / perplexity 1 of a perfect model, and a warning says why (once per call;
    `warn=False` for the processes of a sharded run other than the main one).
    """
    totals = dict.fromkeys(STATS, 0.0)
    count = 0
    for record in sums:
        if record is None:
            continue
        for key in STATS:
            totals[key] += record[key]
        count += record["num_tokens"]
    if count == 0:
        if warn:
            warnings.warn(
                "no token to score in the held-out text (empty texts, or max_length too small for the prompts): "
                "the diagnostics are NaN",
                UserWarning,
                stacklevel=3,
            )
        return dict.fromkeys((*STATS, "perplexity"), math.nan) | {"num_tokens": 0}
    result = {key: value / count for key, value in totals.items()}
    result["perplexity"] = math.exp(result["nll"])
    result["num_tokens"] = count
    return result


def text_diagnostics(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    prompts: Sequence | None = None,
    top_k: int = 100,
    batch_size: int = 8,
    max_length: int | None = 1024,
    progress: bool = False,
) -> dict:
    """The distribution diagnostics on held-out text, averaged over scored tokens.

    Each text is tokenised without special tokens; when `prompts` is given, `texts[i]` is the completion of
    `prompts[i]`, the two are tokenised separately and concatenated with the eos token appended (as TRL's SFT
    does for prompt-completion data), and only the completion tokens are scored.

    Args:
        model, tokenizer: the causal LM and its tokenizer.
        texts: the held-out texts (or completions, with `prompts`).
        prompts: optional prompts (strings or chat messages); see above.
        top_k (`int`): the k of the top-k set K_t.
        batch_size (`int`): sequences per forward pass.
        max_length (`int`, *optional*): truncate sequences to this many tokens (None: no truncation).
        progress (`bool`): show a tqdm progress bar.

    Returns:
        dict of floats: nll, perplexity, entropy, topk_entropy, topk_mass, tail_mass, target_prob,
        target_in_topk, top1_accuracy (token-weighted means) and num_tokens. All NaN, num_tokens 0 and a warning
        when no text has a token to score.
    """
    sums = text_sums(
        model,
        tokenizer,
        texts,
        prompts=prompts,
        top_k=top_k,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )
    return combine_text_sums(sums)
