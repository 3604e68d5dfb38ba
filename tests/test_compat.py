"""TRL's private surface used by trl_shaped: every symbol still exists with the signature the package assumes."""

import importlib
import inspect

import pytest
import torch

from trl_shaped import compat


def _resolve(key: str):
    module_name, qualname = key.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("key", sorted(compat.EXPECTED_SIGNATURES))
def test_private_symbol_has_the_expected_signature(key):
    try:
        obj = _resolve(key)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"TRL private symbol {key} is gone ({error}); update trl_shaped/compat.py")
    names = tuple(inspect.signature(obj).parameters)
    assert names == compat.EXPECTED_SIGNATURES[key], f"{key}: signature changed to {names}; update trl_shaped/compat.py"


def test_compat_exports_are_the_checked_objects():
    # What the package imports through compat is the very object whose signature is checked above
    for key in compat.EXPECTED_SIGNATURES:
        name = key.split(":")[1]
        if "." not in name:
            assert getattr(compat, name) is _resolve(key), key


def test_trl_scores_its_reference_under_the_ref_adapter_name():
    # GRPOTrainer computes the reference log-probs under the adapter named REF_ADAPTER when the PeftModel has one;
    # the frozen stage-1 adapter of a PEFT policy relies on it.
    from trl import GRPOTrainer

    source = inspect.getsource(GRPOTrainer)
    assert f'adapter_name="{compat.REF_ADAPTER}" if "{compat.REF_ADAPTER}" in model.peft_config' in source


def test_trl_builds_no_reference_restores_the_arguments():
    from trl import GRPOConfig

    args = GRPOConfig(output_dir="unused", beta=0.3, use_cpu=True, report_to=[])
    args.sync_ref_model = True
    with pytest.raises(RuntimeError), compat.trl_builds_no_reference(args):
        assert args.beta == 0.0 and args.sync_ref_model is False
        raise RuntimeError
    assert args.beta == 0.3 and args.sync_ref_model is True


def test_add_reference_adapter_is_a_frozen_copy_on_shared_base():
    from peft import LoraConfig, get_peft_model

    from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=16, num_layers=1, tokenizer=tokenizer, seed=0)
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0, init_lora_weights=False))
    compat.add_reference_adapter(model)
    params = dict(model.named_parameters())
    refs = [n for n in params if f".{compat.REF_ADAPTER}." in n]
    assert refs and not any(params[n].requires_grad for n in refs)
    for n in refs:
        default = params[n.replace(f".{compat.REF_ADAPTER}.", ".default.")]
        assert default.requires_grad and torch.equal(params[n], default)
        assert params[n].data_ptr() != default.data_ptr()  # a copy, not an alias
    assert model.active_adapter == "default"


def test_private_attributes_of_a_constructed_grpo_trainer(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=16, num_layers=1, tokenizer=tokenizer, seed=0)
    args = GRPOConfig(str(tmp_path), per_device_train_batch_size=4, num_generations=4, use_cpu=True, report_to=[])
    trainer = GRPOTrainer(
        model, [lambda completions, **kwargs: [0.0] * len(completions)], args,
        train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 4}), processing_class=tokenizer,
    )  # fmt: skip
    missing = [name for name in compat.EXPECTED_ATTRIBUTES if not hasattr(trainer, name)]
    assert not missing, f"GRPOTrainer no longer has {missing}; update trl_shaped/compat.py and its users"
    assert trainer._tokenizer is tokenizer and trainer._train_batch_size == 4
    assert isinstance(trainer._metrics["train"], dict)


def test_sft_preparation_reads_only_what_the_stand_in_holds():
    # `prepare_sft_dataset` runs SFTTrainer._prepare_dataset on a stand-in trainer and config: every attribute the
    # method reads (packing aside, which the stand-in never asks for) must be one the stand-in sets.
    import re

    from trl import SFTTrainer

    source = inspect.getsource(SFTTrainer._prepare_dataset)
    assert set(re.findall(r"self\.(\w+)", source)) == set(compat.SFT_PREPARATION_READS["trainer"])
    packing_only = {"packing_strategy", "seed"}  # the seed: shuffling, which the stand-in turns off
    assert set(re.findall(r"\bargs\.(\w+)", source)) - packing_only == set(compat.SFT_PREPARATION_READS["args"])
