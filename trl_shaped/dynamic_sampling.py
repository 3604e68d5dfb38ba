"""DAPO dynamic sampling as pure functions on generation batches (dicts of per-row tensors), no trainer needed.

A generation batch holds `num_generations` consecutive rows per prompt (a group). A group whose advantages are all
equal carries no signal (its rewards were all equal, so GRPO's group-centred advantages are all zero). Dynamic
sampling generates further rounds from other prompts until the batch can be filled with informative groups:

    flags = informative_groups(advantages, num_generations)     # per round, over all processes
    order = select_groups(all rounds' flags, wanted)             # informative first, in generation order
    rows  = group_rows(order, num_generations)                   # global row ids, round-major
    plan  = gather_plan(rows, local_size, num_processes)         # who sends which local rows, where they land
    merged = merge_rounds(local rounds); take plan's rows; gather; put in order; keep this process's slice; trim

Row ids are "global, round-major": row `i` of process `p` in round `k` is `k * P * L + p * L + i` (L rows per
process, P processes), which is the order in which TRL lays out a generation batch over processes.
"""

import torch
import torch.nn.functional as F

# Batch fields padded on the left (prompt side); every other 2-D field is padded on the right.
LEFT_PADDED = frozenset({"prompt_ids", "prompt_mask"})
# Per-token fields whose neutral padding value is 1 instead of 0.
PADDED_WITH_ONES = frozenset({"tool_mask", "importance_sampling_ratio"})
# Spread of the advantages within a group below which the group counts as uninformative: all-equal rewards give a
# spread of 0 up to rounding (about 1e-12 relative after TRL's division by std + 1e-4).
ADVANTAGE_ATOL = 1e-6


def check_batch_fields(batch: dict, local_size: int) -> dict:
    """The per-row fields of a generation batch (all but `num_items_in_batch`); a ValueError for any other field.

    Args:
        batch (`dict`): one process's generation batch as `GRPOTrainer._generate_and_score_completions` returns it.
        local_size (`int`): its number of rows.
    """
    fields = {key: value for key, value in batch.items() if key != "num_items_in_batch"}
    for key, value in fields.items():
        if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == local_size):
            raise ValueError(f"dynamic_sampling does not support the batch field {key!r} (multimodal or tool data)")
    return fields


def informative_groups(advantages: torch.Tensor, num_generations: int, atol: float = ADVANTAGE_ATOL) -> torch.Tensor:
    """Boolean (groups,) tensor: True where a group's advantages are not all equal.

    Args:
        advantages (`torch.Tensor`): (rows,) advantages of a whole generation batch (all processes), rows of a group
            consecutive. TRL sets the advantage of an unscorable completion to 0.
        num_generations (`int`): rows per group.
        atol (`float`): spread (max - min) within a group at or below which the group is uninformative.
    """
    if advantages.dim() != 1 or advantages.numel() % num_generations:
        raise ValueError(f"advantages must be 1-D with a multiple of {num_generations} rows, got {advantages.shape}")
    grouped = advantages.view(-1, num_generations)
    return (grouped.amax(dim=1) - grouped.amin(dim=1)) > atol


def select_groups(flags: torch.Tensor, wanted: int) -> torch.Tensor:
    """Indices of the `wanted` groups to train on: informative groups in generation order, then uninformative ones
    (also in generation order) only to complete the batch.

    Args:
        flags (`torch.Tensor`): (groups,) booleans of every round, concatenated in generation order.
        wanted (`int`): groups per generation batch; at most `flags.numel()`.
    """
    if wanted > flags.numel():
        raise ValueError(f"cannot select {wanted} groups out of {flags.numel()}")
    return torch.cat([flags.nonzero().squeeze(1), (~flags).nonzero().squeeze(1)])[:wanted]


