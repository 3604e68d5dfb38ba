"""`ShapedGRPOTrainer`: TRL's `GRPOTrainer` started from a stage-1 checkpoint that it keeps as its prior.

On top of GRPO it adds, through TRL's hooks:

- the prior (stage-1 checkpoint): TRL's reference (the KL anchor) when `beta > 0`, and the baseline of drift
  diagnostics computed on the sampled completions every `diagnostics_steps` optimizer steps. It is held as cheaply as
  TRL holds its reference: no copy for a new LoRA adapter (adapters disabled), a frozen adapter copy on the shared
  base for a PEFT policy carrying a stage-1 adapter, a full frozen copy otherwise, and nothing when nothing reads it;
- DAPO dynamic sampling around `_generate_and_score_completions` (the decisions are the pure functions of
  `dynamic_sampling.py`): groups whose advantages are all equal are replaced by groups generated from further prompts;
- an optional auxiliary shaped loss on supervised data, added in `compute_loss`.

TRL's private helpers are imported through `compat.py` only.
"""

import copy
import logging
import os

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from torch.utils.data import DataLoader
from trl import GRPOTrainer, SyncRefModelCallback
from trl.data_utils import (
    common_prefix_length,
    is_conversational,
    is_conversational_from_value,
    maybe_convert_to_chatml,
)

from . import dynamic_sampling as ds
from .checkpoints import SafeCheckpointsMixin
from .compat import (
    REF_ADAPTER,
    DataCollatorForLanguageModeling,
    RepeatSampler,
    add_fused_lm_head,
    add_reference_adapter,
    disable_dropout_in_model,
    maybe_gather_lm_head_ctx,
    prepare_deepspeed,
    prepare_fsdp,
    trl_builds_no_reference,
)
from .grpo_config import ShapedGRPOConfig
from .lm_head import logit_transform, shaped_causal_lm_loss
from .loss_core import (
    chunk_logits,
    compute_dtype,
    default_chunk_size,
    row_terms,
    softmax_parts,
    stats_from_terms,
    topk_indices,
)
from .paper import PAPER
from .prior import check_vocabularies, frozen_adapter, is_adapter_dir, load_causal_lm, vocab_rows

logger = logging.getLogger(__name__)

# Drift diagnostics logged every `diagnostics_steps` steps (policy and prior on the same sampled tokens).
DRIFT_STATS = ("entropy", "topk_entropy", "topk_mass", "nll")


def _project(hidden, weight, bias, logit_scale, softcap) -> torch.Tensor:
    """Float32 logits of one chunk, through the same projection (scale, softcap) as the fused loss."""
    out = hidden.new_empty((hidden.shape[0], weight.shape[0]), dtype=compute_dtype(weight.dtype))
    mm_out = None if weight.dtype == out.dtype else hidden.new_empty(out.shape, dtype=weight.dtype)
    return chunk_logits(hidden.to(weight.dtype), weight, bias, logit_scale, softcap, out, mm_out)


# ---------------------------------------------------------------------------------------------------- auxiliary data
AUX_LAYOUTS = (
    "a 'text' column, a conversational 'messages' column (or ShareGPT 'conversations'), 'prompt' and 'completion' "
    "columns (the loss then scores the completion only), or tokenized 'input_ids' (with optional 'labels')"
)


