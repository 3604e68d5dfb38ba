"""The fused loss under saved-tensor hooks, the mechanism of TRL's `activation_offloading`.

The chunked Function computes its gradients in the forward pass and keeps them for the backward one. They go through
`ctx.save_for_backward`, so saved-tensor hooks see them: TRL's offloading can move them off the device between the
passes, and whatever the hooks hand back is what the backward uses.

TRL's `OffloadActivations` needs an accelerator (it reads `torch.accelerator.current_accelerator().type`, None on a
CPU-only machine), so `ShapedSFTTrainer(activation_offloading=True)` cannot be built here, as stock `SFTTrainer`
cannot. The tests run TRL's own class single-stream and unpinned, with CPU declared the accelerator, so that it
really copies every saved tensor out and back; the trainer test installs it where `activation_offloading=True`
would (`trainer.maybe_activation_offload_context`, entered by TRL's `training_step`). In the trainer the loss runs
as the LM head's forward, which TRL's manager deliberately leaves on the device (no-op hooks around the output head).
"""

from unittest import mock

import torch
from _sft_common import config as sft_config
from datasets import Dataset
from trl.models.activation_offloading import get_act_offloading_ctx_manager

from trl_shaped import ShapingConfig, fused_linear_shaped_loss
from trl_shaped.sft_trainer import ShapedSFTTrainer
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

CONFIG = ShapingConfig(beta=-0.25, top_k=5, tail_reward=-0.1)


def cpu_offloading(model, seen=None):
    """TRL's activation offloading manager on a CPU (copies out and back); `seen` collects what it packs."""
    with mock.patch.object(torch.accelerator, "current_accelerator", return_value=torch.device("cpu")):
        manager = get_act_offloading_ctx_manager(
            model, use_pin_memory=False, use_streams=False, min_offload_size=1, warn_if_no_head=False
        )
    if seen is not None:
        pack = manager.pack_hook

        def recording_pack(tensor):
            seen.append(tensor)
            return pack(tensor)

        manager.pack_hook = recording_pack
    return manager


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(40, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    bias = torch.randn(50, generator=gen, requires_grad=True)
    labels = torch.randint(0, 50, (40,), generator=gen)
    labels[::5] = -100
    return hidden, weight, bias, labels


def test_offloading_sees_the_saved_gradients_and_changes_nothing():
    hidden, weight, bias, labels = inputs()
    loss = fused_linear_shaped_loss(hidden, weight, labels, bias=bias, config=CONFIG, chunk_size=7)
    expected = torch.autograd.grad(loss, (hidden, weight, bias))

    seen = []
    with cpu_offloading(torch.nn.Linear(1, 1), seen):
        loss_off = fused_linear_shaped_loss(hidden, weight, labels, bias=bias, config=CONFIG, chunk_size=7)
    # What the Function keeps for its backward is exactly its three gradients, and the hooks received all three.
    assert len(seen) == 3
    for tensor, grad in zip(seen, expected, strict=True):
        assert torch.equal(tensor, grad)
    grads = torch.autograd.grad(loss_off, (hidden, weight, bias))
    assert torch.equal(loss_off, loss)
    for g, g_ref in zip(grads, expected, strict=True):
        assert torch.equal(g, g_ref)


def test_backward_uses_what_the_hooks_hand_back():
    # If the gradients lived on ctx (invisible to the hooks), doubling the unpacked tensors would change nothing.
    hidden, weight, bias, labels = inputs(seed=1)
    loss = fused_linear_shaped_loss(hidden, weight, labels, bias=bias, config=CONFIG)
    expected = torch.autograd.grad(loss, (hidden, weight, bias))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: 2 * t):
        loss = fused_linear_shaped_loss(hidden, weight, labels, bias=bias, config=CONFIG)
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    for g, g_ref in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, 2 * g_ref, rtol=0, atol=0)


def run_sft(tmp_path, offload: bool, seen=None):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(len(tokenizer), hidden_size=32, num_layers=2, seed=0)
        args = sft_config(
            tmp_path,
            # TRL checkpoints by default; off, every backbone activation goes through the offloading hooks.
            gradient_checkpointing=False,
            shaping_preset="tail_penalty",
            shaping_top_k=5,
        )
        texts = [f"{a}+{b}={a + b}" for a in range(8) for b in (3, 17)]
        trainer = ShapedSFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tokenizer
        )
        if offload:
            # What `activation_offloading=True` sets up, with the CPU standing in for the accelerator.
            trainer.maybe_activation_offload_context = cpu_offloading(trainer.model, seen)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_shaped_sft_trainer_trains_the_same_with_activation_offloading(tmp_path):
    losses, weights = run_sft(tmp_path / "plain", offload=False)
    seen = []
    losses_off, weights_off = run_sft(tmp_path / "offload", offload=True, seen=seen)
    # The offloaded run packed the backbone's activations (2 layers: dozens per step). The fused loss runs as the
    # LM head's forward, where TRL's manager switches to no-op hooks on purpose (offloading the last layer's
    # tensors only to bring them straight back is wasted bandwidth), as for its own lm_head: its saved gradients
    # stay on the device, so no (V, H) tensor is among the offloaded ones.
    assert len(seen) > 3 * 20
    assert not any(t.shape == weights["lm_head.weight"].shape for t in seen)
    # Offloading copies tensors out and back: the run is the same, step for step.
    assert losses_off == losses and len(losses) == 3
    for name, value in weights.items():
        assert torch.equal(weights_off[name], value), name
