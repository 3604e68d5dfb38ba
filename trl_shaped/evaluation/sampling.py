"""Sampling n completions per prompt with `model.generate`, reproducibly per problem.

Every sampled row draws its random numbers from its own generator, seeded from (seed, problem index, sample index).
A problem's completions therefore do not depend on the other prompts of its batch, on the batch size, or on which
process of a sharded evaluation samples it: the guarantee that lets `evaluate` split the problems across processes
and still return what one process returns. The draw is made by `PerRowSampler`, a logits processor that applies
temperature and top-p (transformers' own warpers), samples one token per row by inverse CDF with that row's uniform
number, and leaves only that token finite; `generate` then runs in greedy mode and picks it.
"""

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from ..prompts import check_stop_sequences, truncate_at_stop
from ..validation import check_int, check_real

# Uniforms are drawn this many at a time per row: one generator call per row every BLOCK steps, not every step.
UNIFORM_BLOCK = 64


def render_prompt(tokenizer, prompt) -> str:
    """A prompt as text: strings pass through, lists of chat messages go through the chat template (with the
    generation prompt)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def problem_seed(seed: int, problem_index: int) -> int:
    """The seed of one problem (a 31-bit integer), mixed from the run's seed and the problem's index by NumPy's
    SeedSequence, so that neighbouring seeds or indices give unrelated streams. vLLM gets it per request."""
    return int(np.random.SeedSequence([seed, problem_index]).generate_state(1, np.uint32)[0] >> 1)


def sample_seed(seed: int, problem_index: int, sample_index: int) -> int:
    """The seed of sample `sample_index` of problem `problem_index` (a 63-bit integer); see `problem_seed`."""
    state = np.random.SeedSequence([seed, problem_index, sample_index]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


class PerRowSampler(LogitsProcessor):
    """Samples each row of the batch with its own generator; returns scores where only the drawn token is finite.

    Args:
        seeds (`list[int]`): one seed per row of the batch, in row order.
        temperature (`float`): > 0.
        top_p (`float`): in (0, 1].
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
        self.uniforms = torch.empty(len(seeds), 0, dtype=torch.float64)
        self.step = 0

    def _next_uniforms(self) -> torch.Tensor:
        if self.step % UNIFORM_BLOCK == 0:  # every row refills its block from its own generator
            draws = [torch.rand(UNIFORM_BLOCK, generator=g, dtype=torch.float64) for g in self.generators]
            self.uniforms = torch.stack(draws)
        u = self.uniforms[:, self.step % UNIFORM_BLOCK]
        self.step += 1
        return u

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"PerRowSampler was built for {len(self.generators)} rows, got {scores.shape[0]}")
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.double(), dim=-1)  # float64: the CDF of a large vocabulary stays exact enough
        cdf = probs.cumsum(dim=-1)
        target = (self._next_uniforms().to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        # first index whose cumulative mass exceeds u * total: a token of positive probability (u < 1)
        tokens = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
        chosen = torch.full_like(scores, -float("inf"))
        return chosen.scatter_(-1, tokens, 0.0)


def stopped_length(tokenizer, ids: Sequence[int], stop_sequences) -> tuple[str, int]:
    """(text, length) of a completion's token `ids` (up to and including its first eos) cut after the first stop
    sequence it writes: the fewest tokens whose text holds a stop sequence (found by bisection; the text is cut right
    after it), else all of them. The same rule for `generate` and vLLM, so both score the same text."""
    eos_id = tokenizer.eos_token_id
    ids = list(ids)
    length = ids.index(eos_id) + 1 if eos_id is not None and eos_id in ids else len(ids)
    text = tokenizer.decode(ids[:length], skip_special_tokens=True)
    if not stop_sequences or not any(s in text for s in stop_sequences):
        return text, length
    low, high = 1, length  # the text of ids[:high] holds a stop sequence; find the smallest such high
    while low < high:
        middle = (low + high) // 2
        if any(s in tokenizer.decode(ids[:middle], skip_special_tokens=True) for s in stop_sequences):
            high = middle
        else:
            low = middle + 1
    return truncate_at_stop(tokenizer.decode(ids[:high], skip_special_tokens=True), stop_sequences), high


def check_sampling(num_samples, temperature, top_p, max_new_tokens, batch_size, seed) -> None:
    """The ValueErrors of bad sampling settings, each naming the argument and its allowed range."""
    check_int("num_samples", num_samples, minimum=1)
    check_real("temperature", temperature, minimum=0)
    check_real("top_p", top_p, minimum=0, maximum=1, open_minimum=True)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=0)


