"""The LM-head patching alone (trl_shaped/lm_head.py): the patched forward's loss and gradients equal the full-logits
reference `shaped_loss` on the model's own logits, for models that scale and softcap their logits themselves."""

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    PretrainedConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from trl_shaped import ShapingConfig, shaped_loss
from trl_shaped.diagnostics import STAT_NAMES
from trl_shaped.lm_head import ShapedCausalLMOutput, add_shaped_lm_head, logit_transform, shaped_causal_lm_loss

VOCAB = 40
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    pad_token_id=0,
)


def _model(kind: str):
    # Each family applies its logit transform in its own forward, so its `.logits` are an independent reference for
    # the transform our patched head applies from the config (a Qwen3 with no transform is the baseline).
    torch.manual_seed(0)
    if kind == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**COMMON))
    if kind == "gemma2_softcap":  # tanh(z / c) * c after the head
        config = Gemma2Config(**COMMON, final_logit_softcapping=2.0, attn_logit_softcapping=None)
        config._attn_implementation = "eager"
        return Gemma2ForCausalLM(config)
    if kind == "cohere_logit_scale":  # z * logit_scale
        return CohereForCausalLM(CohereConfig(**COMMON, logit_scale=0.3))
    if kind == "granite_logits_scaling":  # z / logits_scaling
        return GraniteForCausalLM(GraniteConfig(**COMMON, logits_scaling=4.0))
    raise ValueError(kind)


def _with_large_logits(model):
    # At the default init the logits are ~0.1, where tanh(z / c) * c is z to 1e-4: scale the head so the transform bites
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    return model


@pytest.mark.parametrize("kind", ["qwen3", "gemma2_softcap", "cohere_logit_scale", "granite_logits_scaling"])
def test_patched_head_equals_reference_on_the_models_logits(kind):
    model = _with_large_logits(_model(kind))
    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :3] = -100
    shaping = ShapingConfig(beta=-0.25, top_k=5, head_reward=0.1, tail_reward=-0.05)
    params = [p for p in model.parameters() if p.requires_grad]

    add_shaped_lm_head(model)
    output = model(input_ids=ids, labels=labels, shaped_lm_head=shaping)
    assert isinstance(output, ShapedCausalLMOutput)
    grads = torch.autograd.grad(output.loss, params)

    logits = model(input_ids=ids).logits  # the plain forward, untouched by the patch
    reference = shaped_loss(logits[:, :-1], labels[:, 1:], config=shaping)
    expected = torch.autograd.grad(reference, params)
    torch.testing.assert_close(output.loss, reference, rtol=1e-5, atol=1e-6)
    if kind != "qwen3":  # the transform matters at these logits: without it the loss would differ
        scale, softcap = logit_transform(model.config)
        raw = logits.detach() / scale if softcap is None else softcap * torch.atanh(logits.detach() / softcap)
        assert abs(shaped_loss(raw[:, :-1], labels[:, 1:], config=shaping).item() - reference.item()) > 1e-2
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    # The stats are sums over the scored tokens; nll is the cross-entropy of the transformed logits
    scored = labels[:, 1:] != -100
    assert output.stats["num_tokens"].item() == scored.sum().item()
    assert set(STAT_NAMES) <= set(output.stats)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1][scored], labels[:, 1:][scored], reduction="sum")
    assert output.stats["nll"].item() == pytest.approx(nll.item(), rel=1e-5)


def test_transform_read_from_config_matches_the_families():
    assert logit_transform(_model("qwen3").config) == (1.0, None)
    assert logit_transform(_model("gemma2_softcap").config) == (1.0, 2.0)
    assert logit_transform(_model("cohere_logit_scale").config) == (0.3, None)
    assert logit_transform(_model("granite_logits_scaling").config) == (0.25, None)


@pytest.mark.parametrize(
    "field, value",
    [
        ("final_logit_softcapping", True),  # a bool is not a cap of 1.0
        ("final_logit_softcapping", 0.0),
        ("final_logit_softcapping", float("inf")),
        ("final_logit_softcapping", "30"),
        ("logit_scale", True),
        ("logit_scale", float("nan")),
        ("logits_scaling", 0),
    ],
)
def test_bad_transform_fields_fail_naming_the_field(field, value):
    config = PretrainedConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        logit_transform(config)
    model = _model("qwen3")
    setattr(model.config, field, value)
    with pytest.raises(ValueError, match=field):  # at patch time, before any forward
        add_shaped_lm_head(model)


def test_patch_is_idempotent_unwraps_peft_and_keeps_the_plain_forward():
    from peft import LoraConfig, get_peft_model

    model = _model("qwen3")
    ids = torch.randint(1, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    loss = shaped_causal_lm_loss(peft_model, {"input_ids": ids, "labels": ids}, ShapingConfig())
    forward = model.forward
    add_shaped_lm_head(peft_model)  # already patched through the wrapper: nothing changes
    assert model.forward is forward
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, before)  # LoRA B starts at 0
        reference = torch.nn.functional.cross_entropy(before[0, :-1], ids[0, 1:])
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="shaped_lm_head"):
        model(input_ids=ids, labels=ids, shaped_lm_head={"beta": 0.5})
