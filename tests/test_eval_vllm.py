"""The vLLM sampling path (`EvalConfig.use_vllm`).

vLLM cannot be installed on the CI machines (no GPU), so the path is driven here through a small fake `vllm` module
put in `sys.modules`: it records what it is given (engine arguments, one SamplingParams per prompt with the
problem's seed, token-id prompts) and returns known token ids, so that the assembly of completions, lengths and
scores is checked. The last test runs the real engine wherever vLLM imports.
"""

import sys
import types

import pytest
import torch

from trl_shaped.evaluation import EvalConfig, evaluate, problem_seed, sample_completions, sample_completions_vllm
from trl_shaped.evaluation.vllm_sampling import build_vllm_engine
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

PROBLEMS = [
    {"prompt": "1+2=?\n", "answer": "0"},
    {"prompt": "5-1=?\n", "answer": "1"},
    {"prompt": "7=?\n", "answer": "9"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _fake_vllm(tokenizer):
    """A `vllm` stand-in. Sample j of a request is "<j> #### <j>" followed by eos and junk (which must be cut)."""
    module = types.ModuleType("vllm")
    module.engines, module.calls = [], []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.n = kwargs.get("n", 1)

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            module.engines.append(self)

        def generate(self, prompts, sampling_params, use_tqdm=True):
            module.calls.append({"prompts": prompts, "params": sampling_params, "use_tqdm": use_tqdm})
            outputs = []
            for params in sampling_params:
                samples = []
                for j in range(params.n):
                    ids = tokenizer(f"{j} #### {j}", add_special_tokens=False)["input_ids"]
                    ids = ids + [tokenizer.eos_token_id] + tokenizer("junk", add_special_tokens=False)["input_ids"]
                    samples.append(types.SimpleNamespace(token_ids=tuple(ids), text="vLLM's own text, unused"))
                outputs.append(types.SimpleNamespace(outputs=samples))
            return outputs

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


@pytest.fixture
def fake_vllm(tokenizer, monkeypatch):
    module = _fake_vllm(tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return module


def test_evaluate_samples_with_vllm(fake_vllm, tokenizer):
    model = build_tiny_model(len(tokenizer), hidden_size=32, tokenizer=tokenizer, seed=0)
    config = EvalConfig(
        use_vllm=True, model_name_or_path="some/model", num_samples=4, temperature=0.9, top_p=0.8,
        max_new_tokens=12, seed=7, dtype="bfloat16", vllm_gpu_memory_utilization=0.3, progress=False,
    )  # fmt: skip
    result = evaluate(model, tokenizer, PROBLEMS, config)

    (engine,) = fake_vllm.engines
    assert engine.kwargs == dict(model="some/model", dtype="bfloat16", seed=7, gpu_memory_utilization=0.3,
                                 trust_remote_code=False)  # fmt: skip
    (call,) = fake_vllm.calls
    # prompts go in as token ids, tokenised without special tokens as the generate path does
    expected_ids = [tokenizer(p["prompt"], add_special_tokens=False)["input_ids"] for p in PROBLEMS]
    assert call["prompts"] == [{"prompt_token_ids": ids} for ids in expected_ids]
    assert [p.kwargs for p in call["params"]] == [
        dict(n=4, temperature=0.9, top_p=0.8, max_tokens=12, seed=problem_seed(7, i)) for i in range(3)
    ]
    assert call["use_tqdm"] is False
    # completions cut at eos and decoded with our tokenizer; lengths count the eos
    texts = [f"{j} #### {j}" for j in range(4)]
    assert [p["completions"] for p in result["per_problem"]] == [texts] * 3
    assert result["mean_completion_tokens"] == sum(len(t) + 1 for t in texts) / 4  # one token per character
    # scored like any other completions: answer "0" and "1" are each drawn once, "9" never
    assert [p["num_correct"] for p in result["per_problem"]] == [1, 1, 0]
    assert result["avg_at_n"] == pytest.approx(2 / 12)
    assert result["settings"]["use_vllm"] is True


def test_vllm_greedy_shards_and_engine_under_a_launcher(fake_vllm, tokenizer, monkeypatch):
    llm = fake_vllm.LLM(model="x")
    prompts = [p["prompt"] for p in PROBLEMS]
    completions, lengths = sample_completions_vllm(
        llm, tokenizer, prompts[1:], num_samples=3, temperature=0.0, max_new_tokens=5, seed=2, first_index=1,
        progress=False, return_lengths=True,
    )  # fmt: skip
    params = fake_vllm.calls[-1]["params"]
    # greedy: one sample per prompt (top_p off), repeated n times; the seeds are those of problems 1 and 2
    assert [p.kwargs for p in params] == [
        dict(n=1, temperature=0.0, top_p=1.0, max_tokens=5, seed=problem_seed(2, i)) for i in (1, 2)
    ]
    assert completions == [["0 #### 0"] * 3] * 2 and lengths == [[9] * 3] * 2
    # every process of a launch runs its own engine through vLLM's external launcher, as TRL's colocate mode does
    monkeypatch.setenv("WORLD_SIZE", "2")
    build_vllm_engine("m", seed=1, max_model_len=64)
    assert fake_vllm.engines[-1].kwargs["distributed_executor_backend"] == "external_launcher"
    assert fake_vllm.engines[-1].kwargs["max_model_len"] == 64


def test_use_vllm_without_vllm_fails_at_config_time(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(ValueError, match=r"use_vllm=True needs vLLM.*trl_shaped\[vllm\]"):
        EvalConfig(use_vllm=True)
    assert EvalConfig().use_vllm is False  # off by default: generate samples


def test_real_vllm_engine(tmp_path):
    pytest.importorskip("vllm")
    tokenizer = build_char_tokenizer()
    # head_dim 64: a size every vLLM attention backend supports
    model = build_tiny_model(len(tokenizer), hidden_size=128, num_heads=2, tokenizer=tokenizer, seed=0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    config = EvalConfig(
        use_vllm=True, model_name_or_path=str(tmp_path / "model"), num_samples=4, temperature=1.0,
        max_new_tokens=6, diagnostics=False, progress=False,
    )  # fmt: skip
    llm = build_vllm_engine(config.model_name_or_path, dtype="float32", gpu_memory_utilization=0.3)
    first = evaluate(model, tokenizer, PROBLEMS, config, llm=llm)
    again = evaluate(model, tokenizer, PROBLEMS, config, llm=llm)
    samples = [p["completions"] for p in first["per_problem"]]
    assert [len(s) for s in samples] == [4, 4, 4]
    assert samples == [p["completions"] for p in again["per_problem"]]  # seeded per problem: reproducible
    assert len({c for s in samples for c in s}) > 1
    # greedy decoding agrees with transformers' generate
    prompts = [p["prompt"] for p in PROBLEMS]
    greedy = dict(num_samples=1, temperature=0.0, max_new_tokens=4, progress=False)
    with torch.no_grad():
        expected = sample_completions(model, tokenizer, prompts, **greedy)
    assert sample_completions_vllm(llm, tokenizer, prompts, **greedy) == expected
