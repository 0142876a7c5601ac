"""What a run needs to be reproduced: package versions, machine, git revision.

:func:`environment` is written to ``environment.json`` in every run folder, and sweeps put the
same keys into MLflow tags.  Optional packages (Ray, MLflow, Optuna) are looked up through
``importlib.metadata`` and never imported here.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["environment", "git_revision", "package_version"]

PACKAGES = ("echos", "torch", "torchvision", "timm", "numpy", "ray", "mlflow", "optuna")


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision(path: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: this package), with
    ``-dirty`` appended when tracked files have uncommitted changes; ``'unknown'`` when the
    package is not a tracked file of a git checkout (e.g. installed from a wheel)."""
    pkg = Path(path) if path is not None else Path(__file__).resolve().parent
    cwd = pkg if pkg.is_dir() else pkg.parent
    # The package must be tracked by the repository, not merely sit inside some other checkout.
    if _git(["ls-files", "--error-unmatch", str(pkg / "__init__.py" if pkg.is_dir() else pkg)], cwd) is None:
        return "unknown"
    head = _git(["rev-parse", "HEAD"], cwd)
    if not head:
        return "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return f"{head}-dirty" if status else head


def environment() -> dict:
    """Versions, hardware and git revision of this process, as a JSON-ready dict."""
    cuda = torch.cuda.is_available()
    env = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "git_revision": git_revision(),
    }
    for name in PACKAGES:
        env[f"{name}_version"] = package_version(name)
    return env
