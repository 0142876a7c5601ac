"""The validation toolkit of config files and sweep specs: one error type, a few rules.

Every rule raises :class:`ConfigError`, whose ``str`` is one line naming the field, the value and
the rule (``init.on_ratio=1.5: must be >= 0.0 and <= 1.0``).  ``echos`` prints that line and exits
with status 2; anything else keeps its traceback.

This module imports nothing from echos, so every other module may use it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["ConfigError", "is_int", "is_number", "int_range", "float_range", "choice", "nonempty"]

_UNSET = object()


class ConfigError(ValueError):
    """A configuration value breaks a rule.  ``str(err)`` is one line: field, value, rule.

    ``ConfigError(field, value, rule)`` -> ``"field=value!r: rule"``; ``ConfigError(message)`` takes
    a complete one-line message (this one-argument form is also how a pickled error is rebuilt, so
    it crosses process boundaries, e.g. from a Ray worker, with ``field``, ``value`` and ``rule``).
    """

    def __init__(self, field_name: str, value: Any = _UNSET, rule: Optional[str] = None):
        if value is _UNSET and rule is None:
            self.field, self.value, self.rule = None, None, None
            super().__init__(field_name)
            return
        self.field = field_name
        self.value = None if value is _UNSET else value
        self.rule = rule
        super().__init__(f"{field_name}={self.value!r}: {rule}")


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Every rule takes ``error``: the ConfigError subclass to raise (a sweep spec raises SpecError).


def int_range(name: str, v: Any, lo: Optional[int], hi: Optional[int], error: type = ConfigError) -> None:
    if not is_int(v):
        raise error(name, v, "must be an integer")
    if lo is not None and v < lo:
        raise error(name, v, f"must be >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and v > hi:
        raise error(name, v, f"must be <= {hi}" + (f" and >= {lo}" if lo is not None else ""))


def float_range(name: str, v: Any, lo: Optional[float], hi: Optional[float],
                lo_open: bool = False, hi_open: bool = False, error: type = ConfigError) -> None:
    if not is_number(v):
        raise error(name, v, "must be a finite number")
    lo_s = f"{'>' if lo_open else '>='} {lo}"
    hi_s = f"{'<' if hi_open else '<='} {hi}"
    both = " and ".join(s for s, b in ((lo_s, lo is not None), (hi_s, hi is not None)) if b)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise error(name, v, f"must be {both}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise error(name, v, f"must be {both}")


def choice(name: str, v: Any, allowed: tuple, error: type = ConfigError) -> None:
    if v not in allowed:
        raise error(name, v, f"must be one of {', '.join(map(str, allowed))}")


def nonempty(name: str, v: Any, error: type = ConfigError, hint: str = "") -> None:
    if not isinstance(v, str) or not v.strip():
        raise error(name, v, "must be a non-empty string" + hint)
