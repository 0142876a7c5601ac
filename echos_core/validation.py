"""The validation toolkit of config files and sweep specs: one error type, a few rules.

Every rule raises :class:`ConfigError`, whose ``str`` is one line naming the field, the value and
the rule (``init.on_ratio=1.5: must be >= 0.0 and <= 1.0``).  ``echos`` prints that line and exits
with status 2; anything else keeps its traceback.

This module imports nothing from echos, so every other module may use it.
"""

from __future__ import annotations

import math
import reprlib
from itertools import islice
import tempfile
from pathlib import Path
from typing import Any, Optional

__all__ = ["ConfigError", "is_int", "is_number", "int_range", "float_range", "choice", "nonempty", "short_repr",
           "load_yaml", "check_yaml_size", "check_writable", "MAX_YAML_NODES", "MAX_YAML_BYTES"]

# A YAML document may hold at most this many values once its aliases are expanded (a spec or config
# is a few hundred), and its file at most this many bytes: hostile YAML ("billion laughs") is refused
# in bounded time instead of being walked, copied or printed.
MAX_YAML_NODES = 100_000
MAX_YAML_BYTES = 4 * 2**20

class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr, keeping a mapping's own key order (reprlib sorts keys)."""

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items + (["..."] if len(x) > self.maxdict else [])) + "}"


_REPR = _ShortRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 12, 12, 12, 12
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 160, 160, 60

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
        super().__init__(f"{field_name}={short_repr(self.value)}: {rule}")


def short_repr(v: Any) -> str:
    """``repr(v)``, bounded (nesting, items, string length): never the whole of a huge value."""
    return _REPR.repr(v)


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


# --------------------------------------------------------------------------- YAML and paths


def check_yaml_size(data: Any, field: str, limit: int = MAX_YAML_NODES, error: type = ConfigError) -> None:
    """Refuse a loaded document that expands (aliases included) to more than ``limit`` values.

    The walk stops as soon as the budget is spent, so its cost is bounded by ``limit``."""
    budget = limit
    stack = [data]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise error(field, None, f"expands to more than {limit} values (nested YAML aliases?); "
                                     "a spec or config holds a few hundred")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


def load_yaml(path: str | Path, field: str, error: type = ConfigError) -> Any:
    """Parse the YAML file ``path`` safely and within bounds (size, expansion); errors name ``field``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise error(field, str(path), "file does not exist" if not p.exists() else "is not a file")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise error(field, str(path), f"is {p.stat().st_size} bytes; a spec or config is at most {MAX_YAML_BYTES}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(field, str(path), f"is not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(field, str(path), f"is not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise error(field, str(path), "is nested too deeply") from None
    check_yaml_size(data, field, error=error)
    return data


def check_writable(field: str, path: str | Path, error: type = ConfigError, what: str = "folder") -> Path:
    """Refuse a ``what`` (``folder`` or ``file``) that cannot be created or written, before any work.

    Nothing is created: the nearest existing folder on the way must be a folder that accepts a new
    file (tried with a temporary file, which is removed), and ``path`` itself, if it exists, a ``what``."""
    p = Path(path).expanduser().absolute()
    if p.exists():
        if what == "folder" and not p.is_dir():
            raise error(field, str(path), "exists and is not a folder")
        if what == "file" and p.is_dir():
            raise error(field, str(path), "is a folder; give a file name")
    probe = p if what == "folder" and p.is_dir() else p.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise error(field, str(path), f"cannot be created: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise error(field, str(path), f"cannot be written ({e.strerror or type(e).__name__} in {probe})") from None
    return p
