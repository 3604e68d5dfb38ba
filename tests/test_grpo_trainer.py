"""ShapedGRPOTrainer on one process: stage-1 prior, drift diagnostics, dynamic sampling, auxiliary shaped loss, LoRA."""

import logging
import math
import os

import pytest
import torch
from _grpo_common import (
    arithmetic_prompts,
    arithmetic_solutions,
    grpo_config,
    tiny_policy,
    varied_reward,
    write_stage1_checkpoint,
)
from peft import AutoPeftModelForCausalLM, LoraConfig
from safetensors.torch import load_file
from trl import GRPOTrainer

from trl_shaped import ShapedGRPOTrainer, shaped_loss
from trl_shaped.compat import REF_ADAPTER, use_adapter
from trl_shaped.lm_head import shaped_causal_lm_loss
from trl_shaped.tiny import build_char_tokenizer

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def checkpoint_weights(path) -> dict:
    return load_file(os.path.join(path, "model.safetensors"))


def same_weights(model, reference: dict, prefix: str = "") -> bool:
    state = {k.removeprefix(prefix): v for k, v in model.state_dict().items()}
    return all(torch.equal(state[name], value) for name, value in reference.items())


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    return write_stage1_checkpoint(tmp_path_factory.mktemp("stage1") / "full")


@pytest.fixture(scope="module")
def trained(stage1, tmp_path_factory):
    """Three GRPO steps from the stage-1 checkpoint with the prior as KL anchor; weights recorded before training."""
    args = grpo_config(tmp_path_factory.mktemp("rl"), max_steps=3, beta=0.1)
    trainer = ShapedGRPOTrainer(
        stage1, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer()
    )
    prior_before = {k: v.clone() for k, v in trainer.prior_model.state_dict().items()}
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    return trainer, prior_before, policy_before


def test_stage1_checkpoint_is_the_start_and_the_fixed_prior(stage1, trained):
    trainer, prior_before, policy_before = trained
    checkpoint = checkpoint_weights(stage1)
    assert same_weights_dict(policy_before, checkpoint) and same_weights_dict(prior_before, checkpoint)
    # after training: the prior is still the checkpoint, the policy moved
    assert same_weights(trainer.prior_model, checkpoint)
    assert not same_weights(trainer.model, checkpoint)
    assert trainer.ref_model is trainer.prior_model  # the KL anchor when beta > 0
    assert not any(p.requires_grad for p in trainer.prior_model.parameters())
    assert not trainer.prior_model.training


def same_weights_dict(state: dict, reference: dict) -> bool:
    return all(torch.equal(state[name], value) for name, value in reference.items())


def test_kl_to_prior_is_zero_at_step_0_and_grows(trained):
    trainer, _, _ = trained
    logs = [h for h in trainer.state.log_history if "kl_to_prior" in h]
    assert len(logs) == 3
    kl = [h["kl_to_prior"] for h in logs]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)
    assert 0 < kl[1] < kl[2]
    # step 0: same weights, so every statistic of the prior equals the policy's ...
    for name in ("entropy", "topk_entropy", "topk_mass", "nll"):
        assert logs[0][f"policy_{name}"] == pytest.approx(logs[0][f"prior_{name}"], abs=1e-5)
    # ... and the policy's entropy equals TRL's own (temperature 1, same completions, fused head)
    assert logs[0]["policy_entropy"] == pytest.approx(logs[0]["entropy"], rel=1e-4)
    # TRL's KL term against the prior (beta > 0): zero before the first update
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6) and logs[-1]["kl"] > 0
    for h in logs:
        assert 0 < h["policy_topk_mass"] <= 1 and 0 < h["policy_topk_entropy"] <= math.log(5) + 1e-5


def random_completions(vocab: int) -> dict:
    """A generation batch of 3 rows with ragged completion masks."""
    torch.manual_seed(0)
    prompt_ids = torch.randint(4, vocab, (3, 5))
    completion_ids = torch.randint(4, vocab, (3, 6))
    completion_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    return dict(
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones_like(prompt_ids),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
    )


def logged_drift(trainer, batch) -> dict:
    trainer._metrics["train"].clear()
    trainer._record_drift(batch)
    trainer._flush_drift()
    return {k: v[0] for k, v in trainer._metrics["train"].items()}


