"""Run checkpoints: where they are, what they hold, reading and writing them, and the model they hold.

A checkpoint (``<run>/checkpoints/epoch_0003/checkpoint.pt``) holds model, optimiser, scheduler,
epoch, history, every RNG state (:func:`rng_state`) and the config; ``format`` is
:data:`CHECKPOINT_FORMAT`.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import config_from_dict
from .validation import ConfigError

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "find_checkpoint", "load_checkpoint", "save_checkpoint",
           "epoch_dirs", "run_dir_of", "rng_state", "set_rng_state", "model_from_checkpoint"]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")


def rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, i)


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file for ``path``: a ``checkpoint.pt`` file, a checkpoint folder holding one,
    or a run folder (its newest ``checkpoints/epoch_*``)."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / CHECKPOINT_FILE).is_file():
        return p / CHECKPOINT_FILE
    epochs = epoch_dirs(p / "checkpoints")
    if epochs and (epochs[-1] / CHECKPOINT_FILE).is_file():
        return epochs[-1] / CHECKPOINT_FILE
    raise ConfigError(f"resume_from={str(path)!r}: no {CHECKPOINT_FILE} there "
                      "(give a checkpoint file, a checkpoint folder or a run folder)")


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint (see :func:`find_checkpoint` for what ``path`` may be) onto the CPU."""
    file = find_checkpoint(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: one line, before any compute, no internals
        why = "is not a PyTorch file" if isinstance(e, (pickle.UnpicklingError, RuntimeError, IndexError, EOFError,
                                                         KeyError, ValueError)) else f"cannot be read ({type(e).__name__})"
        raise ConfigError("checkpoint", str(file), f"{why}: not an echos checkpoint (a checkpoint.pt, its folder or "
                                                   "a run folder)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"resume_from={str(file)!r}: not an echos checkpoint (format {CHECKPOINT_FORMAT})")
    ckpt["path"] = str(file)
    return ckpt


def epoch_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    dirs = [d for d in folder.iterdir() if d.is_dir() and _EPOCH_DIR.match(d.name)]
    return sorted(dirs, key=lambda d: int(_EPOCH_DIR.match(d.name).group(1)))


def run_dir_of(checkpoint_file: str | Path) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/epoch_0003/checkpoint.pt``; None for a checkpoint elsewhere."""
    file = Path(checkpoint_file).resolve()
    if file.parent.parent.name == "checkpoints" and _EPOCH_DIR.match(file.parent.name):
        return file.parent.parent.parent
    return None


def save_checkpoint(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / CHECKPOINT_FILE)  # atomic: a reader never sees half a checkpoint
    return folder


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild the trained model of a checkpoint (file, checkpoint folder or run folder).

    The architecture comes from the checkpoint's config (``create_model``); the number of classes
    and of input channels are read from the state dict (classifier rows, stem input channels), so
    no data set is needed.  Returns ``(model in eval mode, config, info)`` where ``info`` has
    ``path``, ``epoch`` and ``run_dir`` (the run folder, or the checkpoint's folder).
    """
    from .models import create_model

    try:
        ckpt = load_checkpoint(path)
    except ConfigError as e:
        raise ConfigError(str(e).replace("resume_from=", "checkpoint=", 1)) from None
    file = Path(ckpt["path"]).resolve()
    if "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"checkpoint={str(file)!r}: has no 'model' or 'config' entry")
    cfg = config_from_dict(ckpt["config"])
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}

    guess = cfg.data.fake_classes if cfg.data.name == "fake" else 10
    model = create_model(cfg.model, num_classes=guess, in_chans=3)
    head, stem = _head_key(model), _stem_key(model)
    num_classes = int(state[head].shape[0]) if head in state else guess
    in_chans = int(state[stem].shape[1]) if stem in state else 3
    if (num_classes, in_chans) != (guess, 3):
        model = create_model(cfg.model, num_classes=num_classes, in_chans=in_chans)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"checkpoint={str(file)!r}: its weights do not fit model {cfg.model.name} "
                         f"({' '.join(str(e).split())[:200]})") from None
    model.eval()
    run_dir = run_dir_of(file) or file.parent
    return model, cfg, {"path": str(file), "epoch": ckpt.get("epoch"), "run_dir": str(run_dir),
                        "num_classes": num_classes, "in_chans": in_chans}


def _head_key(model: nn.Module) -> str | None:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    for name, m in model.named_modules():
        if m is head:
            return f"{name}.weight"
    return None


def _stem_key(model: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"{name}.weight"
    return None
