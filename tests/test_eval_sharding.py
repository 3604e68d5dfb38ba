"""Sharded evaluation: problems dealt out in whole blocks, seeds per problem, results equal to one process's.

The unit tests replay the shards of a 2- or 3-process run inside one process; the distributed test launches
`recipes/eval.py` with `accelerate launch` on 2 CPU processes and compares its JSON with a 1-process run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState

from trl_shaped.evaluation import sample_completions, text_diagnostics
from trl_shaped.evaluation.heldout import combine_text_sums, text_sums
from trl_shaped.evaluation.sampling import PerRowSampler, prompts_per_call
from trl_shaped.evaluation.sharding import Shard, block_range
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

ROOT = Path(__file__).resolve().parent.parent

# Prompts of different lengths (left padding differs from batch to batch) and completions, one empty.
PROBLEMS = [
    {"prompt": f"{a}+{b}=?\n", "answer": str(a + b), "completion": f"{a}+{b}={a + b} #### {a + b}" if a % 3 else ""}
    for a, b in [(1, 2), (17, 5), (3, 300), (44, 4), (9, 91), (250, 1), (6, 6)]
]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=32, tokenizer=tokenizer, seed=0)
    return model.eval(), tokenizer


def _accelerate_split(items: list, num_processes: int, process_index: int) -> list:
    """What accelerate's `PartialState.split_between_processes` gives process `process_index` (run on a stand-in
    state that has only the two attributes the method reads)."""
    state = SimpleNamespace(num_processes=num_processes, process_index=process_index)
    with PartialState.split_between_processes(state, items) as part:
        return list(part)


@pytest.mark.parametrize("num_processes", [1, 2, 3, 4])
def test_block_range_is_accelerates_split_of_whole_blocks(num_processes):
    for num_items in range(0, 23):
        for block_size in (1, 2, 3, 5):
            blocks = [list(range(s, min(s + block_size, num_items))) for s in range(0, num_items, block_size)]
            ranges = [block_range(num_items, block_size, Shard(p, num_processes)) for p in range(num_processes)]
            for p, mine in enumerate(ranges):
                expected = [i for block in _accelerate_split(blocks, num_processes, p) for i in block]
                assert list(mine) == expected, (num_items, block_size, p)
                assert mine.start % block_size == 0 or mine.start == num_items  # shards start on a block boundary
            assert [i for r in ranges for i in r] == list(range(num_items))  # in order, each item once


@pytest.mark.parametrize("temperature, batch_size", [(1.0, 6), (1.0, 2), (0.0, 3)])
def test_sharded_sampling_equals_one_process(tiny, temperature, batch_size):
    model, tokenizer = tiny
    prompts = [p["prompt"] for p in PROBLEMS]
    kwargs = dict(num_samples=3, temperature=temperature, top_p=0.9, max_new_tokens=6, batch_size=batch_size,
                  seed=11, progress=False, return_lengths=True)  # fmt: skip
    whole, whole_lengths = sample_completions(model, tokenizer, prompts, **kwargs)
    block = prompts_per_call(3, temperature, batch_size)
    for num_processes in (2, 3):
        shards = [block_range(len(prompts), block, Shard(p, num_processes)) for p in range(num_processes)]
        parts = [
            sample_completions(model, tokenizer, prompts[r.start : r.stop], first_index=r.start, **kwargs)
            for r in shards
        ]
        assert [c for part in parts for c in part[0]] == whole
        assert [n for part in parts for n in part[1]] == whole_lengths
    if temperature > 0:
        assert len({c for row in whole for c in row}) > 3  # really sampled
    # a process left without a block (more processes than blocks) samples nothing and still joins the gather
    assert block_range(len(prompts), block, Shard(9, 10)) == range(len(prompts), len(prompts))
    assert sample_completions(model, tokenizer, [], first_index=len(prompts), **kwargs) == ([], [])


def test_a_problems_samples_depend_on_its_seed_and_index_only(tiny):
    model, tokenizer = tiny
    prompts = ["12+34=?\n", "56+78=?\n", "90+12=?\n"]  # equal lengths: no padding anywhere
    kwargs = dict(num_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=5, progress=False)
    one_call = sample_completions(model, tokenizer, prompts, batch_size=12, **kwargs)
    one_row_per_call = sample_completions(model, tokenizer, prompts, batch_size=1, **kwargs)
    alone = [sample_completions(model, tokenizer, [p], first_index=i, batch_size=12, **kwargs)[0]
             for i, p in enumerate(prompts)]  # fmt: skip
    assert one_call == one_row_per_call == alone
    # another seed, or the same prompt at another index, gives other samples
    assert sample_completions(model, tokenizer, prompts, batch_size=12, **(kwargs | {"seed": 6})) != one_call
    assert sample_completions(model, tokenizer, prompts[:1], first_index=1, batch_size=12, **kwargs)[0] != alone[0]


def test_per_row_sampler_draws_from_the_warped_distribution():
    # 6000 rows with the same logits and their own seeds: token frequencies against softmax(logits / T) restricted
    # to the top-p nucleus, renormalised (transformers' temperature then top-p).
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -1.0, -3.0])
    temperature, top_p, rows = 0.8, 0.9, 6000
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]  # mass of the more probable tokens
    kept = order[before < top_p]
    expected = torch.zeros_like(probs)
    expected[kept] = probs[kept] / probs[kept].sum()
    sampler = PerRowSampler(list(range(rows)), temperature, top_p)
    out = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.repeat(rows, 1))
    assert torch.isfinite(out).sum(dim=-1).eq(1).all()  # exactly one finite (chosen) token per row
    counts = torch.bincount(out.argmax(dim=-1), minlength=len(logits)).double()
    assert counts[expected == 0].sum() == 0  # nothing outside the nucleus
    sigma = (rows * expected * (1 - expected)).sqrt()
    assert ((counts - rows * expected).abs() <= 5 * sigma + 1e-9).all(), (counts / rows, expected)
    # same seeds, same draws
    again = PerRowSampler(list(range(rows)), temperature, top_p)(torch.zeros(rows, 1, dtype=torch.long),
                                                                 logits.repeat(rows, 1))  # fmt: skip
    assert torch.equal(out, again)


def test_sharded_diagnostics_add_up_exactly(tiny):
    model, tokenizer = tiny
    texts = [p["completion"] for p in PROBLEMS]
    prompts = [p["prompt"] for p in PROBLEMS]
    kwargs = dict(prompts=prompts, top_k=5, batch_size=3)
    whole = text_sums(model, tokenizer, texts, **kwargs)
    assert sum(s is None for s in whole) == 0  # an empty completion still scores its eos token
    for num_processes in (2, 3):
        parts = []
        for p in range(num_processes):
            r = block_range(len(texts), 3, Shard(p, num_processes))
            parts += text_sums(
                model, tokenizer, texts[r.start : r.stop], **(kwargs | {"prompts": prompts[r.start : r.stop]})
            )
        assert parts == whole
    assert combine_text_sums(whole) == text_diagnostics(model, tokenizer, texts, **kwargs)
    assert text_sums(model, tokenizer, [], prompts=[], top_k=5, batch_size=3) == []


def _write_problems(path: Path) -> None:
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))


@pytest.mark.distributed
def test_two_processes_write_what_one_process_writes(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    _write_problems(tmp_path / "test.jsonl")
    # 7 problems; 2 prompts per generate call (batch 6 / n 3) -> 4 blocks, 2 per process; diagnostics batches of 3
    # -> 3 blocks, 2 and 1. Temperature 1 so that the samples really depend on the seeds.
    args = [
        str(ROOT / "recipes" / "eval.py"), "--config", str(ROOT / "recipes" / "tiny_eval.yaml"),
        "--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "test.jsonl"),
        "--num_samples", "3", "--pass_k", "1", "3", "--batch_size", "6", "--temperature", "1.0",
        "--max_new_tokens", "8", "--diagnostics_top_k", "5", "--diagnostics_batch_size", "3", "--seed", "3",
        "--no_progress", "--run_name", "tiny",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    one = subprocess.run(
        [sys.executable, *args, "--output_dir", str(tmp_path / "one")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-4000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "accelerate_configs" / "cpu.yaml")]  # fmt: skip
    two = subprocess.run(
        [*launch, *args, "--output_dir", str(tmp_path / "two")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    log = two.stdout + two.stderr
    assert two.returncode == 0, log[-4000:]
    # both processes took their share, the main one alone wrote and printed the summary
    assert "process 0 of 2 samples problems [0, 4) of 7" in log and "process 1 of 2 samples problems [4, 7) of 7" in log
    assert log.count("# Evaluation: tiny") == 1
    result_one = json.loads((tmp_path / "one" / "tiny.json").read_text())
    result_two = json.loads((tmp_path / "two" / "tiny.json").read_text())
    assert result_two == result_one  # completions, metrics and diagnostics, exactly
    assert (tmp_path / "two" / "tiny.json").read_text() == (tmp_path / "one" / "tiny.json").read_text()
    assert len({c for p in result_one["per_problem"] for c in p["completions"]}) > 3
    assert result_one["diagnostics"]["num_tokens"] > 0
