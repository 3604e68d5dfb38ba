"""`ShapedGRPOTrainer`: TRL's `GRPOTrainer` started from a stage-1 checkpoint that it keeps as its prior.

On top of GRPO it adds, through TRL's hooks:

- the prior (stage-1 checkpoint): TRL's `ref_model` (the KL anchor) when `beta > 0`, and whatever `beta`, the baseline
  of drift diagnostics computed on the sampled completions every `diagnostics_steps` optimizer steps;
- DAPO dynamic sampling around `_generate_and_score_completions`: groups whose rewards are all equal are replaced by
  groups generated from further prompts;
- an optional auxiliary shaped loss on supervised data, added in `compute_loss`.
"""

import copy
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader
from trl import GRPOTrainer, SFTTrainer
from trl.models.utils import prepare_deepspeed, prepare_fsdp
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import (
    RepeatSampler,
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    maybe_gather_lm_head_ctx,
    use_adapter,
)

from .checkpoints import SafeCheckpointsMixin
from .diagnostics import distribution_stats
from .fused_loss import _chunk_logits, default_chunk_size
from .loss import compute_dtype
from .grpo_config import ShapedGRPOConfig
from .sft_trainer import PAPER, _logit_transform, shaped_causal_lm_loss

# Drift diagnostics logged every `diagnostics_steps` steps (policy and prior on the same sampled tokens).
DRIFT_STATS = ("entropy", "topk_entropy", "topk_mass", "nll")
# Batch fields that are per-token (padded on the right) or per-prompt-token (padded on the left), and their padding.
_LEFT_PADDED = {"prompt_ids", "prompt_mask"}
_PAD_ONE = {"tool_mask", "importance_sampling_ratio"}


def _project(hidden, weight, bias, logit_scale, softcap) -> torch.Tensor:
    """Float32 logits of one chunk, through the same projection (scale, softcap) as the fused loss."""
    out = hidden.new_empty((hidden.shape[0], weight.shape[0]), dtype=compute_dtype(weight.dtype))
    mm_out = None if weight.dtype == out.dtype else hidden.new_empty(out.shape, dtype=weight.dtype)
    return _chunk_logits(hidden.to(weight.dtype), weight, bias, logit_scale, softcap, out, mm_out)


def _is_adapter_dir(path) -> bool:
    return isinstance(path, str) and os.path.isfile(os.path.join(path, "adapter_config.json"))


def _load_causal_lm(path: str, merge_adapter: bool, **kwargs):
    """A causal LM from a full checkpoint, or from a LoRA adapter directory (trainable, or merged when asked)."""
    if _is_adapter_dir(path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=not merge_adapter, **kwargs)
        return model.merge_and_unload() if merge_adapter else model
    return create_model_from_path(path, **kwargs)


