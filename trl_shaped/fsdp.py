"""FSDP2 (torch's `fully_shard`): whole parameters for the reads that happen outside a forward.

Between forwards FSDP2 holds every parameter as a sharded `DTensor`; each FSDP unit gathers its own parameters in its
forward pre-hook and reshards them after. The shaped loss runs as the LM head's own forward (`lm_head.py`), so it sees
the whole head exactly as the native head does, and its gradient reaches the shards through FSDP's backward hooks.

The GRPO drift diagnostics run outside a forward: they call the backbones of the policy and of the prior and read both
LM heads directly. `through_root` runs such a call as the forward of the model's root FSDP unit, so FSDP's hooks fire
as in a forward (the root's lazy initialisation on a model that has not run a forward yet, the gather of the
parameters the root holds: the whole model for one sharded as a single unit, as TRL shards its reference with
`prepare_fsdp`). `whole` gathers a parameter still sharded after it (the head of a unit that resharded). Both are
collectives, like the ZeRO-3 gather: every process must enter them, with or without tokens to score.
FSDP1 (`fsdp_version: 1`) is not supported (`check_fsdp_version`).
"""

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


def _root_unit(model: torch.nn.Module | None) -> FSDPModule | None:
    # `modules()` walks from the model down, so the first FSDP unit met is the outermost one
    if model is None:
        return None
    return next((module for module in model.modules() if isinstance(module, FSDPModule)), None)


def through_root(model: torch.nn.Module, function, **kwargs):
    """`function(**kwargs)`, run as the forward of `model`'s root FSDP unit, or called directly without FSDP2.

    Like `lm_head._run_as_head_forward`: the root's instance `forward` is replaced for one call and restored after, so
    its FSDP pre- and post-forward hooks wrap `function` (no other forward sees it).

    Args:
        model (`torch.nn.Module`): the model as the trainer holds it (FSDP-wrapped or not).
        function: what to run, e.g. the model's backbone (a module is called, so its own hooks fire).
    """
    root = _root_unit(model)
    if root is None:
        return function(**kwargs)
    previous = root.__dict__.get("forward")
    # a plain function: a module assigned to `forward` would be registered as a submodule, not called
    root.forward = lambda **inputs: function(**inputs)
    try:
        return root(**kwargs)
    finally:
        if previous is None:
            del root.forward
        else:
            root.forward = previous


def whole(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """The full tensor of an FSDP2-sharded parameter (an all-gather every process must enter), else `tensor` itself."""
    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    return tensor


def check_fsdp_version(accelerator) -> None:
    """Raise a ValueError under FSDP1: the diagnostics and the prior are written for FSDP2's per-parameter sharding.

    Args:
        accelerator ([`~accelerate.Accelerator`]): the trainer's accelerator.
    """
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None and plugin.fsdp_version != 2:
        raise ValueError(
            f"fsdp_version={plugin.fsdp_version} is not supported by trl_shaped's trainers: use FSDP2 "
            "(fsdp_version: 2, e.g. accelerate_configs/fsdp2.yaml)."
        )
