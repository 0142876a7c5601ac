"""The init-scheme registry: the one place that knows which schemes exist and which keys they read.

A scheme is one decorated function (see :mod:`echos_core.inits` for the built-in ones)::

    @register_init("my-scheme", keys=("init.fraction", "init.noise"))
    def init_my_scheme_(conv, cfg, generator, name=""):
        ...  # re-initialise conv.weight in place, return a LayerReport

``keys`` are the ``init.*`` config keys the function reads.  Config validation, the sweep spec,
MLflow param logging, the report's arms and the other-kernel analysis all ask this registry, so
a scheme registered from anywhere (a test file, a plug-in) validates, runs and is reported.

It imports only :mod:`echos_core.validation`, so every other module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .validation import ConfigError

__all__ = ["InitScheme", "INIT_SCHEMES", "register_init", "get_init", "scheme_names", "applicable_keys",
           "baselines", "report_rank"]

InitFn = Callable[..., object]  # fn(conv, cfg, generator, name="") -> LayerReport


@dataclass(frozen=True)
class InitScheme:
    name: str
    fn: InitFn
    keys: tuple[str, ...]  # the init.* config keys the scheme reads (init.scheme itself not included)
    baseline: bool = False  # a reference the report compares the other schemes with (listed last)


INIT_SCHEMES: dict[str, InitScheme] = {}


def register_init(name: str, *, keys: tuple[str, ...] | list[str] = (),
                  baseline: bool = False) -> Callable[[InitFn], InitFn]:
    """Decorator: register ``fn(conv, cfg, generator, name="") -> LayerReport`` as init scheme ``name``.

    The function re-initialises the kernels of one depthwise ``conv`` in place, drawing every random
    number from ``generator``, and reports what it changed (``name`` is the layer's qualified name).
    ``keys`` are the ``init.*`` config keys it reads; ``baseline`` marks a reference scheme."""
    keys = tuple(keys)
    bad = [k for k in keys if not k.startswith("init.") or k == "init.scheme"]
    if bad:
        raise ValueError(f"register_init({name!r}): keys {bad} must be init.* config keys other than init.scheme")

    def deco(fn: InitFn) -> InitFn:
        INIT_SCHEMES[name] = InitScheme(name, fn, keys, baseline)
        return fn

    return deco


def get_init(name: str) -> InitFn:
    """The init function of scheme ``name``; an unknown name lists the known ones."""
    try:
        return INIT_SCHEMES[name].fn
    except (KeyError, TypeError):
        raise _unknown(name) from None


def scheme_names() -> tuple[str, ...]:
    """Every registered scheme, in registration order."""
    return tuple(INIT_SCHEMES)


def applicable_keys(scheme: str) -> tuple[str, ...]:
    """The ``init.*`` config keys that scheme ``scheme`` reads (``init.scheme`` not included)."""
    try:
        return INIT_SCHEMES[scheme].keys
    except (KeyError, TypeError):
        raise _unknown(scheme) from None


def _unknown(name: object) -> ConfigError:
    return ConfigError("init.scheme", name, f"unknown init scheme; known: {', '.join(INIT_SCHEMES)}")


def baselines() -> tuple[str, ...]:
    """The reference schemes, in registration order (the report compares every other arm with them)."""
    return tuple(s.name for s in INIT_SCHEMES.values() if s.baseline)


def report_rank(scheme: object) -> tuple[int, int]:
    """Reading order of schemes: non-baselines in registration order, unknown ones, then baselines."""
    names = list(INIT_SCHEMES)
    if scheme in INIT_SCHEMES:
        return (int(INIT_SCHEMES[scheme].baseline), names.index(scheme))
    return (0, len(names))