class ShapedGRPOTrainer(SafeCheckpointsMixin, GRPOTrainer):
    """[`~trl.GRPOTrainer`] for stage 2 of arXiv 2512.22955: RL from a stage-1 (shaped) prior, watched against it.

    Everything `GRPOTrainer` accepts works the same. Additions, set by [`ShapedGRPOConfig`]:

    - `model` may also be the path of a LoRA adapter written by stage 1 (loaded trainable).
    - The prior (`prior_model_name_or_path`; default: the policy's starting weights) never receives gradients. It is
      TRL's reference model when `beta > 0`. With a new LoRA adapter (`peft_config`) and no prior path, the prior is
      the base model with the adapters disabled (no copy is made).
    - Every `diagnostics_steps` optimizer steps, on the completions just sampled: `kl_to_prior` (KL(policy || prior)
      over the full vocabulary, averaged over completion tokens), and for both models `{policy,prior}_entropy`,
      `_topk_entropy`, `_topk_mass` (k = `diagnostics_top_k`) and `_nll` (of the sampled tokens). They use the
      untempered distributions. TRL's own `entropy`, `completions/mean_length`, `reward` and `reward_std` are logged
      as usual.
    - `dynamic_sampling`: see [`ShapedGRPOConfig`]; logs `dynamic_sampling/frac_groups_dropped` (uninformative
      groups over all groups generated for the batch), `dynamic_sampling/rounds` (extra generation rounds) and
      `dynamic_sampling/frac_groups_filled` (uninformative groups left in the batch).
    - `aux_dataset` with `shaping_aux_coef > 0`: each micro-batch adds `shaping_aux_coef` x the shaped loss
      (`ShapedGRPOConfig.shaping`) on a batch of it; logs `aux_shaped_loss`.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, reward_processing_classes,
        callbacks, optimizers, peft_config, ...: as in [`~trl.GRPOTrainer`] (keywords after `args` are passed on).
        aux_dataset ([`~datasets.Dataset`], *optional*): supervised data for the auxiliary shaped loss: plain text
            (`text` column), prompt-completion (loss on the completion only) or conversational; tokenised by TRL's
            SFT data preparation and truncated to `aux_max_length` tokens.
    """

    _tag_names = ["trl", "grpo", "trl_shaped"]
    _name = "Shaped GRPO"
    _paper = PAPER

    def __init__(self, model, reward_funcs=None, args: ShapedGRPOConfig | None = None, *, aux_dataset=None, **kwargs):
        if args is None:
            name = (model if isinstance(model, str) else model.config._name_or_path or "model").rstrip("/")
            args = ShapedGRPOConfig(f"{os.path.basename(name)}-ShapedGRPO")
        if not isinstance(args, ShapedGRPOConfig):
            raise ValueError(f"args must be a ShapedGRPOConfig, got {type(args).__name__}")
        if args.shaping_aux_coef > 0 and aux_dataset is None:
            raise ValueError("shaping_aux_coef > 0 needs an aux_dataset; pass aux_dataset= or set shaping_aux_coef=0")
        train_dataset = kwargs.get("train_dataset")
        if args.dynamic_sampling and isinstance(train_dataset, torch.utils.data.IterableDataset):
            raise ValueError("dynamic_sampling needs a map-style train_dataset (it draws further prompts from it)")

        policy_path = model if isinstance(model, str) else None
        if _is_adapter_dir(model):
            model = _load_causal_lm(model, merge_adapter=False, **(args.model_init_kwargs or {}))
        prior_path = args.prior_model_name_or_path
        prior = None
        adapters_off = prior_path is None and kwargs.get("peft_config") is not None
        if prior_path is None and not adapters_off:
            if policy_path is not None:
                prior_path = policy_path
            else:
                # The policy's starting weights, taken before anything (PEFT wrapping, DeepSpeed) touches them; a
                # PEFT model carrying a stage-1 adapter is merged into a plain copy.
                prior = copy.deepcopy(model)
                if is_peft_model(prior):
                    prior = prior.merge_and_unload()

        # TRL builds its reference model from the policy's own path when beta != 0. The reference must be the prior
        # instead, so TRL is initialised with beta = 0 (no reference built) and the prior is installed below.
        beta, args.beta = args.beta, 0.0
        try:
            super().__init__(model, reward_funcs, args, **kwargs)
        finally:
            args.beta = beta
        self.beta = beta

        if prior is None and prior_path is not None:
            prior = _load_causal_lm(prior_path, merge_adapter=True, **self._prior_init_kwargs())
        self.prior_model = None if prior is None else self._prepare_prior(prior)
        if self.beta != 0.0 and self.prior_model is not None:
            # TRL's KL term. Without a separate prior (new LoRA adapter) TRL already scores the reference with the
            # adapters disabled, which is the prior.
            self.ref_model = self.prior_model

        self._resample_iterator, self._resample_epoch = None, 0
        self._last_rewards_per_func = None
        self._aux_iterator = None
        self._aux_dataloader = self._build_aux_dataloader(aux_dataset) if args.shaping_aux_coef > 0 else None

    # ------------------------------------------------------------------ prior
    def _prior_init_kwargs(self) -> dict:
        # As TRL loads its reference model: the policy's dtype and attention, no device map when distributed.
        kwargs = dict(self.args.model_init_kwargs or {})
        if self.args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            kwargs["device_map"] = None
        kwargs.setdefault("trust_remote_code", self.args.trust_remote_code)
        kwargs.setdefault("dtype", self.model.dtype)
        kwargs.setdefault("attn_implementation", self.model.config._attn_implementation)
        return kwargs

    def _prepare_prior(self, prior):
        prior.requires_grad_(False)
        prior.eval()
        if self.args.disable_dropout:
            disable_dropout_in_model(prior)
        # TRL scores its reference model with `fused_lm_head=True`
        add_fused_lm_head(prior, temperature=self.temperature, cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)
        if self.is_deepspeed_enabled:
            return self._prepare_deepspeed_prior(prior)
        if self.is_fsdp_enabled:
            return prepare_fsdp(prior, self.accelerator)
        return self.accelerator.prepare_model(prior, evaluation_mode=True)

    def _prepare_deepspeed_prior(self, prior):
        # Before `train()` the DeepSpeed config may hold a train_batch_size computed for one accumulation step,
        # which DeepSpeed rejects when gradient_accumulation_steps > 1. The prior never trains, so TRL's preparation
        # runs on a copy without the batch fields and DeepSpeed derives them.
        plugin = self.accelerator.state.deepspeed_plugin
        config = plugin.deepspeed_config
        plugin.deepspeed_config = {k: v for k, v in config.items() if k not in ("train_batch_size",)}
        try:
            return prepare_deepspeed(prior, self.accelerator)
        finally:
            plugin.deepspeed_config = config

    def _policy_and_prior(self):
        """(policy causal LM, prior causal LM, context manager to enter while the prior runs)."""
        policy = self.accelerator.unwrap_model(self.model)
        if self.prior_model is None:  # PEFT policy, prior = base model with the adapters disabled
            base = policy.get_base_model()
            return base, base, lambda: use_adapter(policy, adapter_name=None)
        policy = policy.get_base_model() if is_peft_model(policy) else policy
        return policy, self.accelerator.unwrap_model(self.prior_model), torch.no_grad

    # ------------------------------------------------------------------ generation hooks
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func  # gathered over processes: every rank sees all groups
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return batch
        if self.args.dynamic_sampling:
            batch = self._dynamic_sampling(batch, len(inputs))
        steps = self.args.diagnostics_steps
        if steps > 0 and self.state.global_step % steps == 0:
            self._log_drift_diagnostics(batch)
        return batch

    # ------------------------------------------------------------------ dynamic sampling (DAPO)
    def _informative_groups(self) -> torch.Tensor:
        """Boolean (global groups,) tensor: the group's rewards are not all equal, so its advantages are not all 0."""
        rewards = self._last_rewards_per_func
        weights = self.reward_weights.to(rewards.device)
        if self.multi_objective_aggregation == "sum_then_normalize":
            rewards = (rewards * weights).nansum(dim=1, keepdim=True)
        grouped = rewards.view(-1, self.num_generations, rewards.size(-1))
        # NaN (unscorable) completions get zero advantage: compare only the scored ones
        spread = grouped.nan_to_num(nan=-torch.inf).amax(dim=1) - grouped.nan_to_num(nan=torch.inf).amin(dim=1)
        return (spread > 1e-8).any(dim=-1).cpu()

    def _next_resample_inputs(self) -> list[dict]:
        """The next local generation batch from a second pass over the prompts, shuffled with another seed."""
        for _ in range(2):
            if self._resample_iterator is None:
                self._resample_epoch += 1
                sampler = RepeatSampler(
                    data_source=self.train_dataset,
                    mini_repeat_count=self.num_generations,
                    batch_size=self.args.generation_batch_size // self.num_generations,
                    repeat_count=1,
                    shuffle=True,
                    seed=self.args.seed + self._resample_epoch,
                )
                loader = self._get_dataloader(
                    dataset=self.train_dataset,
                    description="Training",
                    batch_size=self._train_batch_size * self.args.steps_per_generation,
                    sampler_fn=lambda _dataset, sampler=sampler: sampler,
                    is_training=True,
                )
                self._resample_iterator = iter(loader)
            try:
                return next(self._resample_iterator)
            except StopIteration:
                self._resample_iterator = None
        raise ValueError("dynamic_sampling: the train_dataset is too small to fill one generation batch")

    def _gather_batch(self, batch: dict, local_size: int) -> dict:
        """Every process's rows of a generated batch, padded to a common width, in process order."""
        gathered = {}
        for key, value in batch.items():
            if key == "num_items_in_batch":
                continue
            if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == local_size):
                raise ValueError(
                    f"dynamic_sampling does not support the batch field {key!r} (multimodal or tool data)"
                )
            if value.dim() >= 2:
                value = self.accelerator.pad_across_processes(
                    value, dim=1, pad_index=self._pad_value(key), pad_first=key in _LEFT_PADDED
                )
            gathered[key] = self.accelerator.gather(value)
        return gathered

    def _pad_value(self, key: str):
        if key in ("prompt_ids", "completion_ids"):
            return self._tokenizer.pad_token_id
        return 1 if key in _PAD_ONE else 0

    def _concat_rounds(self, rounds: list[dict]) -> dict:
        merged = {}
        for key in rounds[0]:
            parts = [r[key] for r in rounds]
            if parts[0].dim() >= 2:
                width = max(p.size(1) for p in parts)
                left = key in _LEFT_PADDED
                parts = [
                    F.pad(p, (width - p.size(1), 0) if left else (0, width - p.size(1)), value=self._pad_value(key))
                    for p in parts
                ]
            merged[key] = torch.cat(parts)
        return merged

    def _dynamic_sampling(self, batch: dict, local_size: int) -> dict:
        informative = [self._informative_groups()]
        wanted = informative[0].numel()
        if bool(informative[0].all()):
            self._log_dynamic_sampling(dropped=0, generated=wanted, rounds=0, filled=0)
            return batch
        rounds = [self._gather_batch(batch, local_size)]
        # Every rank takes the same decisions: they depend only on the gathered rewards.
        while sum(int(f.sum()) for f in informative) < wanted and len(rounds) <= self.args.max_resample_rounds:
            more = self._next_resample_inputs()
            rounds.append(self._gather_batch(super()._generate_and_score_completions(more), len(more)))
            informative.append(self._informative_groups())
        flags = torch.cat(informative)
        # Informative groups first, in generation order; uninformative ones only to complete the batch
        order = torch.cat([flags.nonzero().squeeze(1), (~flags).nonzero().squeeze(1)])[:wanted]
        rows = (order.unsqueeze(1) * self.num_generations + torch.arange(self.num_generations)).reshape(-1)
        merged = self._concat_rounds(rounds)
        selected = {key: value[rows.to(value.device)] for key, value in merged.items()}
        loss_mask = selected["completion_mask"] * selected.get("tool_mask", 1)
        start = self.accelerator.process_index * local_size
        local = {key: value[start : start + local_size] for key, value in selected.items()}
        local = self._trim_padding(local)
        local["num_items_in_batch"] = loss_mask.sum()
        generated = flags.numel()
        self._log_dynamic_sampling(
            dropped=int((~flags).sum()), generated=generated, rounds=len(rounds) - 1, filled=int((~flags[order]).sum())
        )
        return local

    @staticmethod
    def _trim_padding(batch: dict) -> dict:
        # Columns that no local row uses: left of every prompt, right of every completion
        prompt_used = batch["prompt_mask"].any(dim=0).nonzero()
        first = int(prompt_used[0]) if prompt_used.numel() else 0
        completion_used = batch["completion_mask"].any(dim=0).nonzero()
        last = int(completion_used[-1]) + 1 if completion_used.numel() else 1
        for key, value in batch.items():
            if key in _LEFT_PADDED:
                batch[key] = value[:, first:]
            elif value.dim() >= 2:
                batch[key] = value[:, :last]
        return batch

    def _log_dynamic_sampling(self, dropped: int, generated: int, rounds: int, filled: int) -> None:
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/frac_groups_dropped"].append(dropped / generated)
        metrics["dynamic_sampling/rounds"].append(float(rounds))
        wanted = self.args.generation_batch_size // self.num_generations
        metrics["dynamic_sampling/frac_groups_filled"].append(filled / wanted)

    # ------------------------------------------------------------------ drift diagnostics
    @torch.no_grad()
    def _log_drift_diagnostics(self, batch: dict) -> None:
        """KL(policy || prior) and both models' entropy statistics on the sampled completion tokens."""
        policy, prior, prior_context = self._policy_and_prior()
        completion_ids = batch["completion_ids"]
        mask = batch["completion_mask"] * batch.get("tool_mask", 1)
        input_ids = torch.cat([batch["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        width = completion_ids.size(1)
        k = self.args.diagnostics_top_k
        sums = torch.zeros(2 * len(DRIFT_STATS) + 2, device=completion_ids.device)
        rows = self.args.per_device_train_batch_size
        for start in range(0, input_ids.size(0), rows):
            chunk = slice(start, start + rows)
            valid = mask[chunk].bool()
            labels = completion_ids[chunk][valid]
            hidden_policy = self._completion_hidden(policy, input_ids[chunk], attention_mask[chunk], width)[valid]
            with prior_context():
                hidden_prior = self._completion_hidden(prior, input_ids[chunk], attention_mask[chunk], width)[valid]
            sums += self._drift_sums(policy, prior, prior_context, hidden_policy, hidden_prior, labels, k)
        sums = self.accelerator.reduce(sums, reduction="sum")
        count = sums[-1].clamp(min=1.0)
        metrics = self._metrics["train"]
        metrics["kl_to_prior"].append((sums[-2] / count).item())
        for i, name in enumerate(DRIFT_STATS):
            metrics[f"policy_{name}"].append((sums[i] / count).item())
            metrics[f"prior_{name}"].append((sums[len(DRIFT_STATS) + i] / count).item())

    @staticmethod
    def _completion_hidden(model, input_ids, attention_mask, width):
        # Final hidden states at the positions that predict the completion tokens (as TRL's fused head scores them)
        outputs = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return outputs.last_hidden_state[:, -width - 1 : -1]

    @staticmethod
    def _drift_sums(policy, prior, prior_context, hidden_policy, hidden_prior, labels, k) -> torch.Tensor:
        """Sums over tokens of the policy's and the prior's DRIFT_STATS, of KL(policy || prior), and the count."""
        heads = []
        for model, context in ((policy, torch.no_grad), (prior, prior_context)):
            head = model.get_output_embeddings()
            heads.append((head, *_logit_transform(model.config.get_text_config()), context))
        total = torch.zeros(2 * len(DRIFT_STATS) + 2, device=labels.device)
        if labels.numel() == 0:
            return total
        step = default_chunk_size(labels.numel(), heads[0][0].weight.shape[0] or 1)
        (head_p, scale_p, cap_p, _), (head_q, scale_q, cap_q, ctx_q) = heads
        with maybe_gather_lm_head_ctx(head_p.weight, head_p.bias, head_q.weight, head_q.bias), ctx_q():
            # With PEFT and the adapters disabled, policy and prior share the head; an adapter on the head is
            # bypassed here (the heads' base weights are used), which the LoRA target modules rarely include.
            weight_p, bias_p = _head_params(head_p)
            weight_q, bias_q = _head_params(head_q)
            for start in range(0, labels.numel(), step):
                part = slice(start, start + step)
                z_p = _project(hidden_policy[part], weight_p, bias_p, scale_p, cap_p)
                z_q = _project(hidden_prior[part], weight_q, bias_q, scale_q, cap_q)
                stats_p = distribution_stats(z_p, labels[part], top_k=k, reduction="sum")
                stats_q = distribution_stats(z_q, labels[part], top_k=k, reduction="sum")
                log_p, log_q = z_p.log_softmax(-1), z_q.log_softmax(-1)
                kl = (log_p.exp() * (log_p - log_q)).sum()
                values = [stats_p[n] for n in DRIFT_STATS] + [stats_q[n] for n in DRIFT_STATS]
                total += torch.stack([*values, kl, stats_p["num_tokens"]])
        return total

    # ------------------------------------------------------------------ auxiliary shaped loss
    def _build_aux_dataloader(self, dataset) -> DataLoader:
        # TRL's SFT data preparation (chat templates, completion-only labels, EOS, truncation) is a method of
        # SFTTrainer that reads a few attributes of the trainer and its config; it is run here on stand-ins for them.
        sft_self = SimpleNamespace(_tokenizer=self._tokenizer, chat_template=None, completion_only_loss=True)
        sft_args = SimpleNamespace(
            assistant_only_loss=False,
            dataset_num_proc=None,
            dataset_text_field="text",
            max_length=self.args.aux_max_length,
            packing_strategy=None,
            seed=self.args.seed,
            shuffle_dataset=False,
            truncation_mode="keep_start",
        )
        with self.accelerator.main_process_first():
            prepared = SFTTrainer._prepare_dataset(
                sft_self, dataset, self.processing_class, sft_args, False, None, "auxiliary"
            )
        prepared = prepared.select_columns(["input_ids", "labels"])
        # Each process draws its own batches (a different shuffle per rank)
        generator = torch.Generator().manual_seed(self.args.seed + self.accelerator.process_index)
        return DataLoader(
            prepared,
            batch_size=self.args.aux_batch_size or self.args.per_device_train_batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=DataCollatorForLanguageModeling(pad_token_id=self._tokenizer.pad_token_id),
        )

    def _next_aux_batch(self) -> dict:
        for _ in range(2):
            if self._aux_iterator is None:
                self._aux_iterator = iter(self._aux_dataloader)
            try:
                batch = next(self._aux_iterator)
                return {key: value.to(self.accelerator.device) for key, value in batch.items()}
            except StopIteration:
                self._aux_iterator = None
        raise ValueError("aux_dataset is empty after preparation")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._aux_dataloader is None or not self.model.training:
            return loss
        aux_loss = shaped_causal_lm_loss(model, self._next_aux_batch(), self.args.shaping)
        # TRL's loss is already scaled for gradient accumulation (Trainer's own scaling is off): scale alike
        loss = loss + self.args.shaping_aux_coef * aux_loss / self.current_gradient_accumulation_steps
        self._metrics["train"]["aux_shaped_loss"].append(self.accelerator.gather(aux_loss.detach()).mean().item())
        return loss


def _head_params(head):
    # A PEFT `modules_to_save` / LoRA wrapper on the head: read the wrapped base layer's parameters
    base = getattr(head, "base_layer", head)
    return base.weight, base.bias
