import dataclasses

import pytest
from trl import TrlParser

from trl_shaped import PAPER_PRESETS, ShapedGRPOConfig, ShapedSFTConfig, ShapingConfig
from trl_shaped.shaping_args import ShapingArguments

CPU = dict(output_dir="unused", use_cpu=True, bf16=False, report_to=[])


def test_defaults_are_stock_grpo_plus_off_switches():
    config = ShapedGRPOConfig(**CPU)
    assert config.beta == 0.0 and config.prior_model_name_or_path is None
    assert config.dynamic_sampling is False and config.shaping_aux_coef == 0.0
    assert config.shaping == ShapingConfig()


def test_paper_recipe():
    config = ShapedGRPOConfig.paper_recipe(per_device_train_batch_size=16, **CPU)
    assert (config.beta, config.epsilon_high, config.dynamic_sampling) == (0.0, 0.28, True)
    assert (config.num_generations, config.temperature, config.learning_rate) == (16, 1.0, 1e-6)
    assert config.lr_scheduler_type == "constant"
    # overrides win
    assert ShapedGRPOConfig.paper_recipe(per_device_train_batch_size=8, num_generations=8, **CPU).num_generations == 8


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
def test_shaping_resolution_matches_sft_config(preset):
    kwargs = dict(shaping_preset=preset, shaping_top_k=7)
    grpo = ShapedGRPOConfig(**CPU, **kwargs)
    sft = ShapedSFTConfig(**CPU, **kwargs)
    assert grpo.shaping == sft.shaping
    assert grpo.shaping.top_k == 7


@pytest.mark.parametrize(
    "field, value",
    [
        ("diagnostics_steps", -1),
        ("diagnostics_steps", 1.5),
        ("diagnostics_top_k", 0),
        ("max_resample_rounds", -1),
        ("shaping_aux_coef", -0.1),
        ("shaping_aux_coef", float("nan")),
        ("aux_batch_size", 0),
        ("aux_max_length", 0),
        ("dynamic_sampling", "yes"),
        ("shaping_top_k", 0),
        ("shaping_positive_form", "cubic"),
        ("shaping_preset", "nope"),
    ],
)
def test_bad_values_fail_at_construction(field, value):
    name = field.removeprefix("shaping_") if field in ("shaping_top_k", "shaping_positive_form") else field
    with pytest.raises(ValueError, match=name):
        ShapedGRPOConfig(**CPU, **{field: value})


def test_sync_ref_model_is_accepted_with_trl_semantics():
    # TRL's reference syncing: the config keeps the TR-DPO knobs as GRPOConfig does
    config = ShapedGRPOConfig(**CPU, sync_ref_model=True, beta=0.1, ref_model_sync_steps=4, ref_model_mixup_alpha=0.5)
    assert config.sync_ref_model is True and (config.ref_model_sync_steps, config.ref_model_mixup_alpha) == (4, 0.5)
    assert "stage-1 prior" in ShapedGRPOConfig.__dataclass_fields__["sync_ref_model"].metadata["help"]


def test_shaping_fields_come_from_the_one_mixin():
    # Both configs hold the very same Field objects' metadata (help and choices), not copies of a sibling's
    sft = {f.name: f for f in dataclasses.fields(ShapedSFTConfig) if f.name.startswith("shaping_")}
    grpo = {f.name: f for f in dataclasses.fields(ShapedGRPOConfig) if f.name in sft}
    mixin = {f.name: f for f in dataclasses.fields(ShapingArguments)}
    assert set(sft) == set(grpo) == set(mixin)
    for name, f in mixin.items():
        assert sft[name].metadata == grpo[name].metadata == f.metadata, name
    assert issubclass(ShapedGRPOConfig, ShapingArguments) and issubclass(ShapedSFTConfig, ShapingArguments)


def test_trl_parser_reads_and_documents_the_shaping_flags(capsys):
    parser = TrlParser((ShapedGRPOConfig,))
    (args,) = parser.parse_args_and_config(
        [
            "--output_dir",
            "unused",
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--shaping_preset",
            "precision",
            "--shaping_top_k",
            "9",
            "--shaping_aux_coef",
            "0.5",
        ]
    )
    assert args.shaping == ShapingConfig(beta=-0.25, top_k=9) and args.shaping_aux_coef == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args_and_config(["--output_dir", "unused", "--shaping_positive_form", "cubic"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args_and_config(["--help"])
    help_text = capsys.readouterr().out
    for name in ("--shaping_preset", "--shaping_beta", "--shaping_top_k", "--shaping_positive_form", "tail_penalty"):
        assert name in help_text, name
