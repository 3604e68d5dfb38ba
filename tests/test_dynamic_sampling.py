"""Dynamic sampling's pure functions, against hand computations (no trainer)."""

import pytest
import torch

from trl_shaped import dynamic_sampling


def test_informative_groups_from_advantages():
    advantages = torch.tensor(
        [0.0, 0.0, 0.0,  # all-equal rewards: zero advantages
         -1.0, 0.5, 0.5,  # signal
         0.7, 0.7, 0.7,  # all equal but not zero (normalize_then_sum): still no signal within the group
         0.0, 1e-9, 0.0,  # rounding noise of an all-equal group
         0.0, 2e-6, 0.0]  # a small but real spread
    )  # fmt: skip
    assert dynamic_sampling.informative_groups(advantages, 3).tolist() == [False, True, False, False, True]
    with pytest.raises(ValueError, match="multiple of 4"):
        dynamic_sampling.informative_groups(advantages, 4)


def test_select_groups_takes_informative_first_then_fills_in_generation_order():
    flags = torch.tensor([True, False, False, True, False, True, True])
    assert dynamic_sampling.select_groups(flags, 3).tolist() == [0, 3, 5]
    assert dynamic_sampling.select_groups(flags, 4).tolist() == [0, 3, 5, 6]
    assert dynamic_sampling.select_groups(torch.tensor([False, True, False, False]), 3).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="cannot select 5"):
        dynamic_sampling.select_groups(torch.tensor([True] * 4), 5)


def test_group_rows():
    assert dynamic_sampling.group_rows(torch.tensor([2, 0]), 3).tolist() == [6, 7, 8, 0, 1, 2]


@pytest.mark.parametrize("processes,local", [(1, 8), (2, 4), (4, 2), (2, 3)])
def test_gather_plan_assembles_the_rows_in_order(processes, local):
    # Simulate the processes: row r of round k on process p holds the value of its global round-major id
    rounds = 3
    per_round = processes * local
    rows = torch.tensor([13, 2, 3, 20, 21, 0, 9, 17])[:per_round]
    rows = rows[rows < rounds * per_round]
    sends, positions = dynamic_sampling.gather_plan(rows, local, processes)
    width = max(len(s) for s in sends)
    gathered = []
    for p in range(processes):
        # this process's rounds merged round-major: index k * local + i holds global id k * per_round + p * local + i
        merged = torch.tensor([k * per_round + p * local + i for k in range(rounds) for i in range(local)])
        part = merged[sends[p]]
        gathered.append(torch.cat([part, torch.full((width - len(part),), -1)]))
    assert torch.cat(gathered)[positions].tolist() == rows.tolist()
    # each process sends only rows it owns, never the whole rounds
    assert sum(len(s) for s in sends) == len(rows)


def test_gather_plan_by_hand():
    # 2 processes x 2 rows per round; rows 5 (round 1, process 0, row 1) and 2 (round 0, process 1, row 0)
    sends, positions = dynamic_sampling.gather_plan(torch.tensor([5, 2, 6]), local_size=2, num_processes=2)
    assert [s.tolist() for s in sends] == [[3], [0, 2]]  # local index k * 2 + i
    assert positions.tolist() == [0, 2, 3]  # width 2: process 0 at 0.., process 1 at 2..


def test_merge_rounds_pads_each_side():
    a = {
        "prompt_ids": torch.tensor([[7, 8]]),
        "completion_mask": torch.tensor([[1, 1, 1]]),
        "advantages": torch.ones(1),
    }
    b = {"prompt_ids": torch.tensor([[5, 6, 7]]), "completion_mask": torch.tensor([[1]]), "advantages": torch.zeros(1)}
    merged = dynamic_sampling.merge_rounds([a, b], pad_token_id=0)
    assert merged["prompt_ids"].tolist() == [[0, 7, 8], [5, 6, 7]]  # left-padded with the pad id
    assert merged["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]  # right-padded with 0
    assert merged["advantages"].tolist() == [1.0, 0.0]
    tool = dynamic_sampling.pad_to_width("tool_mask", torch.tensor([[1, 0]]), 4, pad_token_id=0)
    assert tool.tolist() == [[1, 0, 1, 1]]  # a per-token ratio/mask pads with its neutral 1


def test_trim_padding_drops_unused_columns():
    batch = {
        "prompt_ids": torch.tensor([[0, 0, 3, 4], [0, 0, 0, 5]]),
        "prompt_mask": torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]]),
        "completion_ids": torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]]),
        "completion_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]),
        "advantages": torch.tensor([0.5, -0.5]),
    }
    out = dynamic_sampling.trim_padding(batch)
    assert out["prompt_ids"].tolist() == [[3, 4], [0, 5]]
    assert out["completion_ids"].tolist() == [[1, 2], [3, 0]]
    assert out["advantages"].tolist() == [0.5, -0.5]


def test_sampling_stats():
    flags = torch.tensor([True, False, False, True, False, False])  # 4 groups wanted, 2 rounds of 4 ... 6 generated
    order = dynamic_sampling.select_groups(flags, 4)
    stats = dynamic_sampling.sampling_stats(flags, order, rounds=1, wanted=4)
    assert stats == {
        "dynamic_sampling/frac_groups_dropped": 4 / 6,
        "dynamic_sampling/rounds": 1.0,
        "dynamic_sampling/frac_groups_filled": 2 / 4,
    }


def test_row_rewards_and_the_kept_reward():
    nan = float("nan")
    per_func = torch.tensor([[1.0, 2.0], [nan, 4.0], [nan, nan], [0.5, 0.0]])
    rewards = dynamic_sampling.row_rewards(per_func, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(rewards, torch.tensor([2.0, 2.0, nan, 0.5]), equal_nan=True)
    # rounds concatenated: the kept rows' mean, unscorable rows left out
    assert (
        dynamic_sampling.kept_reward_mean(torch.cat([rewards, torch.tensor([7.0, 9.0])]), torch.tensor([2, 3, 5]))
        == 4.75
    )
