"""Sampling with vLLM's offline engine (`EvalConfig.use_vllm`; the optional extra `pip install trl_shaped[vllm]`).

Avg@128 on a real test set needs a fast sampler; vLLM is one where a GPU is. The path uses only vLLM's documented
offline API: `LLM(model=..., ...)`, `SamplingParams(n, temperature, top_p, max_tokens, seed)` and
`llm.generate(prompts, sampling_params)` with one `SamplingParams` per prompt, so that problem i is sampled with its
own seed `problem_seed(seed, i)` whatever else is in the batch or on the process. Prompts go in as token ids
(tokenised here, without special tokens, like the `generate` path) and completions are decoded here with the same
tokenizer, so both samplers are scored on the same text. They draw different samples for the same seed (different
random streams), each reproducibly. `generate` stays the default and the fallback.
"""

import importlib.util
import os
import sys
from collections.abc import Sequence

from ..prompts import check_stop_sequences
from .sampling import check_sampling, problem_seed, render_prompt, stopped_length

INSTALL_HINT = "pip install 'trl_shaped[vllm]'"


def vllm_available() -> bool:
    """Whether `import vllm` can work (a module already in sys.modules counts), without importing it."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None


def import_vllm():
    """The vllm module, or a ValueError naming `use_vllm` and how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise ValueError(
            f"use_vllm=True needs vLLM, which cannot be imported here ({error}): {INSTALL_HINT} on a machine with a "
            "supported GPU, or leave use_vllm off to sample with transformers' generate"
        ) from error
    return vllm


def build_vllm_engine(
    model_name_or_path: str,
    *,
    dtype: str = "auto",
    seed: int = 0,
    gpu_memory_utilization: float = 0.5,
    max_model_len: int | None = None,
    trust_remote_code: bool = False,
):
    """A `vllm.LLM` for `model_name_or_path` (hub name or local directory).

    Under `accelerate launch` (WORLD_SIZE > 1) every process builds its own engine on its own GPU with vLLM's
    `external_launcher` backend, as TRL's GRPO does in colocate mode; each then samples only its shard.

    Args:
        model_name_or_path (`str`): what `LLM(model=...)` loads; a directory saved with `save_pretrained` works.
        dtype (`str`): "auto", "bfloat16", "float16" or "float32".
        seed (`int`): the engine's seed (the samples are seeded per problem anyway).
        gpu_memory_utilization (`float`): share of GPU memory vLLM may take; the transformers model of the
            diagnostics shares the GPU, hence the default 0.5.
        max_model_len (`int`, *optional*): prompt + completion budget; None lets vLLM read it from the model.
        trust_remote_code (`bool`): allow custom model code from the hub.
    """
    vllm = import_vllm()
    kwargs = dict(
        model=model_name_or_path,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        trust_remote_code=trust_remote_code,
    )
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"
    return vllm.LLM(**kwargs)


def sample_completions_vllm(
    llm,
    tokenizer,
    prompts: Sequence,
    *,
    num_samples: int,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    seed: int = 0,
    first_index: int = 0,
    progress: bool = True,
    return_lengths: bool = False,
    stop_sequences: Sequence[str] | None = None,
    return_ids: bool = False,
):
    """`sample_completions` with a vLLM engine: same arguments (no batch size: vLLM batches itself), same result.

    Problem i (= `first_index` + its position) is one request with `SamplingParams(n=num_samples, seed=
    problem_seed(seed, i), ...)`; temperature 0 asks for one greedy completion and repeats it n times. A completion
    ends at the tokenizer's eos token (kept in the length, as with `generate`).

    Args:
        llm: a `vllm.LLM` (see `build_vllm_engine`).
        tokenizer: the model's tokenizer (prompts are encoded and completions decoded with it).
        prompts, num_samples, temperature, top_p, max_new_tokens, seed, first_index, progress, return_lengths,
            stop_sequences, return_ids: as in `sample_completions` (stop sequences are vLLM's `stop`, the stop string
            kept in the output as `generate` keeps it).
    """
    check_sampling(num_samples, temperature, top_p, max_new_tokens, 1, seed)
    stop_sequences = list(check_stop_sequences(stop_sequences))
    stop = {"stop": stop_sequences, "include_stop_str_in_output": True} if stop_sequences else {}
    vllm = import_vllm()
    greedy = temperature == 0
    per_prompt = 1 if greedy else num_samples
    requests = [
        {"prompt_token_ids": tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]}
        for p in prompts
    ]
    params = [
        vllm.SamplingParams(
            n=per_prompt,
            temperature=temperature,
            top_p=1.0 if greedy else top_p,
            max_tokens=max_new_tokens,
            seed=problem_seed(seed, first_index + i),
            **stop,
        )
        for i in range(len(requests))
    ]
    outputs = llm.generate(requests, params, use_tqdm=progress) if requests else []
    if len(outputs) != len(requests):
        raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(requests)} prompts")
    completions, lengths, all_ids = [], [], []
    for output in outputs:  # vLLM returns the requests' results in the order of the prompts
        if len(output.outputs) != per_prompt:
            raise RuntimeError(f"vLLM returned {len(output.outputs)} completions for a prompt, expected {per_prompt}")
        row, row_lengths, row_ids = [], [], []
        for sample in output.outputs:
            ids = list(sample.token_ids)
            text, length = stopped_length(tokenizer, ids, stop_sequences)
            row.append(text)
            row_lengths.append(length)
            row_ids.append(ids[:length])
        completions.append(row * num_samples if greedy else row)
        lengths.append(row_lengths * num_samples if greedy else row_lengths)
        all_ids.append(row_ids * num_samples if greedy else row_ids)
    extra_results = ([lengths] if return_lengths else []) + ([all_ids] if return_ids else [])
    return (completions, *extra_results) if extra_results else completions
