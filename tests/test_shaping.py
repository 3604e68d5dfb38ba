"""ShapingConfig validation, presets and the config-vs-kwargs resolution shared by both losses."""

import dataclasses
import math

import pytest

from trl_shaped import PAPER_PRESETS, ShapingConfig
from trl_shaped.shaping import resolve_shaping


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        ({"beta": math.nan}, "beta", "finite"),
        ({"beta": math.inf}, "beta", "finite"),
        ({"beta": True}, "beta", "finite"),
        ({"beta": "0.5"}, "beta", "finite"),
        ({"beta": -1.5}, "beta", ">= -1"),
        ({"beta": -1.5, "positive_form": "linear"}, "beta", ">= -1"),
        ({"head_reward": -math.inf}, "head_reward", "finite"),
        ({"head_reward": False}, "head_reward", "finite"),
        ({"tail_reward": math.nan}, "tail_reward", "finite"),
        ({"tail_reward": None}, "tail_reward", "finite"),
        ({"top_k": 0}, "top_k", ">= 1"),
        ({"top_k": -3}, "top_k", ">= 1"),
        ({"top_k": 2.0}, "top_k", ">= 1"),
        ({"top_k": 2.5}, "top_k", ">= 1"),
        ({"top_k": True}, "top_k", ">= 1"),
        ({"top_k": "100"}, "top_k", ">= 1"),
        ({"positive_form": "exp"}, "positive_form", "'power', 'linear'"),
        ({"positive_form": None}, "positive_form", "'power', 'linear'"),
    ],
)
def test_bad_config_raises_naming_field_and_range(kwargs, field, allowed):
    with pytest.raises(ValueError) as info:
        ShapingConfig(**kwargs)
    assert field in str(info.value) and allowed in str(info.value)


def test_good_config_normalises_numbers_and_is_frozen():
    config = ShapingConfig(beta=-1, top_k=7, head_reward=1, tail_reward=0, positive_form="linear")
    assert isinstance(config.beta, float) and config.beta == -1.0 and isinstance(config.head_reward, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.beta = 0.0


def test_paper_presets_match_method_table():
    expected = {
        "ce": (0.0, 0.0, 0.0),
        "precision": (-0.25, 0.0, 0.0),
        "diversity": (0.5, 0.0, 0.0),
        "tail_penalty": (0.0, 0.0, -0.1),
        "head_reward": (0.0, 0.1, 0.0),
    }
    assert set(PAPER_PRESETS) == set(expected)
    for name, (beta, head, tail) in expected.items():
        config = ShapingConfig.from_preset(name)
        assert (config.beta, config.head_reward, config.tail_reward) == (beta, head, tail)
        assert config.top_k == 100 and config.positive_form == "power"
    assert PAPER_PRESETS["ce"].is_cross_entropy and not PAPER_PRESETS["ce"].needs_topk
    assert not PAPER_PRESETS["precision"].is_cross_entropy and not PAPER_PRESETS["precision"].needs_topk
    assert PAPER_PRESETS["tail_penalty"].needs_topk and PAPER_PRESETS["head_reward"].needs_topk


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as info:
        ShapingConfig.from_preset("entropy")
    for name in PAPER_PRESETS:
        assert name in str(info.value)


def test_resolve_config_and_loose_kwargs():
    precision = PAPER_PRESETS["precision"]
    assert resolve_shaping(None, beta=0.5) == ShapingConfig(beta=0.5)
    # Defaults and values equal to the config's are not a conflict.
    assert resolve_shaping(precision, beta=0.0, top_k=100) is precision
    assert resolve_shaping(precision, beta=-0.25) is precision
    with pytest.raises(ValueError, match="tail_reward"):
        resolve_shaping(precision, tail_reward=-0.1)
    with pytest.raises(ValueError, match="config"):
        resolve_shaping({"beta": 1.0})
    with pytest.raises(ValueError, match="top_k"):
        resolve_shaping(None, top_k=0)