def group_rows(groups: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Row ids of the given groups, group after group."""
    return (groups.unsqueeze(1) * num_generations + torch.arange(num_generations)).reshape(-1)


def gather_plan(rows: torch.Tensor, local_size: int, num_processes: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """How to assemble the selected rows on every process with one gather of the selected rows only.

    Each process sends the rows it owns among `rows` (in the order they appear there), padded to the largest count;
    the gather concatenates the processes' parts; `positions` then picks the rows of `rows`, in order, out of it.

    Args:
        rows (`torch.Tensor`): (n,) global round-major row ids to assemble, in the wanted order.
        local_size (`int`): rows per process per round (L).
        num_processes (`int`): P.

    Returns:
        `sends`: for each process, (n_p,) indices into its own rounds merged round-major (`k * L + i`);
        `positions`: (n,) indices into the gathered rows (process p's part starts at `p * max(n_p)`).
    """
    per_round = local_size * num_processes
    owner = (rows % per_round) // local_size
    local_index = (rows // per_round) * local_size + rows % local_size
    sends = [local_index[owner == p] for p in range(num_processes)]
    width = max(len(s) for s in sends)
    # The j-th row that process p sends sits at p * width + j of the gathered rows
    rank_within = torch.zeros_like(rows)
    for p in range(num_processes):
        owned = (owner == p).nonzero().squeeze(1)
        rank_within[owned] = torch.arange(owned.numel())
    return sends, owner * width + rank_within


def pad_value(key: str, pad_token_id: int):
    """Neutral padding of a batch field."""
    if key in ("prompt_ids", "completion_ids"):
        return pad_token_id
    return 1 if key in PADDED_WITH_ONES else 0


def pad_to_width(key: str, value: torch.Tensor, width: int, pad_token_id: int) -> torch.Tensor:
    """Pad a 2-D field to `width` columns on its padding side (prompt fields on the left)."""
    extra = width - value.size(1)
    return F.pad(value, (extra, 0) if key in LEFT_PADDED else (0, extra), value=pad_value(key, pad_token_id))


def merge_rounds(rounds: list[dict], pad_token_id: int) -> dict:
    """Concatenate batches row-wise, padding 2-D fields to the widest round."""
    merged = {}
    for key in rounds[0]:
        parts = [r[key] for r in rounds]
        if parts[0].dim() >= 2:
            width = max(p.size(1) for p in parts)
            parts = [pad_to_width(key, p, width, pad_token_id) for p in parts]
        merged[key] = torch.cat(parts)
    return merged


def trim_padding(batch: dict) -> dict:
    """Drop the columns that no row uses: left of every prompt, right of every completion."""
    prompt_used = batch["prompt_mask"].any(dim=0).nonzero()
    first = int(prompt_used[0]) if prompt_used.numel() else 0
    completion_used = batch["completion_mask"].any(dim=0).nonzero()
    last = int(completion_used[-1]) + 1 if completion_used.numel() else 1
    trimmed = {}
    for key, value in batch.items():
        if key in LEFT_PADDED:
            trimmed[key] = value[:, first:]
        elif value.dim() >= 2:
            trimmed[key] = value[:, :last]
        else:
            trimmed[key] = value
    return trimmed


def row_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each completion's reward as TRL logs it (`reward`): the weighted sum of the reward functions' values (NaN ones
    left out), NaN where every function returned None.

    Args:
        rewards_per_func (`torch.Tensor`): (rows, functions) rewards of a generation batch, all processes.
        weights (`torch.Tensor`): (functions,) `reward_weights`.
    """
    rewards = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    return rewards.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))


def kept_reward_mean(rewards: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean reward of the rows kept in the batch (NaN ones left out, as TRL's `reward`).

    Args:
        rewards (`torch.Tensor`): (rows,) `row_rewards` of every round, concatenated (global round-major order).
        rows (`torch.Tensor`): global round-major ids of the kept rows (`group_rows`).
    """
    return torch.nanmean(rewards[rows]).item()


def sampling_stats(flags: torch.Tensor, order: torch.Tensor, rounds: int, wanted: int) -> dict[str, float]:
    """The logged metrics: uninformative groups over all generated, extra rounds, uninformative groups kept."""
    return {
        "dynamic_sampling/frac_groups_dropped": int((~flags).sum()) / flags.numel(),
        "dynamic_sampling/rounds": float(rounds),
        "dynamic_sampling/frac_groups_filled": int((~flags[order]).sum()) / wanted,
    }
