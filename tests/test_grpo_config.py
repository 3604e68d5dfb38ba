import pytest

from trl_shaped import PAPER_PRESETS, ShapedGRPOConfig, ShapedSFTConfig, ShapingConfig

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


def test_sync_ref_model_is_refused():
    with pytest.raises(ValueError, match="sync_ref_model"):
        ShapedGRPOConfig(**CPU, sync_ref_model=True)
