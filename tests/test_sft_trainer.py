"""ShapedSFTTrainer on one CPU process: parity with stock SFTTrainer, normalisation, logging, data formats, LoRA,
resume, model card and bad input."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from _sft_common import TEXTS, config, step_losses, text_dataset, tokenizer
from datasets import Dataset
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM, TrainerCallback
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from trl_shaped import ShapingConfig, shaped_loss
from trl_shaped.lm_head import shaped_causal_lm_loss
from trl_shaped.sft_config import ShapedSFTConfig
from trl_shaped.sft_trainer import ShapedSFTTrainer
from trl_shaped.tiny import build_tiny_model

TOK = tokenizer()


def tiny_model(kind: str = "untied"):
    if kind == "moe":
        torch.manual_seed(0)
        moe = Qwen3MoeConfig(
            vocab_size=len(TOK),
            hidden_size=32,
            intermediate_size=64,
            moe_intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            router_aux_loss_coef=0.05,
            pad_token_id=TOK.pad_token_id,
            eos_token_id=TOK.eos_token_id,
        )
        return Qwen3MoeForCausalLM(moe)
    model = build_tiny_model(len(TOK), tokenizer=TOK, hidden_size=32, tie_word_embeddings=kind == "tied", seed=0)
    if kind == "softcap":
        # Read by TRL's fused head and by ours from the config (Qwen3 itself ignores them): parity = both apply them
        model.config.final_logit_softcapping = 3.0
        model.config.logit_scale = 0.5
    return model


# Stock SFTTrainer computes its NLL with TRL's chunked kernel and ours with the shaped loss at beta = 0; both are
# float32 sums in a different order, so the losses and the trained weights agree to float32 rounding, not bit for bit.
PARITY_RTOL = 1e-5


def parity_args(tmp_path) -> dict:
    """Arguments shared by a stock SFTConfig and a ShapedSFTConfig in the parity tests.

    SGD: Adam's first steps move every weight by about lr whatever the gradient's size, so rounding-level gradient
    differences on near-zero gradients would show as lr-sized weight differences.
    """
    return dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=0.3,
        optim="sgd",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        bf16=False,
        disable_tqdm=True,
    )


@pytest.mark.parametrize("kind", ["untied", "tied", "softcap", "moe"])
def test_ce_preset_reproduces_stock_sft_trainer(tmp_path, kind):
    common = parity_args(tmp_path)
    stock = SFTTrainer(
        model=tiny_model(kind),
        args=SFTConfig(loss_type="nll", **common),
        train_dataset=text_dataset(),
        processing_class=TOK,
    )
    stock.train()
    shaped = ShapedSFTTrainer(
        model=tiny_model(kind),
        args=config(tmp_path, shaping_preset="ce", learning_rate=0.3, optim="sgd"),
        train_dataset=text_dataset(),
        processing_class=TOK,
    )
    shaped.train()
    assert step_losses(shaped) == pytest.approx(step_losses(stock), rel=PARITY_RTOL)
    for key in ("entropy", "mean_token_accuracy", "num_tokens"):  # TRL's own metrics keep their meaning
        logged = [e[key] for e in shaped.state.log_history if "loss" in e]
        assert logged == pytest.approx([e[key] for e in stock.state.log_history if "loss" in e], rel=PARITY_RTOL), key
    for (name, a), b in zip(stock.model.named_parameters(), shaped.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=PARITY_RTOL, atol=1e-6, msg=name)
    if kind == "moe":  # the auxiliary loss is part of both losses, so parity covers it; check it was there at all
        assert all(e["aux_loss"] > 0 for e in shaped.state.log_history if "loss" in e)


def sharegpt_dataset() -> Dataset:
    # ShareGPT layout: `conversations` of {"from", "value"} turns, which SFTTrainer converts to `messages`
    return Dataset.from_dict(
        {
            "conversations": [
                [{"from": "human", "value": t.split("=")[0]}, {"from": "gpt", "value": t.split("=")[1]}] for t in TEXTS
            ]
        }
    )


def test_sharegpt_conversations_match_stock_sft_trainer(tmp_path):
    # Stock SFTTrainer trains on this layout, so ours must, with the same losses at the CE preset
    common = parity_args(tmp_path)
    stock = SFTTrainer(
        model=tiny_model(),
        args=SFTConfig(loss_type="nll", **common),
        train_dataset=sharegpt_dataset(),
        processing_class=TOK,
    )
    stock.train()
    shaped = ShapedSFTTrainer(
        model=tiny_model(),
        args=ShapedSFTConfig(shaping_preset="ce", **common),
        train_dataset=sharegpt_dataset(),
        processing_class=TOK,
    )
    shaped.train()
    assert len(step_losses(shaped)) == 3
    assert step_losses(shaped) == pytest.approx(step_losses(stock), rel=PARITY_RTOL)
    assert shaped.train_dataset["input_ids"] == stock.train_dataset["input_ids"]


class _GradCapture(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # Rows of different lengths: a per-micro-batch mean would weight them differently from the 8-row batch
    runs = {}
    for batch, accumulation in ((8, 1), (1, 8)):
        capture = _GradCapture()
        trainer = ShapedSFTTrainer(
            model=tiny_model(),
            train_dataset=text_dataset(8),
            processing_class=TOK,
            callbacks=[capture],
            args=config(
                tmp_path,
                max_steps=1,
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation,
                shaping_preset="tail_penalty",
                shaping_top_k=3,
                shaping_beta=-0.25,
                max_grad_norm=0.0,
            ),
        )
        trainer.train()
        runs[batch] = (step_losses(trainer), capture.grads)
    (loss_a, grads_a), (loss_b, grads_b) = runs[8], runs[1]
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def _expected_stats(model, rows, top_k):
    """Token-weighted means over every scored position of `rows`, from the full logits, without trl_shaped."""
    sums, count = {}, 0
    with torch.no_grad():
        for ids in rows:
            ids = torch.tensor([ids])
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = ids[0, 1:]
            logp = logits.log_softmax(-1)
            p = logp.exp()
            top = logits.topk(top_k, dim=-1).indices
            in_top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, top, True)
            p_top = torch.where(in_top, p, 0.0)
            q = p_top / p_top.sum(-1, keepdim=True)
            values = {
                "entropy": -(p * logp).sum(-1),
                "topk_entropy": -(q * torch.where(in_top, q.clamp_min(1e-30).log(), 0.0)).sum(-1),
                "topk_mass": p_top.sum(-1),
                "target_prob": p.gather(-1, target[:, None])[:, 0],
                "target_in_topk": in_top.gather(-1, target[:, None])[:, 0].float(),
                "mean_token_accuracy": (logits.argmax(-1) == target).float(),
                "nll": -logp.gather(-1, target[:, None])[:, 0],
            }
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value.sum().item()
            count += target.numel()
    means = {key: value / count for key, value in sums.items()}
    means["tail_mass"] = 1 - means["topk_mass"]
    means["perplexity"] = math.exp(means["nll"])
    return means


def test_eval_logs_token_weighted_diagnostics(tmp_path):
    # Uneven lengths in batches of 3: averaging per-batch means would differ from the token-weighted mean
    eval_texts = [TEXTS[i] * (1 + i % 3) for i in range(7)]
    trainer = ShapedSFTTrainer(
        model=tiny_model(),
        args=config(tmp_path, shaping_preset="precision", shaping_top_k=5, per_device_eval_batch_size=3),
        train_dataset=text_dataset(),
        eval_dataset=Dataset.from_dict({"text": eval_texts}),
        processing_class=TOK,
    )
    metrics = trainer.evaluate()
    expected = _expected_stats(trainer.model.eval(), trainer.eval_dataset["input_ids"], top_k=5)
    for key, value in expected.items():
        assert metrics[f"eval_{key}"] == pytest.approx(value, rel=1e-4, abs=1e-6), key


DATASETS = {
    "language_modeling": (lambda: text_dataset(), {}),
    "prompt_completion": (
        lambda: Dataset.from_dict(
            {"prompt": [t.split("=")[0] + "=" for t in TEXTS], "completion": [t.split("=")[1] for t in TEXTS]}
        ),
        {},
    ),
    "conversational_assistant_only": (
        lambda: Dataset.from_dict(
            {
                "messages": [
                    [{"role": "user", "content": t.split("=")[0]}, {"role": "assistant", "content": t.split("=")[1]}]
                    for t in TEXTS
                ]
            }
        ),
        {"assistant_only_loss": True},
    ),
    "packing": (lambda: text_dataset(), {"packing": True, "max_length": 32}),
    "padding_free": (lambda: text_dataset(), {"padding_free": True, "max_length": None}),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_formats_train_with_finite_shaped_loss(tmp_path, name):
    make, kwargs = DATASETS[name]
    trainer = ShapedSFTTrainer(
        model=tiny_model(),
        train_dataset=make(),
        processing_class=TOK,
        args=config(tmp_path, max_steps=1, shaping_preset="tail_penalty", shaping_top_k=5, **kwargs),
    )
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    for key in ("loss", "nll", "entropy", "topk_mass", "mean_token_accuracy"):
        assert math.isfinite(entry[key]), key
    assert entry["num_tokens"] > 0


def test_shaped_causal_lm_loss_matches_reference_on_full_logits():
    # Prompt positions masked (-100) as completion-only loss does; the reference scores the shifted full logits
    torch.manual_seed(1)
    model = tiny_model("tied")
    ids = torch.randint(4, len(TOK), (3, 11))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[2, :] = -100  # a row with nothing to score
    shaping = ShapingConfig(beta=0.5, top_k=4, head_reward=0.1, tail_reward=-0.1)

    loss, stats = shaped_causal_lm_loss(
        model, {"input_ids": ids, "labels": labels}, shaping, num_items_in_batch=40, return_stats=True
    )
    grads = torch.autograd.grad(loss, list(model.parameters()))
    reference = shaped_loss(model(input_ids=ids).logits[:, :-1], labels[:, 1:], config=shaping, num_items_in_batch=40)
    expected = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert stats["num_tokens"].item() == (labels[:, 1:] != -100).sum().item()
    nll = F.cross_entropy(model(input_ids=ids).logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
    assert stats["nll"].item() == pytest.approx(nll.item(), rel=1e-5)


def test_lora_trains_only_adapters_and_reloads(tmp_path):
    from peft import PeftModel

    peft_config = get_peft_config(
        ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=["q_proj", "v_proj"])
    )
    trainer = ShapedSFTTrainer(
        model=tiny_model(),
        train_dataset=text_dataset(),
        processing_class=TOK,
        peft_config=peft_config,
        args=config(tmp_path, shaping_preset="precision", learning_rate=1e-2),
    )
    trainer.train()
    losses = step_losses(trainer)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    base, trained = tiny_model(), trainer.model
    trained_state = trained.get_base_model().state_dict()
    for name, value in base.state_dict().items():  # the base weights are untouched
        lora_name = (
            name.replace(".weight", ".base_layer.weight")
            if name.replace(".weight", ".base_layer.weight") in trained_state
            else name
        )
        torch.testing.assert_close(trained_state[lora_name], value, rtol=0, atol=0, msg=name)
    assert all(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)  # B starts at zero

    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(tiny_model(), str(tmp_path / "adapter")).eval()
    ids = torch.tensor([TOK("12+34=46")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, trained.eval()(input_ids=ids).logits, rtol=1e-6, atol=1e-6
        )


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_continues_like_uninterrupted_run_and_writes_model_card(tmp_path):
    def run(output_dir, callbacks=(), resume=None):
        trainer = ShapedSFTTrainer(
            model=tiny_model(),
            train_dataset=text_dataset(),
            processing_class=TOK,
            callbacks=list(callbacks),
            args=config(
                output_dir,
                max_steps=6,
                per_device_train_batch_size=2,
                shaping_preset="diversity",
                save_strategy="steps",
                save_steps=3,
                save_only_model=False,
            ),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = step_losses(run(tmp_path / "full"))
    interrupted = step_losses(run(tmp_path / "cut", callbacks=[_StopAt(3)]))
    resumed = step_losses(run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-3")))
    assert len(full) == 6 and len(interrupted) == 3
    assert interrupted == pytest.approx(full[:3], rel=1e-6)
    assert resumed[-3:] == pytest.approx(full[3:], rel=1e-5)

    card = (tmp_path / "cut" / "README.md").read_text()
    assert "trl_shaped" in card and "2512.22955" in card
    metadata = card.split("---")[1]
    assert "beta: 0.5" in metadata and "shaping_preset: diversity" in metadata


def test_bad_dataset_fails_before_training_with_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="dataset_text_field"):
        ShapedSFTTrainer(
            model=tiny_model(),
            args=config(tmp_path),
            processing_class=TOK,
            train_dataset=Dataset.from_dict({"content": ["1+1=2", "2+2=4"]}),
        )


def test_loss_replacements_conflict_with_shaping(tmp_path):
    with pytest.raises(ValueError, match="loss_type='dft'"):
        ShapedSFTTrainer(
            model=tiny_model(),
            args=config(tmp_path, shaping_preset="precision", loss_type="dft"),
            train_dataset=text_dataset(),
            processing_class=TOK,
        )


def test_plain_forward_and_generation_unchanged(tmp_path):
    model = tiny_model()
    ids = torch.tensor([TOK("1+2=")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    ShapedSFTTrainer(model=model, args=config(tmp_path), train_dataset=text_dataset(), processing_class=TOK)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
        assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)
    assert json.dumps(model.config.to_dict())  # the patch leaves the config serialisable
