"""Splitting an evaluation over the processes of `accelerate launch` and gathering it back, in problem order.

Problems are dealt out in whole blocks (the sampler's prompts per call, the diagnostics' batch size) so that every
batch is the one a single process would form; combined with seeds per problem this makes a sharded evaluation
return exactly what one process returns. Blocks go to processes as contiguous runs, split the way accelerate's
`PartialState.split_between_processes` splits a list (the first processes take one more when it does not divide).
"""

import os
from dataclasses import dataclass

import torch

from ..validation import check_int


@dataclass(frozen=True)
class Shard:
    """Where this process stands: `process_index` of `num_processes`."""

    process_index: int = 0
    num_processes: int = 1

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


def launched() -> bool:
    """Whether this process is one of several (started by `accelerate launch` / torchrun, or in a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def partial_state():
    """accelerate's `PartialState` of a launched process (joins the process group on first use): on CPU (no GPU, or
    the launcher's `use_cpu`) over gloo, as the trainers' `use_cpu` does."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def current_shard(shard: bool | None = None) -> Shard:
    """This process's `Shard`.

    Args:
        shard (`bool`, *optional*): False: act as the only process (for a caller that evaluates on one rank of a
            larger job); None or True: split across the processes when there are several (`partial_state`).
    """
    if shard is False or not launched():
        return Shard()
    state = partial_state()
    return Shard(state.process_index, state.num_processes)


def block_range(num_items: int, block_size: int, shard: Shard) -> range:
    """The items [start, stop) of this process: whole blocks [b * block_size, (b + 1) * block_size), a contiguous run
    of them per process; may be empty when there are fewer blocks than processes."""
    check_int("block_size", block_size, minimum=1)
    num_blocks = -(-num_items // block_size)
    per_process, extra = divmod(num_blocks, shard.num_processes)
    first = shard.process_index * per_process + min(shard.process_index, extra)
    last = first + per_process + (1 if shard.process_index < extra else 0)
    return range(min(first * block_size, num_items), min(last * block_size, num_items))


def gather_in_order(local: list, shard: Shard, total: int) -> list:
    """Concatenate every process's `local` list in process order (= problem order) on every process."""
    if shard.num_processes == 1:
        gathered = local
    else:
        from accelerate.utils import gather_object

        gathered = gather_object(local)
    if len(gathered) != total:
        raise RuntimeError(f"gathered {len(gathered)} results for {total} problems")
    return list(gathered)
