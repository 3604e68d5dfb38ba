"""`ShapedGRPOTrainer`: TRL's `GRPOTrainer` started from a stage-1 checkpoint that it keeps as its prior.

On top of GRPO it adds, through TRL's hooks (each concern's logic in its own module, the trainer holding the hooks):

- the prior (stage-1 checkpoint, `prior.py`): TRL's reference (the KL anchor) when `beta > 0`, and the baseline of
  drift diagnostics (`drift.py`, their inputs gathered under ZeRO-3 or FSDP2 by `drift_gather.py`) computed on the
  sampled completions every `diagnostics_steps` optimizer steps. It is held as cheaply as TRL holds its reference: no
  copy for a new LoRA adapter (adapters disabled), a frozen adapter copy on the shared base for a PEFT policy carrying
  a stage-1 adapter, a full frozen copy otherwise, and nothing when nothing reads it;
- DAPO dynamic sampling around `_generate_and_score_completions` (the decisions are the pure functions of
  `dynamic_sampling.py`): groups whose advantages are all equal are replaced by groups generated from further prompts;
- an optional auxiliary shaped loss on supervised data (prepared by TRL's SFT preparation, `aux_data.py`), added in
  `compute_loss`.

TRL's private helpers are imported through `compat.py` only.
"""

import copy
import os

import torch
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader
from transformers.utils import logging
from trl import GRPOTrainer, SyncRefModelCallback

from . import dynamic_sampling
from .aux_data import check_aux_dataset, prepare_aux_dataset
from .checkpoints import SafeCheckpointsMixin
from .compat import (
    DataCollatorForLanguageModeling,
    RepeatSampler,
    trl_builds_no_reference,
)
from .drift import drift_means
from .drift_gather import completion_drift_sums
from .fsdp import check_fsdp_version
from .grpo_config import ShapedGRPOConfig
from .lm_head import shaped_causal_lm_loss
from .paper import PAPER
from .prior import (
    check_vocabularies,
    choose_prior,
    describe_references,
    is_adapter_dir,
    load_causal_lm,
    prepare_frozen_prior,
    prior_init_kwargs,
    vocab_rows,
)

logger = logging.get_logger(__name__)


