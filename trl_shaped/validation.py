"""Argument checks with one error format: `<name> must be <allowed range> (<kind>), got <value>`.

Every config and function of the package answers "is this an integer in a range / a finite real in a range / one of
these choices" here, so a bad value reads the same wherever it is caught. A leaf module: it imports nothing of the
package, so that `loss_core` (the bottom of the import tree) can use it.
"""

import math
import numbers

__all__ = ["check_choice", "check_int", "check_real"]


def _number(value) -> str:
    # integers as written (1000000, not 1e+06); floats without trailing zeros (-1, not -1.0)
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(minimum, maximum, open_minimum: bool) -> str:
    low = ">" if open_minimum else ">="
    if minimum is not None and maximum is not None:
        return f"in {'(' if open_minimum else '['}{_number(minimum)}, {_number(maximum)}]"
    if minimum is not None:
        return f"{low} {_number(minimum)}"
    return f"<= {_number(maximum)}" if maximum is not None else ""


def _error(name: str, allowed: str, value, with_type: bool) -> ValueError:
    got = f"{value!r} ({type(value).__name__})" if with_type else repr(value)
    return ValueError(f"{name} must be {allowed}, got {got}")


def check_int(
    name: str,
    value,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    note: str = "",
    integral_float: bool = False,
) -> int:
    """`value` as a Python `int` in [`minimum`, `maximum`], or a ValueError naming `name` and the range.

    Args:
        name (`str`): the argument's name, as the caller knows it.
        value: Python and NumPy integers are accepted; bool (an int subclass: `top_k=True` is surely a mistake),
            strings and None are not.
        minimum (`int`, *optional*), maximum (`int`, *optional*): inclusive bounds.
        note (`str`, *optional*): appended to the kind in the message, e.g. "num_samples=4" for a bound taken
            from another field, or "or None".
        integral_float (`bool`): also accept floats with an integral value (5.0, as YAML may hand them over).
    """
    kind = "an integer" + (f"; {note}" if note else "")
    bounds = _bounds(minimum, maximum, False)
    allowed = f"{bounds} ({kind})" if bounds else kind
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(name, allowed, value, with_type=True)
    if not isinstance(value, numbers.Integral):
        if not (integral_float and math.isfinite(float(value)) and float(value).is_integer()):
            raise _error(name, allowed, value, with_type=not integral_float)
    result = int(value)
    if (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        raise _error(name, allowed, value, with_type=False)
    return result


def check_real(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_minimum: bool = False,
    allowed: str | None = None,
) -> float:
    """`value` as a finite Python `float` in the range, or a ValueError naming `name` and the range.

    Args:
        name (`str`): the argument's name, as the caller knows it.
        value: Python and NumPy reals and integers are accepted; bool, strings, None, NaN and infinities are not.
        minimum (`float`, *optional*), maximum (`float`, *optional*): bounds, inclusive unless `open_minimum`.
        open_minimum (`bool`): the value must be strictly greater than `minimum`.
        allowed (`str`, *optional*): the whole allowed range in words, in place of the one built from the bounds,
            when they alone do not say it (e.g. "None or a finite real number > 0").
    """
    bounds = _bounds(minimum, maximum, open_minimum)
    full = allowed or (f"{bounds} (a finite real number)" if bounds else "a finite real number")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _error(name, full, value, with_type=True)
    result = float(value)
    too_low = minimum is not None and (result <= minimum if open_minimum else result < minimum)
    if not math.isfinite(result) or too_low or (maximum is not None and result > maximum):
        raise _error(name, full, value, with_type=False)
    return result


def check_choice(name: str, value, choices):
    """`value` when it is one of `choices`, else a ValueError naming `name` and the choices."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value
