"""The package's argument checks: what each accepts, and one message format naming the argument and its range."""

import math

import numpy as np
import pytest

from trl_shaped.validation import check_choice, check_int, check_real


@pytest.mark.parametrize("value", [0.5, -1, np.float32(0.25), np.float64(-0.5), np.int64(3), np.int32(-1)])
def test_check_real_accepts_python_and_numpy_numbers(value):
    out = check_real("beta", value)
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value", [True, np.nan, math.inf, -math.inf, np.float32("nan"), "0.5", None, np.bool_(True)])
def test_check_real_rejects_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"^head_reward must be a finite real number, got "):
        check_real("head_reward", value)


def test_check_real_bounds_in_the_message():
    assert check_real("beta", -1.0, minimum=-1.0) == -1.0
    with pytest.raises(ValueError, match=r"^beta must be >= -1 \(a finite real number\), got -1.0000001$"):
        check_real("beta", -1.0000001, minimum=-1.0)
    assert check_real("top_p", 1, minimum=0, maximum=1, open_minimum=True) == 1.0
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"^top_p must be in \(0, 1\] \(a finite real number\), got "):
            check_real("top_p", bad, minimum=0, maximum=1, open_minimum=True)
    with pytest.raises(ValueError, match=r"^softcap must be None or > 0, got 0 \(int\)$|^softcap must be None or > 0"):
        check_real("softcap", 0, minimum=0, open_minimum=True, allowed="None or > 0")


def test_check_int_accepts_integers_only():
    assert check_int("top_k", np.int64(7), minimum=1) == 7 and type(check_int("top_k", np.int64(7))) is int
    for bad in (0, -2, 2.0, True, "3", np.float32(3), None):
        with pytest.raises(ValueError, match=r"^top_k must be >= 1 \(an integer\), got "):
            check_int("top_k", bad, minimum=1)
    with pytest.raises(ValueError, match=r"^top_k must be >= 1 \(an integer\), got '3' \(str\)$"):
        check_int("top_k", "3", minimum=1)


def test_check_int_integral_floats_and_notes():
    assert check_int("n", 5.0, minimum=1, integral_float=True) == 5
    for bad in (5.5, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^n must be >= 1 \(an integer\), got "):
            check_int("n", bad, minimum=1, integral_float=True)
    with pytest.raises(ValueError, match=r"^c must be in \[0, 4\] \(an integer; n=4\), got 5$"):
        check_int("c", 5, minimum=0, maximum=4, note="n=4")


def test_check_choice():
    assert check_choice("reduction", "sum", ("mean", "sum")) == "sum"
    with pytest.raises(ValueError, match=r"^reduction must be one of \['mean', 'sum'\], got 'max'$"):
        check_choice("reduction", "max", ("mean", "sum"))