def prompts_per_call(num_samples: int, temperature: float, batch_size: int) -> int:
    """How many prompts one `generate` call takes: batch_size // rows per prompt (1 row when greedy), at least 1.
    `evaluate` shards problems in blocks of this size so that every batch is the same whatever the process count."""
    return max(1, batch_size // (1 if temperature == 0 else num_samples))


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
    first_index: int = 0,
    progress: bool = True,
    return_lengths: bool = False,
    stop_sequences: Sequence[str] | None = None,
    return_ids: bool = False,
):
    """Sample `num_samples` completions per prompt with `model.generate` (left padding, batched).

    Sample j of prompt i is drawn with the seed `sample_seed(seed, first_index + i, j)`, so it is the same whatever
    the batching; the global random state of torch is neither used nor changed.

    Args:
        model: a causal LM (`transformers` or peft-wrapped).
        tokenizer: its tokenizer; needs a pad token (the eos token is used when it has none).
        prompts: strings, or lists of chat messages (rendered with the chat template, generation prompt added).
        num_samples (`int`): completions per prompt (n).
        temperature (`float`): sampling temperature; 0 means greedy (the one greedy answer is repeated n times).
        top_p (`float`): nucleus sampling threshold in (0, 1]; no top-k filter is applied.
        max_new_tokens (`int`): generation budget per completion.
        batch_size (`int`): rows per `generate` call; prompts per call = `prompts_per_call(...)`, counted from the
            start of `prompts`. When n > batch_size one prompt takes several calls.
        seed (`int`): the run's seed (>= 0).
        first_index (`int`): the problem index of `prompts[0]` (a shard of a larger list passes its offset).
        progress (`bool`): show a tqdm progress bar over prompts.
        return_lengths (`bool`): also return the completions' lengths in tokens (eos included when generated).
        stop_sequences (`list[str]`, *optional*): strings that end a completion (transformers' `stop_strings`); the
            completion keeps the stop string and nothing after it (`stopped_length`).
        return_ids (`bool`): also return the completions' token ids (what GRPO hands a reward as `completion_ids`).

    Returns:
        `list[list[str]]` (one list of n decoded completions per prompt, special tokens removed), then with
        `return_lengths` a matching `list[list[int]]`, then with `return_ids` a matching `list[list[list[int]]]`.
    """
    from tqdm.auto import tqdm

    check_sampling(num_samples, temperature, top_p, max_new_tokens, batch_size, seed)
    stop_sequences = list(check_stop_sequences(stop_sequences))
    greedy = temperature == 0
    per_prompt = 1 if greedy else num_samples
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id
    texts = [render_prompt(tokenizer, p) for p in prompts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Left padding so that every row's generation starts right after its own prompt.
    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # many base-model tokenizers have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    chunk_size = prompts_per_call(num_samples, temperature, batch_size)
    completions, lengths, all_ids = [], [], []
    stop = {"stop_strings": stop_sequences, "tokenizer": tokenizer} if stop_sequences else {}
    try:
        bar = tqdm(total=len(texts), desc="sampling", unit="prompt", disable=not progress)
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start : start + chunk_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            rows = [[] for _ in chunk]
            row_lengths = [[] for _ in chunk]
            row_ids = [[] for _ in chunk]
            done = 0
            while done < per_prompt:  # when n > batch_size one prompt takes several calls
                m = min(per_prompt - done, max(1, batch_size // len(chunk)))
                # rows ordered prompt-major: prompt 0 samples done..done+m-1, prompt 1 ..., as the seeds below
                input_ids = enc["input_ids"].repeat_interleave(m, dim=0)
                attention_mask = enc["attention_mask"].repeat_interleave(m, dim=0)
                extra = {}
                if not greedy:
                    first = first_index + start
                    seeds = [sample_seed(seed, first + i, j) for i in range(len(chunk)) for j in range(done, done + m)]
                    extra["logits_processor"] = LogitsProcessorList([PerRowSampler(seeds, temperature, top_p)])
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=False,  # the draw is PerRowSampler's; greedy then takes the one finite token
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_id,
                    eos_token_id=eos_id,
                    **stop,
                    **extra,
                )
                new = out[:, input_ids.shape[1] :]
                for r, seq in enumerate(new.tolist()):
                    # no eos: it ran to max_new_tokens, or a stop string ended it (the rest is padding)
                    text, length = stopped_length(tokenizer, seq, stop_sequences)
                    rows[r // m].append(text)
                    row_lengths[r // m].append(length)
                    row_ids[r // m].append(seq[:length])
                done += m
            if greedy:
                rows = [r * num_samples for r in rows]
                row_lengths = [r * num_samples for r in row_lengths]
                row_ids = [r * num_samples for r in row_ids]
            completions.extend(rows)
            lengths.extend(row_lengths)
            all_ids.extend(row_ids)
            bar.update(len(chunk))
        bar.close()
    finally:
        tokenizer.padding_side, tokenizer.pad_token = old_side, old_pad
        model.train(was_training)
    extra_results = ([lengths] if return_lengths else []) + ([all_ids] if return_ids else [])
    return (completions, *extra_results) if extra_results else completions
