"""`use_liger_kernel=True`: the shaped loss stays the training loss, Liger's layer kernels apply, and Liger's fused
cross-entropy is refused (at config time) or caught (a forward replaced after patching) instead of silently training
with another loss.

Liger's Triton kernels need a GPU, so on CPU no step runs with them: what is tested is the configuration, the trainer's
construction, and the patching that `Trainer.train` does first (`transformers.integrations.liger.apply_liger_kernel`).
"""

import types

import pytest
import torch
from _grpo_common import arithmetic_prompts, arithmetic_solutions, grpo_config, tiny_policy, varied_reward
from _sft_common import config, text_dataset, tokenizer

from trl_shaped import ShapedGRPOConfig, ShapedGRPOTrainer, ShapedSFTConfig, ShapedSFTTrainer
from trl_shaped.lm_head import add_shaped_lm_head, shaped_causal_lm_loss
from trl_shaped.shaping import ShapingConfig
from trl_shaped.tiny import build_tiny_model

FUSED_CE = {"fused_linear_cross_entropy": True}
CPU = {"use_cpu": True, "bf16": False, "report_to": []}


@pytest.fixture
def qwen3_module_restored():
    # Liger patches transformers' Qwen3 module (its RMSNorm, MLP and RoPE) for the whole process, not only the model
    # instance: put them back so that the other tests run the stock layers.
    from transformers.models.qwen3 import modeling_qwen3

    saved = dict(vars(modeling_qwen3))
    yield
    for name in set(vars(modeling_qwen3)) - set(saved):
        delattr(modeling_qwen3, name)
    for name, value in saved.items():
        setattr(modeling_qwen3, name, value)


@pytest.mark.parametrize("config_class", [ShapedSFTConfig, ShapedGRPOConfig])
def test_liger_fused_cross_entropy_is_refused_at_config_time(config_class, tmp_path):
    with pytest.raises(ValueError, match=r"fused_linear_cross_entropy.*replace the shaped loss"):
        config_class(output_dir=str(tmp_path), use_liger_kernel=True, liger_kernel_config=FUSED_CE, **CPU)
    # without use_liger_kernel the Liger config is inert, as in TRL
    config_class(output_dir=str(tmp_path), liger_kernel_config=FUSED_CE, **CPU)
    if config_class is ShapedGRPOConfig:  # the tests' GRPO settings take the same path
        with pytest.raises(ValueError, match="fused_linear_cross_entropy"):
            grpo_config(tmp_path, use_liger_kernel=True, liger_kernel_config=FUSED_CE)


def test_use_liger_kernel_keeps_the_shaped_loss(tmp_path, qwen3_module_restored):
    pytest.importorskip("liger_kernel", reason="the optional extra `liger` (pip install 'trl_shaped[liger]')")
    from transformers.integrations.liger import apply_liger_kernel

    tok = tokenizer()
    model = build_tiny_model(len(tok), tokenizer=tok, hidden_size=32, num_layers=1)
    args = config(tmp_path, use_liger_kernel=True, shaping_preset="tail_penalty", shaping_top_k=5)
    with pytest.warns(FutureWarning, match="use_liger_kernel"):  # TRL 1.16 deprecates it for the Hub kernels
        trainer = ShapedSFTTrainer(model=model, args=args, train_dataset=text_dataset(8), processing_class=tok)
    assert trainer.args.liger_kernel_config == {"fused_linear_cross_entropy": False}
    shaped_forward = trainer.model.forward
    norm_forward = trainer.model.model.norm.forward
    # what Trainer.train runs before the first step
    apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)
    assert trainer.model.model.norm.forward != norm_forward, "Liger's RMSNorm kernel should be applied"
    assert trainer.model.forward == shaped_forward, "the shaped forward must survive Liger's patching"


def test_use_liger_kernel_with_grpo_keeps_the_auxiliary_shaped_loss(tmp_path, qwen3_module_restored):
    pytest.importorskip("liger_kernel", reason="the optional extra `liger` (pip install 'trl_shaped[liger]')")
    from transformers.integrations.liger import apply_liger_kernel

    model, tok = tiny_policy()
    args = grpo_config(tmp_path, use_liger_kernel=True, shaping_aux_coef=0.1, shaping_preset="tail_penalty")
    with pytest.warns(FutureWarning, match="use_liger_kernel"):
        trainer = ShapedGRPOTrainer(
            model, [varied_reward], args, train_dataset=arithmetic_prompts(8), processing_class=tok,
            aux_dataset=arithmetic_solutions(8),
        )  # fmt: skip
    assert trainer.args.liger_kernel_config == {"fused_linear_cross_entropy": False}
    forward = trainer.model.forward
    apply_liger_kernel(trainer.model, trainer.args.liger_kernel_config)
    assert trainer.model.forward == forward  # TRL's fused LM head, and the model the shaped aux loss patches later


def test_a_forward_replaced_after_patching_fails_instead_of_training_another_loss():
    model = build_tiny_model(64, hidden_size=32, num_layers=1)
    add_shaped_lm_head(model)
    batch = {"input_ids": torch.arange(12).view(2, 6), "labels": torch.arange(12).view(2, 6)}
    shaped_causal_lm_loss(model, batch, ShapingConfig())  # patched: runs
    # What Liger's fused_linear_cross_entropy does to an instance: a new forward that takes **kwargs and computes its
    # own cross-entropy. Stood in for by the model's stock forward (Liger's Triton kernel needs a GPU).
    model.forward = types.MethodType(type(model).forward, model)
    with pytest.raises(RuntimeError, match=r"returned a CausalLMOutputWithPast, not the shaped loss.*Liger"):
        shaped_causal_lm_loss(model, batch, ShapingConfig())