def assert_drift_matches_full_logits(logged: dict, batch: dict, policy_logits, prior_logits, top_k: int):
    """`policy_logits` / `prior_logits`: callables (input_ids, attention_mask) -> full logits."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    valid = batch["completion_mask"].bool()
    width = batch["completion_ids"].size(1)
    with torch.no_grad():
        logits = {
            name: forward(input_ids, attention_mask)[:, -width - 1 : -1][valid].double()
            for name, forward in (("policy", policy_logits), ("prior", prior_logits))
        }
    labels = batch["completion_ids"][valid]
    logp = {name: z.log_softmax(-1) for name, z in logits.items()}
    kl = (logp["policy"].exp() * (logp["policy"] - logp["prior"])).sum(-1).mean()
    assert logged["kl_to_prior"] == pytest.approx(kl.item(), rel=1e-4, abs=1e-7)
    for name, lp in logp.items():
        p = lp.exp()
        top = p.topk(top_k, dim=-1).values
        top_mass = top.sum(-1)
        q = top / top_mass.unsqueeze(-1)
        assert logged[f"{name}_entropy"] == pytest.approx(-(p * lp).sum(-1).mean().item(), rel=1e-4)
        assert logged[f"{name}_topk_mass"] == pytest.approx(top_mass.mean().item(), rel=1e-4)
        assert logged[f"{name}_topk_entropy"] == pytest.approx(-(q * q.log()).sum(-1).mean().item(), rel=1e-4)
        assert logged[f"{name}_nll"] == pytest.approx(-lp.gather(-1, labels[:, None]).mean().item(), rel=1e-4)
    return kl.item()


def test_drift_diagnostics_match_full_logits(trained):
    trainer, _, _ = trained
    batch = random_completions(len(trainer.processing_class))
    assert_drift_matches_full_logits(
        logged_drift(trainer, batch),
        batch,
        lambda ids, mask: trainer.model(input_ids=ids, attention_mask=mask).logits,
        lambda ids, mask: trainer.prior_model(input_ids=ids, attention_mask=mask).logits,
        trainer.args.diagnostics_top_k,
    )


def test_drift_diagnostics_read_the_policys_own_head_when_peft_saves_it(stage1, tmp_path):
    # `modules_to_save=["lm_head"]` gives the policy its own trainable copy of the head; the prior (adapters
    # disabled) keeps the original one.
    lora = LoraConfig(**LORA, modules_to_save=["lm_head"])
    args = grpo_config(tmp_path, max_steps=1)
    trainer = ShapedGRPOTrainer(
        stage1, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer(),
        peft_config=lora,
    )  # fmt: skip
    assert trainer.prior_kind == "adapters_disabled"
    policy_head = trainer.model.get_base_model().get_output_embeddings().modules_to_save["default"]
    with torch.no_grad():
        policy_head.weight.add_(0.5 * torch.randn_like(policy_head.weight))
    batch = random_completions(len(trainer.processing_class))
    logged = logged_drift(trainer, batch)

    def prior_logits(ids, mask):
        with trainer.model.disable_adapter():
            return trainer.model(input_ids=ids, attention_mask=mask).logits

    kl = assert_drift_matches_full_logits(
        logged,
        batch,
        lambda ids, mask: trainer.model(input_ids=ids, attention_mask=mask).logits,
        prior_logits,
        trainer.args.diagnostics_top_k,
    )
    assert kl > 1e-3 and logged["policy_nll"] != pytest.approx(logged["prior_nll"], rel=1e-3)


@pytest.mark.parametrize(
    "reuse", [dict(num_iterations=2), dict(per_device_train_batch_size=4, steps_per_generation=2)], ids=str
)
@pytest.mark.parametrize("diagnostics_steps", [1, 2])
def test_diagnostics_fire_every_diagnostics_steps_whatever_the_generation_reuse(tmp_path, reuse, diagnostics_steps):
    # One generation serves two optimizer steps (its completions trained on twice, or split over two steps)
    args = grpo_config(tmp_path, max_steps=4, diagnostics_steps=diagnostics_steps, **reuse)
    model, tokenizer = tiny_policy()
    trainer = ShapedGRPOTrainer(
        model, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=tokenizer
    )
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    diagnosed = [h["step"] for h in steps if "kl_to_prior" in h]
    assert diagnosed == [step for step in (1, 2, 3, 4) if (step - 1) % diagnostics_steps == 0]
    # the second step of a generation compares the updated policy: it has drifted
    if diagnostics_steps == 1:
        assert steps[0]["kl_to_prior"] == pytest.approx(0.0, abs=1e-6) and steps[1]["kl_to_prior"] > 0


def informative_prompt(prompt: str) -> bool:
    return int(prompt[0]) % 2 == 1  # "a+b=" with an odd a


@pytest.mark.parametrize("all_constant", [False, True])
def test_dynamic_sampling_refills_from_other_prompts(tmp_path, all_constant):
    calls = []

    def reward(completions, prompts, completion_ids, **kwargs):
        dense = varied_reward(completions, completion_ids)
        rewards = [
            r if informative_prompt(p) and not all_constant else 0.5 for p, r in zip(prompts, dense, strict=True)
        ]
        calls.append((list(prompts), rewards))
        return rewards

    rounds = 1 if all_constant else 6
    # 4 groups of 4 per generation batch; half the prompts (even a) give all-equal rewards
    args = grpo_config(
        tmp_path, max_steps=1, per_device_train_batch_size=16, dynamic_sampling=True, max_resample_rounds=rounds,
        diagnostics_steps=0,
    )  # fmt: skip
    model, tokenizer = tiny_policy()
    trainer = ShapedGRPOTrainer(model, [reward], args, train_dataset=arithmetic_prompts(), processing_class=tokenizer)
    trainer.train()
    log = trainer.state.log_history[0]

    groups = [(prompts[i : i + 4], rewards[i : i + 4]) for prompts, rewards in calls for i in range(0, 16, 4)]
    assert all(len(set(p)) == 1 for p, _ in groups)  # a group is one prompt
    dropped = [len(set(r)) == 1 for _, r in groups]
    assert log["dynamic_sampling/frac_groups_dropped"] == pytest.approx(sum(dropped) / len(groups))
    assert log["dynamic_sampling/rounds"] == len(calls) - 1
    # The reward of the kept groups (informative first, in generation order, then fillers), beside TRL's `reward`
    # over every generated completion
    order = [i for i, d in enumerate(dropped) if not d] + [i for i, d in enumerate(dropped) if d]
    kept = [r for i in order[:4] for r in groups[i][1]]
    assert log["dynamic_sampling/kept_reward_mean"] == pytest.approx(sum(kept) / len(kept), rel=1e-6)
    batch = trainer._buffered_inputs[0]
    final_prompts = {
        tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
    }
    if all_constant:
        assert len(calls) == 1 + rounds and log["dynamic_sampling/frac_groups_filled"] == 1.0
        assert (batch["advantages"] == 0).all()
        assert math.isfinite(log["loss"])
    else:
        first_call_prompts = set(calls[0][0])
        assert len(calls) >= 2  # generated again ...
        assert {p for prompts, _ in calls[1:] for p in prompts} - first_call_prompts  # ... on other prompts
        assert sum(not d for d in dropped) >= 4  # enough informative groups existed ...
        assert log["dynamic_sampling/frac_groups_filled"] == 0.0  # ... so the batch holds only those
        assert all(informative_prompt(p) for p in final_prompts)
        assert len(batch["advantages"]) == 16 and (batch["advantages"] != 0).all()
        assert batch["num_items_in_batch"] == batch["completion_mask"].sum()


def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _trainer_with_aux_data(tmp_path, **overrides):
    """A trainer with the tail_penalty shaping on auxiliary prompt-completion data (`overrides`: config fields)."""
    args = grpo_config(
        tmp_path, **{"shaping_preset": "tail_penalty", "shaping_top_k": 5, "aux_max_length": 32,
                     "diagnostics_steps": 0, **overrides},
    )  # fmt: skip
    model, tokenizer = tiny_policy()
    return ShapedGRPOTrainer(
        model, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=tokenizer,
        aux_dataset=arithmetic_solutions(),
    )  # fmt: skip


def _aux_trainer(tmp_path, coef):
    trainer = _trainer_with_aux_data(tmp_path, shaping_aux_coef=coef, aux_batch_size=3)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    prompts = arithmetic_prompts(2)
    inputs = [{"prompt": row["prompt"], "answer": row["answer"]} for row in prompts for _ in range(4)]
    torch.manual_seed(0)
    return trainer, trainer._generate_and_score_completions(inputs)


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_aux_shaped_loss_changes_the_gradient_only_when_coef_positive(tmp_path, coef):
    trainer, batch = _aux_trainer(tmp_path, coef)
    model = trainer.model
    g_rl = _grads(model, lambda: GRPOTrainer.compute_loss(trainer, model, batch))
    assert any(g.abs().sum() > 0 for g in g_rl)
    if coef == 0.0:
        assert trainer._aux_dataloader is None  # an aux_dataset with coef 0 is not even prepared
        g_total = _grads(model, lambda: trainer.compute_loss(model, batch))
        assert all(torch.equal(a, b) for a, b in zip(g_total, g_rl, strict=True))
        return
    aux_batch = trainer._next_aux_batch()
    trainer._next_aux_batch = lambda: aux_batch
    shaping = trainer.args.shaping
    g_aux = _grads(model, lambda: shaped_causal_lm_loss(model, aux_batch, shaping))
    g_total = _grads(model, lambda: trainer.compute_loss(model, batch))
    assert any(g.abs().sum() > 0 for g in g_aux)
    for total, rl, aux in zip(g_total, g_rl, g_aux, strict=True):
        torch.testing.assert_close(total, rl + coef * aux, rtol=1e-4, atol=1e-6)
    # the logged auxiliary loss is the shaped loss of the aux batch, checked on full logits
    with torch.no_grad():
        logits = model(input_ids=aux_batch["input_ids"], attention_mask=aux_batch["attention_mask"]).logits
    expected = shaped_loss(logits[:, :-1], aux_batch["labels"][:, 1:], config=shaping)
    assert trainer._metrics["train"]["aux_shaped_loss"][-1] == pytest.approx(expected.item(), rel=1e-4)
    assert (aux_batch["labels"] == -100).any()  # prompt-completion data: the prompt is not scored


def test_aux_shaped_loss_runs_under_the_models_autocast(tmp_path, monkeypatch):
    # Full-parameter GRPO with bf16 on CPU: accelerate runs the model's forward under bf16 autocast; the aux loss's
    # forward (backbone and head matmuls) must run under it too
    import trl_shaped.fused_loss
    import trl_shaped.grpo_trainer

    trainer = _trainer_with_aux_data(tmp_path, max_steps=1, bf16=True, shaping_aux_coef=0.5)
    model = trainer.model
    seen, in_aux = {"backbone": [], "head": []}, []
    layer = model.model.layers[0].self_attn.q_proj
    layer.register_forward_hook(
        lambda module, inputs, output: seen["backbone"].append(output.dtype) if in_aux else None
    )
    matmul_dtype = trl_shaped.fused_loss._matmul_dtype

    def recorded_matmul_dtype(weight):
        seen["head"].append(matmul_dtype(weight))
        return seen["head"][-1]

    monkeypatch.setattr(trl_shaped.fused_loss, "_matmul_dtype", recorded_matmul_dtype)
    aux_loss = trl_shaped.grpo_trainer.shaped_causal_lm_loss

    def recorded_aux_loss(*args, **kwargs):
        in_aux.append(True)
        try:
            return aux_loss(*args, **kwargs)
        finally:
            in_aux.clear()

    monkeypatch.setattr(trl_shaped.grpo_trainer, "shaped_causal_lm_loss", recorded_aux_loss)
    trainer.train()
    assert seen["backbone"] and set(seen["backbone"]) == {torch.bfloat16}
    assert seen["head"] and set(seen["head"]) == {torch.bfloat16}
    assert math.isfinite(trainer.state.log_history[0]["aux_shaped_loss"])


def test_aux_dataset_required_when_coef_positive(tmp_path):
    model, tokenizer = tiny_policy()
    with pytest.raises(ValueError, match="aux_dataset"):
        ShapedGRPOTrainer(
            model, [varied_reward], grpo_config(tmp_path, shaping_aux_coef=0.1), train_dataset=arithmetic_prompts(),
            processing_class=tokenizer,
        )  # fmt: skip


def test_lora_policy_with_adapters_disabled_prior(stage1, tmp_path):
    args = grpo_config(tmp_path, max_steps=3, beta=0.1)
    trainer = ShapedGRPOTrainer(
        stage1, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer(),
        peft_config=LoraConfig(**LORA),
    )  # fmt: skip
    assert trainer.prior_model is None and trainer.ref_model is None
    lora_before = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kl_to_prior" in h]
    assert logs[0]["kl_to_prior"] == pytest.approx(0.0, abs=1e-6)
    assert logs[-1]["kl_to_prior"] > 1e-5 and logs[-1]["kl"] > 0
    # the base (the prior) is untouched, the adapter moved
    base = {k.replace("base_layer.", ""): v for k, v in trainer.model.get_base_model().state_dict().items()}
    assert same_weights_dict(base, checkpoint_weights(stage1))
    assert any(not torch.equal(p, lora_before[k]) for k, p in trainer.model.named_parameters() if "lora_B" in k)


def distinct_storages(*modules) -> int:
    return len({p.untyped_storage().data_ptr() for m in modules for p in m.parameters()})


@pytest.mark.parametrize("as_instance", [False, True])
def test_stage1_lora_adapter_prior_is_a_frozen_adapter_on_the_shared_base(tmp_path, as_instance):
    adapter = write_stage1_checkpoint(tmp_path / "stage1_lora", peft_config=LoraConfig(**LORA))
    policy = AutoPeftModelForCausalLM.from_pretrained(adapter, is_trainable=True) if as_instance else adapter
    args = grpo_config(tmp_path / "rl", max_steps=2, beta=0.1)
    trainer = ShapedGRPOTrainer(
        policy, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer()
    )
    model = trainer.model
    assert trainer.prior_kind == "ref_adapter" and trainer.prior_model is None and trainer.ref_model is None
    # No second model: the only new storages are the frozen adapter's, one per LoRA tensor of the policy
    lora = [n for n, _ in model.named_parameters() if ".default." in n]
    refs = {n: p for n, p in model.named_parameters() if f".{REF_ADAPTER}." in n}
    assert len(refs) == len(lora) > 0 and not any(p.requires_grad for p in refs.values())
    assert distinct_storages(model) == len(list(model.parameters()))  # nothing aliased or duplicated
    base_params = len(list(model.parameters())) - 2 * len(lora)
    assert distinct_storages(model) == base_params + 2 * len(lora)
    # ... and under it the policy computes the stage-1 model (base + adapter, merged here independently)
    merged = AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload()
    base_model, _ = tiny_policy()
    ids = torch.randint(4, len(build_char_tokenizer()), (2, 7))
    with torch.no_grad(), use_adapter(model, REF_ADAPTER):
        prior_logits = model(input_ids=ids).logits
    torch.testing.assert_close(prior_logits, merged(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(prior_logits, base_model(input_ids=ids).logits, atol=1e-4)
    ref_before = {n: p.detach().clone() for n, p in refs.items()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kl_to_prior" in h]
    assert logs[0]["kl_to_prior"] == pytest.approx(0.0, abs=1e-6) and logs[-1]["kl_to_prior"] > 0
    # TRL's KL term uses the same frozen adapter: 0 before the first update
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6) and logs[-1]["kl"] > 0
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) and not after[n].requires_grad for n, v in ref_before.items())
    assert any(not torch.equal(after[n], after[n.replace(f".{REF_ADAPTER}.", ".default.")]) for n in refs)


@pytest.mark.parametrize("policy_kind", ["path", "instance", "lora"])
def test_no_prior_is_built_when_nothing_needs_it(stage1, tmp_path, policy_kind, monkeypatch):
    import trl_shaped.grpo_trainer as module

    loads = []
    monkeypatch.setattr(module, "load_causal_lm", lambda *a, **k: loads.append(a))
    policy = stage1 if policy_kind == "path" else tiny_policy()[0]
    peft = {"peft_config": LoraConfig(**LORA)} if policy_kind == "lora" else {}
    args = grpo_config(tmp_path, max_steps=1, beta=0.0, diagnostics_steps=0)
    trainer = ShapedGRPOTrainer(
        policy, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer(),
        **peft,
    )  # fmt: skip
    assert trainer.prior_kind == "none" and trainer.prior_model is None and trainer.ref_model is None and not loads
    assert trainer.reference_of_metric == {}
    assert not any(f".{REF_ADAPTER}." in n for n, _ in trainer.model.named_parameters())
    trainer.train()
    assert "kl_to_prior" not in trainer.state.log_history[0]
    # with the diagnostics on, the prior is back
    args = grpo_config(tmp_path, max_steps=1, beta=0.0, diagnostics_steps=1)
    trainer = ShapedGRPOTrainer(
        tiny_policy()[0], [varied_reward], args, train_dataset=arithmetic_prompts(),
        processing_class=build_char_tokenizer(),
    )  # fmt: skip
    assert trainer.prior_kind == "model" and trainer.prior_model is not None and trainer.ref_model is None


def test_sync_ref_model_syncs_the_kl_reference_as_trl_while_diagnostics_keep_the_prior(stage1, tmp_path, caplog):
    sync = {"max_steps": 3, "beta": 0.1, "ref_model_sync_steps": 1, "ref_model_mixup_alpha": 0.5}
    args = grpo_config(tmp_path / "ours", **sync)
    args.sync_ref_model = True  # the shared config mixin stops refusing it; set after __post_init__ here
    with caplog.at_level(logging.WARNING, logger="trl_shaped.grpo_trainer"):
        ours = ShapedGRPOTrainer(
            stage1, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer()
        )
    assert "synced" in ours.reference_of_metric["kl"] and "stage-1 prior" in ours.reference_of_metric["kl_to_prior"]
    # shown once, at the default (warning) level, each reference with the metrics that use it
    shown = [r.getMessage() for r in caplog.records if "references" in r.getMessage()]
    assert len(shown) == 1
    assert "kl compare with TRL's reference, synced towards the policy every 1 steps" in shown[0]
    assert (
        "kl_to_prior, prior_entropy, prior_topk_entropy, prior_topk_mass, prior_nll compare with the stage-1"
        in shown[0]
    )
    assert ours.ref_model is not ours.prior_model
    ours.train()
    stock_args = grpo_config(tmp_path / "stock", stock=True, sync_ref_model=True, **sync)
    stock = GRPOTrainer(
        stage1, [varied_reward], stock_args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer()
    )
    stock.train()
    # The KL reference follows TRL's: same losses, same KL term, same synced reference weights
    for key in ("loss", "kl", "reward"):
        got = [h[key] for h in ours.state.log_history if key in h and "train_runtime" not in h]
        want = [h[key] for h in stock.state.log_history if key in h and "train_runtime" not in h]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), key
    stock_ref = stock.ref_model.state_dict()
    assert all(torch.allclose(v, stock_ref[k], atol=1e-6) for k, v in ours.ref_model.state_dict().items())
    checkpoint = checkpoint_weights(stage1)
    assert not same_weights(ours.ref_model, checkpoint)  # it synced ...
    assert same_weights(ours.prior_model, checkpoint)  # ... while the diagnostics' prior stayed the stage-1 model
    logs = [h for h in ours.state.log_history if "kl_to_prior" in h]
    assert logs[-1]["kl_to_prior"] > 0 and logs[-1]["kl_to_prior"] != pytest.approx(logs[-1]["kl"], rel=1e-3)


def test_sync_ref_model_without_diagnostics_keeps_one_copy(stage1, tmp_path):
    args = grpo_config(tmp_path, max_steps=1, beta=0.1, diagnostics_steps=0)
    args.sync_ref_model = True
    trainer = ShapedGRPOTrainer(
        stage1, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer()
    )
    assert trainer.ref_model is not None and trainer.prior_model is None


def test_resume_keeps_the_stage1_prior_and_continues_like_the_uninterrupted_run(stage1, tmp_path):
    def run(output_dir, resume=None):
        args = grpo_config(output_dir, max_steps=4, beta=0.1, save_strategy="steps", save_steps=2)
        trainer = ShapedGRPOTrainer(
            stage1, [varied_reward], args, train_dataset=arithmetic_prompts(), processing_class=build_char_tokenizer()
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    logged = {name: [[h[key] for h in t.state.log_history if "loss" in h] for t in (full, resumed)]
              for name, key in (("loss", "loss"), ("kl", "kl_to_prior"), ("reward", "reward"))}  # fmt: skip
    # The resumed trainer restores steps 1-2 of the log from checkpoint-2 and computes steps 3-4 itself: with the RNG
    # state restored, the same completions and weights give the same rewards, KL and losses up to float32 rounding.
    for name, (uninterrupted, continued) in logged.items():
        assert len(continued) == len(uninterrupted) == 4, name
        assert continued[2:] == pytest.approx(uninterrupted[2:], rel=1e-4, abs=1e-6), name
    # The prior is still the stage-1 checkpoint, not the policy's checkpoint-2 weights it resumed from
    assert same_weights(resumed.prior_model, checkpoint_weights(stage1))
    assert not same_weights(resumed.prior_model, checkpoint_weights(tmp_path / "full" / "checkpoint-2"))
