"""ShapedSFTConfig: how a preset and explicit shaping fields combine, validation at construction, CLI parsing."""

import dataclasses

import pytest
from trl import SFTConfig, TrlParser

from trl_shaped import PAPER_PRESETS, ShapedSFTConfig, ShapingConfig

CPU = dict(output_dir="/tmp/trl_shaped_sft_config_test", bf16=False, report_to="none")


def test_nothing_given_is_cross_entropy():
    shaping = ShapedSFTConfig(**CPU).shaping
    assert shaping == ShapingConfig() and shaping.is_cross_entropy


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_preset_fills_every_field(name):
    assert ShapedSFTConfig(shaping_preset=name, **CPU).shaping == PAPER_PRESETS[name]


def test_explicit_fields_win_over_the_preset():
    args = ShapedSFTConfig(shaping_preset="tail_penalty", shaping_top_k=20, shaping_beta=0.0, **CPU)
    assert args.shaping == ShapingConfig(tail_reward=-0.1, top_k=20)
    # an explicit value equal to the default still wins: precision with beta set back to 0 is plain CE
    assert ShapedSFTConfig(shaping_preset="precision", shaping_beta=0.0, **CPU).shaping.is_cross_entropy


def test_explicit_fields_without_preset():
    args = ShapedSFTConfig(shaping_beta=-0.5, shaping_positive_form="linear", **CPU)
    assert args.shaping == ShapingConfig(beta=-0.5, positive_form="linear")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("shaping_top_k", 0, "top_k"),
        ("shaping_positive_form", "cubic", "positive_form"),
        ("shaping_beta", float("nan"), "beta"),
        ("shaping_tail_reward", float("inf"), "tail_reward"),
    ],
)
def test_invalid_values_fail_at_construction(field, value, match):
    with pytest.raises(ValueError, match=match):
        ShapedSFTConfig(**{field: value}, **CPU)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        ShapedSFTConfig(shaping_preset="precise", **CPU)
    assert all(name in str(error.value) for name in PAPER_PRESETS)


def test_is_an_sft_config_with_help_on_every_shaping_field():
    assert issubclass(ShapedSFTConfig, SFTConfig)
    fields = {f.name: f for f in dataclasses.fields(ShapedSFTConfig) if f.name.startswith("shaping_")}
    assert set(fields) == {
        "shaping_preset",
        "shaping_beta",
        "shaping_top_k",
        "shaping_head_reward",
        "shaping_tail_reward",
        "shaping_positive_form",
    }
    assert all(f.metadata.get("help") for f in fields.values())
    assert all(name in ShapedSFTConfig.__doc__ for name in fields)


def test_trl_parser_reads_the_shaping_flags():
    (args,) = TrlParser((ShapedSFTConfig,)).parse_args_and_config(
        [
            "--output_dir",
            CPU["output_dir"],
            "--bf16",
            "false",
            "--shaping_preset",
            "tail_penalty",
            "--shaping_top_k",
            "7",
        ]
    )
    assert args.shaping == ShapingConfig(tail_reward=-0.1, top_k=7)


def test_errors_name_the_config_field_given():
    with pytest.raises(ValueError, match="shaping_top_k=0") as error:
        ShapedSFTConfig(shaping_preset="tail_penalty", shaping_top_k=0, **CPU)
    assert "ShapedSFTConfig" in str(error.value) and "shaping_preset='tail_penalty'" in str(error.value)
    with pytest.raises(ValueError, match="shaping_preset='precise'"):
        ShapedSFTConfig(shaping_preset="precise", **CPU)


def test_help_lists_the_shaping_flags_with_their_choices(capsys):
    parser = TrlParser((ShapedSFTConfig,))
    with pytest.raises(SystemExit):
        parser.parse_args_and_config(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in (
        "--shaping_preset",
        "--shaping_beta",
        "--shaping_top_k",
        "--shaping_head_reward",
        "--shaping_tail_reward",
        "--shaping_positive_form",
    ):
        assert name in help_text, name
    assert all(name in help_text for name in PAPER_PRESETS) and "{power,linear}" in help_text
    with pytest.raises(SystemExit):  # argparse refuses a preset outside the choices before any config is built
        parser.parse_args_and_config(["--output_dir", CPU["output_dir"], "--shaping_preset", "precise"])
    assert "invalid choice" in capsys.readouterr().err