def check_aux_dataset(dataset) -> None:
    """Raise before any compute when `aux_dataset` is not a non-empty map-style dataset of a layout we can train on."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"aux_dataset must be a datasets.Dataset (map-style), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("aux_dataset is empty (0 rows): pass supervised rows, or set shaping_aux_coef=0")
    columns = set(dataset.column_names)
    if not ({"text", "messages", "conversations", "input_ids"} & columns or {"prompt", "completion"} <= columns):
        raise ValueError(
            f"aux_dataset has columns {sorted(columns)}, none of which the auxiliary shaped loss can train on. It "
            f"needs {AUX_LAYOUTS}. Rename a column (Dataset.rename_column) or map the rows to one of these layouts."
        )


def _text(example: dict, column: str, index: int) -> str:
    value = example[column]
    if not isinstance(value, str):
        raise TypeError(
            f"aux_dataset column {column!r}, row {index}: expected a string, got {type(value).__name__} ({value!r}); "
            "clean or filter such rows before training"
        )
    return value


def tokenize_aux_example(example: dict, index: int, tokenizer) -> dict:
    """`input_ids` and `labels` (-100 on the prompt) of one aux row, as TRL's SFT preparation builds them: EOS added
    to plain text and completions, chat template for conversations, the completion starting where the tokenised
    prompt and prompt+completion diverge."""
    if "input_ids" in example:
        ids = list(example["input_ids"])
        return {"input_ids": ids, "labels": list(example.get("labels") or ids)}
    example = maybe_convert_to_chatml(dict(example)) if is_conversational_from_value(example) else example
    eos = tokenizer.eos_token or ""

    def chat(messages, **kwargs):
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]

    if "prompt" in example and "completion" in example:
        if is_conversational(example):
            prompt_ids = chat(example["prompt"], add_generation_prompt=True)
            ids = chat(example["prompt"] + example["completion"])
        else:
            prompt, completion = _text(example, "prompt", index), _text(example, "completion", index)
            completion = completion if completion.endswith(eos) else completion + eos
            prompt_ids = tokenizer(text=prompt)["input_ids"]
            ids = tokenizer(text=prompt + completion)["input_ids"]
        start = common_prefix_length(prompt_ids, ids)
        return {"input_ids": ids, "labels": [-100] * start + ids[start:]}
    if "messages" in example and is_conversational(example):
        ids = chat(example["messages"])
    else:
        text = _text(example, "text", index)
        ids = tokenizer(text=text if text.endswith(eos) else text + eos)["input_ids"]
    return {"input_ids": ids, "labels": list(ids)}


def prepare_aux_dataset(dataset: Dataset, tokenizer, max_length: int) -> Dataset:
    """Tokenise `aux_dataset`, truncate it to `max_length` tokens (keeping the start) and drop the rows left with no
    scored token; raise when none is left.

    Args:
        dataset ([`~datasets.Dataset`]): checked by [`check_aux_dataset`].
        tokenizer: the trainer's tokenizer.
        max_length (`int`): `aux_max_length`.
    """
    check_aux_dataset(dataset)

    def tokenize(example, index):
        out = tokenize_aux_example(example, index, tokenizer)
        return {"input_ids": out["input_ids"][:max_length], "labels": out["labels"][:max_length]}

    prepared = dataset.map(tokenize, with_indices=True, remove_columns=dataset.column_names, desc="aux_dataset")
    # The first position predicts nothing (labels are shifted inside the loss): a row needs a label after it
    prepared = prepared.filter(lambda row: any(label != -100 for label in row["labels"][1:]))
    dropped = len(dataset) - len(prepared)
    if len(prepared) == 0:
        raise ValueError(
            f"aux_dataset is empty after preparation: all {dropped} rows were dropped because none has a token to "
            f"score within aux_max_length={max_length} (their prompt fills it, or the row is shorter than 2 tokens). "
            "Raise aux_max_length or shorten the prompts."
        )
    if dropped:
        logger.warning(
            "aux_dataset: dropped %d of %d rows with no token to score within aux_max_length=%d", dropped,
            len(dataset), max_length,
        )  # fmt: skip
    return prepared


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
      is made. `reference_of_metric` maps each metric to the model it compares with (also logged once at start).
    - Every `diagnostics_steps` optimizer steps, on the completions just sampled: `kl_to_prior` (KL(policy || prior)
      over the full vocabulary, averaged over completion tokens), and for both models `{policy,prior}_entropy`,
      `_topk_entropy`, `_topk_mass` (k = `diagnostics_top_k`) and `_nll` (of the sampled tokens). They use the
      untempered distributions. TRL's own `entropy`, `completions/mean_length`, `reward` and `reward_std` are logged
      as usual.
    - `dynamic_sampling`: see [`ShapedGRPOConfig`]; a group is uninformative when its advantages are all equal (its
      rewards were). Logs `dynamic_sampling/frac_groups_dropped` (uninformative groups over all groups generated for
      the batch), `dynamic_sampling/rounds` (extra generation rounds) and `dynamic_sampling/frac_groups_filled`
      (uninformative groups left in the batch).
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
        peft_instance = not isinstance(model, str) and is_peft_model(model)

        # How the prior is held: see the class docstring. Decided, and copied where needed, before TRL (PEFT
        # wrapping, DeepSpeed) touches the policy's starting weights.
        prior_path, prior = args.prior_model_name_or_path, None
        if args.beta == 0.0 and args.diagnostics_steps == 0:
            self.prior_kind = "none"
            if prior_path is not None:
                logger.warning("prior_model_name_or_path is not loaded: neither beta > 0 nor diagnostics_steps > 0")
        elif prior_path is not None:
            self.prior_kind = "model"
        elif new_adapter:
            self.prior_kind = "adapters_disabled"
        elif peft_instance:
            self.prior_kind = "ref_adapter"
            add_reference_adapter(model)
        else:
            self.prior_kind = "model"
            if policy_path is not None:
                prior_path = policy_path
            else:
                prior = copy.deepcopy(model)

        # TRL would build its own reference from the policy; the prior is installed as the reference below instead.
        with trl_builds_no_reference(args):
            super().__init__(model, reward_funcs, args, **kwargs)
        self.beta = args.beta

        if prior is None and prior_path is not None and self.prior_kind == "model":
            prior = load_causal_lm(prior_path, merge_adapter=True, **self._prior_init_kwargs())
        check_vocabularies(vocab_rows(self.model), len(self._tokenizer), None if prior is None else vocab_rows(prior))
        self.prior_model = self.ref_model = None
        if prior is not None and self.beta != 0.0 and args.sync_ref_model:
            # The synced reference drifts towards the policy: the diagnostics need the fixed prior beside it (a
            # second copy), unless they are off.
            keep_prior = args.diagnostics_steps > 0
            self.ref_model = self._prepare_frozen(copy.deepcopy(prior) if keep_prior else prior)
            self.prior_model = self._prepare_frozen(prior) if keep_prior else None
        elif prior is not None:
            self.prior_model = self._prepare_frozen(prior)
            self.ref_model = self.prior_model if self.beta != 0.0 else None
        if args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        self.reference_of_metric = self._describe_references()
        logger.info("ShapedGRPOTrainer references: %s", self.reference_of_metric)

        self._resample_iterator, self._resample_epoch = None, 0
        self._aux_iterator = None
        self._aux_dataloader = self._build_aux_dataloader(aux_dataset) if args.shaping_aux_coef > 0 else None

    # ------------------------------------------------------------------ prior
    def _describe_references(self) -> dict[str, str]:
        prior = {
            "none": None,
            "model": "the stage-1 prior (a frozen copy)",
            "adapters_disabled": "the stage-1 prior (the base model, adapters disabled)",
            "ref_adapter": f"the stage-1 prior (frozen adapter {REF_ADAPTER!r} on the shared base)",
        }[self.prior_kind]
        described = {}
        if self.beta != 0.0:
            described["kl"] = (
                f"TRL's reference, synced towards the policy every {self.args.ref_model_sync_steps} steps "
                f"(mixup alpha {self.args.ref_model_mixup_alpha})"
                if self.args.sync_ref_model
                else prior
            )
        if self.args.diagnostics_steps > 0:
            for name in ("kl_to_prior", *(f"prior_{s}" for s in DRIFT_STATS)):
                described[name] = prior
        return described

    def _prior_init_kwargs(self) -> dict:
        # As TRL loads its reference model: the policy's dtype and attention, no device map when distributed.
        kwargs = dict(self.args.model_init_kwargs or {})
        if self.args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            kwargs["device_map"] = None
        kwargs.setdefault("trust_remote_code", self.args.trust_remote_code)
        kwargs.setdefault("dtype", self.model.dtype)
        kwargs.setdefault("attn_implementation", self.model.config._attn_implementation)
        return kwargs

    def _prepare_frozen(self, prior):
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
        if self.prior_kind in ("adapters_disabled", "ref_adapter"):  # the prior is the policy's own base
            base = policy.get_base_model()
            adapter = REF_ADAPTER if self.prior_kind == "ref_adapter" else None
            return base, base, lambda: frozen_adapter(policy, adapter)
        if self.prior_model is None:
            raise RuntimeError("no prior was loaded (beta = 0 and diagnostics_steps = 0): nothing to compare with")
        policy = policy.get_base_model() if is_peft_model(policy) else policy
        return policy, self.accelerator.unwrap_model(self.prior_model), torch.no_grad

    # ------------------------------------------------------------------ generation hook
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
    def _informative_groups(self, batch: dict) -> torch.Tensor:
        # One float per completion crosses processes: every rank sees every group's advantages, decides alike
        return ds.informative_groups(self.accelerator.gather(batch["advantages"]).float().cpu(), self.num_generations)

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

    @staticmethod
    def _check_fields(batch: dict, local_size: int) -> dict:
        fields = {key: value for key, value in batch.items() if key != "num_items_in_batch"}
        for key, value in fields.items():
            if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.size(0) == local_size):
                raise ValueError(f"dynamic_sampling does not support the batch field {key!r} (multimodal or tool data)")
        return fields

    def _dynamic_sampling(self, batch: dict, local_size: int) -> dict:
        rounds, flags = [self._check_fields(batch, local_size)], [self._informative_groups(batch)]
        wanted = flags[0].numel()
        while sum(int(f.sum()) for f in flags) < wanted and len(rounds) <= self.args.max_resample_rounds:
            more = self._next_resample_inputs()
            extra = super()._generate_and_score_completions(more)
            rounds.append(self._check_fields(extra, len(more)))
            flags.append(self._informative_groups(extra))
        flags = torch.cat(flags)
        order = ds.select_groups(flags, wanted)
        for key, value in ds.sampling_stats(flags, order, len(rounds) - 1, wanted).items():
            self._metrics["train"][key].append(value)
        if bool(flags[:wanted].all()):  # the first round was informative throughout: keep TRL's batch as it is
            return batch

        # Each process sends only its rows among the chosen groups; one gather assembles the batch on every process
        rows = ds.group_rows(order, self.num_generations)
        sends, positions = ds.gather_plan(rows, local_size, self.accelerator.num_processes)
        width = max(len(s) for s in sends)
        pad_id = self._tokenizer.pad_token_id
        merged = ds.merge_rounds(rounds, pad_id)
        mine = sends[self.accelerator.process_index]
        selected = {}
        for key, value in merged.items():
            part = value[mine.to(value.device)]
            if part.dim() >= 2:
                part = self.accelerator.pad_across_processes(
                    part, dim=1, pad_index=ds.pad_value(key, pad_id), pad_first=key in ds.LEFT_PADDED
                )
            filler = part.new_full((width - part.size(0), *part.shape[1:]), ds.pad_value(key, pad_id))
            selected[key] = self.accelerator.gather(torch.cat([part, filler]))[positions.to(part.device)]
        start = self.accelerator.process_index * local_size
        local = ds.trim_padding({key: value[start : start + local_size] for key, value in selected.items()})
        local["num_items_in_batch"] = (selected["completion_mask"] * selected.get("tool_mask", 1)).sum()
        return local

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
        """Sums over tokens of the policy's and the prior's DRIFT_STATS, of KL(policy || prior), and the count.

        One softmax per model and chunk (`softmax_parts`); the statistics are gathers and row reductions of it, and
        KL(p || q) = sum p log p - (unnorm_p . shifted_q) / norm_p + log norm_q reuses both models' parts.
        """
        heads = []
        for model, context in ((policy, torch.no_grad), (prior, prior_context)):
            head = model.get_output_embeddings()
            heads.append((head, *logit_transform(model.config.get_text_config()), context))
        total = torch.zeros(2 * len(DRIFT_STATS) + 2, device=labels.device)
        if labels.numel() == 0:
            return total
        step = default_chunk_size(labels.numel(), heads[0][0].weight.shape[0] or 1)
        (head_p, scale_p, cap_p, _), (head_q, scale_q, cap_q, ctx_q) = heads
        with maybe_gather_lm_head_ctx(head_p.weight, head_p.bias, head_q.weight, head_q.bias), ctx_q():
            # With PEFT the policy and the prior share the head; an adapter on the head is bypassed here (the heads'
            # base weights are used), which the LoRA target modules rarely include.
            weight_p, bias_p = _head_params(head_p)
            weight_q, bias_q = _head_params(head_q)
            for start in range(0, labels.numel(), step):
                part = slice(start, start + step)
                y = labels[part]
                shifted_p, unnorm_p, norm_p = softmax_parts(
                    _project(hidden_policy[part], weight_p, bias_p, scale_p, cap_p), inplace=True
                )
                shifted_q, unnorm_q, norm_q = softmax_parts(
                    _project(hidden_prior[part], weight_q, bias_q, scale_q, cap_q), inplace=True
                )
                terms_p = row_terms(shifted_p, unnorm_p, norm_p, y, topk_indices(shifted_p, k))
                terms_q = row_terms(shifted_q, unnorm_q, norm_q, y, topk_indices(shifted_q, k))
                stats_p, stats_q = stats_from_terms(terms_p), stats_from_terms(terms_q)
                cross = torch.bmm(unnorm_p.unsqueeze(1), shifted_q.unsqueeze(2)).view(-1) / norm_p.squeeze(-1)
                kl = terms_p["plogp"] - cross + norm_q.log().squeeze(-1)
                values = [stats_p[n].sum() for n in DRIFT_STATS] + [stats_q[n].sum() for n in DRIFT_STATS]
                total += torch.stack([*values, kl.sum(), torch.tensor(float(y.numel()), device=total.device)])
        return total

    # ------------------------------------------------------------------ auxiliary shaped loss
    def _build_aux_dataloader(self, dataset) -> DataLoader:
        with self.accelerator.main_process_first():
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