class ShapedGRPOTrainer(SafeCheckpointsMixin, GRPOTrainer):
    """[`~trl.GRPOTrainer`] for stage 2 of arXiv 2512.22955: RL from a stage-1 (shaped) prior, watched against it.

    Everything `GRPOTrainer` accepts works the same. Additions, set by [`ShapedGRPOConfig`]:

    - `model` may also be the path of a LoRA adapter written by stage 1 (loaded trainable).
    - The prior (`prior_model_name_or_path`; default: the policy's starting weights) never receives gradients. It is
      TRL's reference model when `beta > 0` and the baseline of the drift diagnostics when `diagnostics_steps > 0`;
      when neither reads it, none is loaded (as TRL loads no reference at `beta = 0`). It costs what TRL's reference
      costs (`prior_kind` says which applies):

      - `"adapters_disabled"`: a new LoRA adapter (`peft_config`) and no prior path: the base model with the adapters
        disabled, no copy;
      - `"ref_adapter"`: a PEFT policy carrying a stage-1 adapter (a `PeftModel`, or an adapter directory as `model`)
        and no prior path: a frozen copy of the adapter, named `"ref"`, on the shared base weights (TRL's own
        reference for such a policy), i.e. the adapter's size;
      - `"model"`: otherwise, a full frozen copy of the stage-1 model (`prior_model_name_or_path`, the policy's path,
        or a copy of the policy instance), like TRL's reference model. With `beta = 0` and diagnostics on this is
        the one model TRL would not load.

    - `sync_ref_model=True` (with `beta > 0`, full policy) works as in TRL: the KL term's reference (`kl`) is mixed
      towards the policy every `ref_model_sync_steps`, while the drift diagnostics (`kl_to_prior`, `prior_*`) keep
      comparing with the fixed stage-1 prior. With diagnostics on, that takes a second full copy of the stage-1 model
      (the synced reference and the fixed prior), one model more than TRL; with `diagnostics_steps=0` no extra copy
      is made. `reference_of_metric` maps each metric to the model it compares with (also logged once, as a warning
      on the main process, when the trainer is built).
    - Every `diagnostics_steps` optimizer steps (whatever the generation reuse: `num_iterations`,
      `steps_per_generation`), on the completions that step trains on: `kl_to_prior` (KL(policy || prior)
      over the full vocabulary, averaged over completion tokens), and for both models `{policy,prior}_entropy`,
      `_topk_entropy`, `_topk_mass` (k = `diagnostics_top_k`) and `_nll` (of the sampled tokens). They use the
      untempered distributions. TRL's own `entropy`, `completions/mean_length`, `reward` and `reward_std` are logged
      as usual.
    - `dynamic_sampling`: see [`ShapedGRPOConfig`]; a group is uninformative when its advantages are all equal (its
      rewards were). Logs `dynamic_sampling/frac_groups_dropped` (uninformative groups over all groups generated for
      the batch), `dynamic_sampling/rounds` (extra generation rounds), `dynamic_sampling/frac_groups_filled`
      (uninformative groups left in the batch) and `dynamic_sampling/kept_reward_mean` (the mean reward of the groups
      kept in the batch; TRL's `reward` and `completions/*` describe every completion generated, dropped ones too).
    - `aux_dataset` with `shaping_aux_coef > 0`: each micro-batch adds `shaping_aux_coef` x the shaped loss
      (`ShapedGRPOConfig.shaping`) on a batch of it; logs `aux_shaped_loss`.

    Policy, prior and tokenizer vocabularies are checked at construction.

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, reward_processing_classes,
        callbacks, optimizers, peft_config, ...: as in [`~trl.GRPOTrainer`] (keywords after `args` are passed on).
        aux_dataset ([`~datasets.Dataset`], *optional*): supervised data for the auxiliary shaped loss: plain text
            (`text` column), prompt-completion (loss on the completion only), conversational (`messages` or ShareGPT
            `conversations`) or tokenized (`input_ids`); tokenised as TRL's SFT preparation does and truncated to
            `aux_max_length` tokens.
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
        if aux_dataset is not None:
            check_aux_dataset(aux_dataset)
        train_dataset = kwargs.get("train_dataset")
        if args.dynamic_sampling and isinstance(train_dataset, torch.utils.data.IterableDataset):
            raise ValueError("dynamic_sampling needs a map-style train_dataset (it draws further prompts from it)")

        policy_path = model if isinstance(model, str) else None
        new_adapter = kwargs.get("peft_config") is not None
        _check_sync_ref_model(
            args, peft_policy=new_adapter or is_adapter_dir(model) or (policy_path is None and is_peft_model(model))
        )
        if is_adapter_dir(model):
            model = load_causal_lm(model, merge_adapter=False, **(args.model_init_kwargs or {}))
        # How the prior is held (prior.py): decided, and copied where needed, before TRL (PEFT wrapping, DeepSpeed)
        # touches the policy's starting weights.
        self.prior_kind, prior_path, prior = choose_prior(args, model, new_adapter, policy_path)

        # TRL would build its own reference from the policy; the prior is installed as the reference below instead.
        with trl_builds_no_reference(args):
            super().__init__(model, reward_funcs, args, **kwargs)
        check_fsdp_version(self.accelerator)
        self.beta = args.beta
        self._install_prior(prior, prior_path)
        self.reference_of_metric = describe_references(self.prior_kind, self.args)
        if self.reference_of_metric and self.accelerator.is_main_process:
            logger.warning(f"ShapedGRPOTrainer references: {_group_by_reference(self.reference_of_metric)}")

        self._resample_iterator, self._resample_epoch, self._round_rewards = None, 0, None
        self._aux_iterator, self._pending_drift = None, None
        self._aux_dataloader = self._build_aux_dataloader(aux_dataset) if args.shaping_aux_coef > 0 else None

    # ------------------------------------------------------------------ prior
    def _install_prior(self, prior, prior_path: str | None) -> None:
        """Load a `"model"` prior, check the vocabularies and install the prior as TRL's reference and/or the
        diagnostics' baseline (`prior_model`, `ref_model`)."""
        args = self.args
        if prior is None and prior_path is not None:
            prior = load_causal_lm(prior_path, merge_adapter=True, **prior_init_kwargs(args, self.model))
        check_vocabularies(vocab_rows(self.model), len(self._tokenizer), None if prior is None else vocab_rows(prior))
        self.prior_model = self.ref_model = None
        if prior is not None and self.beta != 0.0 and args.sync_ref_model:
            # The synced reference drifts towards the policy: the diagnostics need the fixed prior beside it (a
            # second copy), unless they are off.
            keep_prior = args.diagnostics_steps > 0
            self.ref_model = prepare_frozen_prior(copy.deepcopy(prior) if keep_prior else prior, self)
            self.prior_model = prepare_frozen_prior(prior, self) if keep_prior else None
        elif prior is not None:
            self.prior_model = prepare_frozen_prior(prior, self)
            self.ref_model = self.prior_model if self.beta != 0.0 else None
        if args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

    # ------------------------------------------------------------------ generation hook
    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return batch
        if self.args.dynamic_sampling:
            batch = self._dynamic_sampling(batch, len(inputs))
        return batch

    # ------------------------------------------------------------------ dynamic sampling (DAPO)
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Every process's rewards of this round (TRL gathers them), kept for the reward of the kept groups
        self._round_rewards = dynamic_sampling.row_rewards(rewards_per_func.detach().cpu(), self.reward_weights)
        return rewards_per_func

    def _informative_groups(self, batch: dict) -> torch.Tensor:
        # One float per completion crosses processes: every rank sees every group's advantages, decides alike
        advantages = self.accelerator.gather(batch["advantages"]).float().cpu()
        return dynamic_sampling.informative_groups(advantages, self.num_generations)

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

    def _dynamic_sampling(self, batch: dict, local_size: int) -> dict:
        """Generate further rounds until the batch can be filled with informative groups, then assemble it."""
        rounds = [dynamic_sampling.check_batch_fields(batch, local_size)]
        flags = [self._informative_groups(batch)]
        rewards = [self._round_rewards]
        wanted = flags[0].numel()
        while sum(int(f.sum()) for f in flags) < wanted and len(rounds) <= self.args.max_resample_rounds:
            more = self._next_resample_inputs()
            extra = super()._generate_and_score_completions(more)
            rounds.append(dynamic_sampling.check_batch_fields(extra, len(more)))
            flags.append(self._informative_groups(extra))
            rewards.append(self._round_rewards)
        flags = torch.cat(flags)
        order = dynamic_sampling.select_groups(flags, wanted)
        metrics = self._metrics["train"]
        for key, value in dynamic_sampling.sampling_stats(flags, order, len(rounds) - 1, wanted).items():
            metrics[key].append(value)
        # TRL's `reward` and `completions/*` describe every completion generated, dropped groups included
        kept_rows = dynamic_sampling.group_rows(order, self.num_generations)
        metrics["dynamic_sampling/kept_reward_mean"].append(
            dynamic_sampling.kept_reward_mean(torch.cat(rewards), kept_rows)
        )
        if bool(flags[:wanted].all()):  # the first round was informative throughout: keep TRL's batch as it is
            return batch
        return self._assemble_selected(rounds, order, local_size)

    def _assemble_selected(self, rounds: list[dict], order: torch.Tensor, local_size: int) -> dict:
        """This process's share of the chosen groups: each process sends only its rows among them, and one gather per
        field assembles the batch on every process (`dynamic_sampling.gather_plan`)."""
        rows = dynamic_sampling.group_rows(order, self.num_generations)
        sends, positions = dynamic_sampling.gather_plan(rows, local_size, self.accelerator.num_processes)
        width = max(len(s) for s in sends)
        pad_id = self._tokenizer.pad_token_id
        merged = dynamic_sampling.merge_rounds(rounds, pad_id)
        own_rows = sends[self.accelerator.process_index]
        selected = {}
        for key, value in merged.items():
            pad = dynamic_sampling.pad_value(key, pad_id)
            part = value[own_rows.to(value.device)]
            if part.dim() >= 2:
                part = self.accelerator.pad_across_processes(
                    part, dim=1, pad_index=pad, pad_first=key in dynamic_sampling.LEFT_PADDED
                )
            filler = part.new_full((width - part.size(0), *part.shape[1:]), pad)
            selected[key] = self.accelerator.gather(torch.cat([part, filler]))[positions.to(part.device)]
        start = self.accelerator.process_index * local_size
        local = dynamic_sampling.trim_padding(
            {key: value[start : start + local_size] for key, value in selected.items()}
        )
        local["num_items_in_batch"] = (selected["completion_mask"] * selected.get("tool_mask", 1)).sum()
        return local

    # ------------------------------------------------------------------ drift diagnostics
    # They run on the micro-batches of every `diagnostics_steps`-th optimizer step, whatever the generation reuse
    # (`num_iterations`, `steps_per_generation`): sums over the step's micro-batches, one logged value per step.
    def _record_drift(self, batch: dict) -> None:
        """Add this micro-batch's drift sums (over all processes) to those of the current optimizer step."""
        step = self.state.global_step
        if self._pending_drift is not None and self._pending_drift[0] != step:
            self._flush_drift()
        sums = self._drift_diagnostics_sums(batch)
        if self._pending_drift is not None:
            sums = sums + self._pending_drift[1]
        self._pending_drift = (step, sums)

    def _flush_drift(self) -> None:
        """Log the means of the recorded step's drift sums."""
        if self._pending_drift is None:
            return
        for name, value in drift_means(self._pending_drift[1]).items():
            self._metrics["train"][name].append(value)
        self._pending_drift = None

    def _drift_diagnostics_sums(self, batch: dict) -> torch.Tensor:
        """`drift.DRIFT_SUM_NAMES` sums of KL(policy || prior) and both models' entropy statistics on the batch's
        completion tokens, summed over processes."""
        sums = completion_drift_sums(
            self.model, self.prior_model, self.prior_kind, batch, self.args.per_device_train_batch_size,
            self.args.diagnostics_top_k,
        )  # fmt: skip
        return self.accelerator.reduce(sums, reduction="sum")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            self._flush_drift()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ auxiliary shaped loss
    def _build_aux_dataloader(self, dataset) -> DataLoader:
        prepared = prepare_aux_dataset(dataset, self._tokenizer, self.args.aux_max_length)
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
        if self._aux_iterator is None:
            self._aux_iterator = iter(self._aux_dataloader)
        try:
            batch = next(self._aux_iterator)
        except StopIteration:  # the next epoch (prepare_aux_dataset guarantees at least one row)
            self._aux_iterator = iter(self._aux_dataloader)
            batch = next(self._aux_iterator)
        return {key: value.to(self.accelerator.device) for key, value in batch.items()}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        steps = self.args.diagnostics_steps
        if steps > 0 and self.model.training and self.state.global_step % steps == 0:
            self._record_drift(inputs)  # before the loss: the weights this step's completions are scored with
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._aux_dataloader is None or not self.model.training:
            return loss
        # The shaped branch of the patched forward calls the backbone directly, outside the autocast that accelerate
        # wraps the model's forward in (bf16/fp16 full-parameter training): run it under the same autocast.
        with self.accelerator.autocast():
            aux_loss = shaped_causal_lm_loss(model, self._next_aux_batch(), self.args.shaping)
        # TRL's loss is already scaled for gradient accumulation (Trainer's own scaling is off): scale alike
        loss = loss + self.args.shaping_aux_coef * aux_loss / self.current_gradient_accumulation_steps
        self._metrics["train"]["aux_shaped_loss"].append(self.accelerator.gather(aux_loss.detach()).mean().item())
        return loss


def _group_by_reference(reference_of_metric: dict[str, str]) -> str:
    # "kl_to_prior, prior_entropy, ... compare with the stage-1 prior (...); kl with ..." in one line
    metrics_of = {}
    for metric, reference in reference_of_metric.items():
        metrics_of.setdefault(reference, []).append(metric)
    return "; ".join(f"{', '.join(metrics)} compare with {reference}" for reference, metrics in metrics_of.items())


def _check_sync_ref_model(args, peft_policy: bool) -> None:
    # TRL's own refusals, raised here because TRL itself is initialised with beta = 0 and sync_ref_model = False
    if not args.sync_ref_model:
        return
    if args.beta == 0.0:
        raise ValueError(
            "sync_ref_model=True needs beta != 0: with beta = 0 there is no KL term and no reference to sync. Set "
            "sync_ref_model=False or a non-zero beta."
        )
    if peft_policy:
        raise NotImplementedError(
            "sync_ref_model=True with a PEFT policy is not supported (as in TRL): the reference is the policy with "
            "its adapters disabled or a frozen adapter copy, not a separate model to sync. Use sync_ref_model=False."
        )
