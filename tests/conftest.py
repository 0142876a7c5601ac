"""Shared test set-up: quiet, offline, small."""

import os
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Under `uv run pytest`, Ray would relaunch workers through `uv run` (echos_core.sweep turns this off too).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Hermetic data cache: tests never read or write the user's ~/.cache/echos.
os.environ.setdefault("ECHOS_DATA", tempfile.mkdtemp(prefix="echos-test-data-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def cfg_dict():
    """A tiny, fast, valid trainer configuration as a nested dict."""
    return {
        "model": {"name": "convmixer", "dim": 16, "depth": 2, "kernel_size": 5, "patch_size": 2},
        "data": {"name": "fake", "image_size": 16, "fake_size": 64, "fake_classes": 4},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.5, "device": "cpu"},
        "seed": 0,
    }
