"""Preflight: what a sweep needs from the world, checked before Ray starts (``--dry-run`` and launch alike).

:func:`preflight` runs after the spec and the trainer configs of its space are validated
(:mod:`.spec`, :mod:`.validate`), and before any Ray process or MLflow run exists:

1. data: every data source the space can reach is opened cheaply (counts from indexes, headers and
   label lists, never the images: :func:`echos_core.data.count_images`), and the trainer's batch rules
   (:func:`echos_core.trainer.check_batch_size`) are applied to each configuration that reaches it;
2. resources: a trial's ``resources.cpus`` / ``resources.gpus`` (times ``resources.workers``) must fit this
   machine (a cluster named by ``--address`` is checked when the driver joins it, and by ``--dry-run``,
   still before any MLflow run exists: :mod:`.placement`);
3. tracking: an MLflow server must answer within :data:`TRACKING_TIMEOUT_S`; a SQLite or folder store
   must be writable (:func:`check_tracking`, also used by ``echos train`` and ``echos report``);
4. storage: ``ray.storage_path`` must be writable (local folders; bucket URIs are left to Ray).

Every failure is one :class:`~echos_core.sweep.spec.SpecError` line: field, value, rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import threading
import urllib.error
import urllib.request
from typing import Optional

from ..config import ConfigError
from ..validation import check_writable
from .spec import SpecError, SweepSpec, inline

__all__ = ["preflight", "check_data", "check_resources", "check_tracking", "check_storage", "TRACKING_TIMEOUT_S"]

TRACKING_TIMEOUT_S = 10.0  # an MLflow server that does not answer /health within this is refused
_MAX_COMBOS = 1024  # combinations of data-shaping probes checked; beyond, one parameter at a time
_DATA_KEYS = ("data.", "train.batch_size")


def preflight(spec: SweepSpec, tracking_uri: str, storage: str, address: Optional[str] = None) -> list[str]:
    """Every check above, in order; returns one line per data source, for the dry-run's report."""
    lines = check_data(spec)
    check_resources(spec, address)
    check_tracking(tracking_uri, "mlflow.tracking_uri", error=SpecError)
    check_storage(storage)
    return lines


# --------------------------------------------------------------------------- data


def _data_combos(spec: SweepSpec) -> list[dict]:
    """The sampled points that reach every data source and batch size of the space (probes of the
    parameters that set ``data.*`` or ``train.batch_size``): all combinations when few, else one at a time."""
    group = [p for p in spec.params if any(k.startswith(_DATA_KEYS) for k in p.config_keys())]
    if math.prod(len(p.probes()) for p in group) <= _MAX_COMBOS:
        return [dict(zip([p.key for p in group], vals)) for vals in itertools.product(*(p.probes() for p in group))]
    return [{}] + [{p.key: v} for p in group for v in p.probes()]


def check_data(spec: SweepSpec) -> list[str]:
    """Open each data source the space can reach (cheaply) and apply the batch rules to each configuration."""
    from ..data import count_images
    from ..data.transforms import uses_mixup
    from ..trainer import check_batch_size

    counts: dict[str, tuple[int, int]] = {}
    labels: dict[str, str] = {}
    for combo in _data_combos(spec):
        cfg = spec.build_config(combo, spec.seeds[0])
        key = inline({k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "augment"})
        labels[key] = cfg.data.name + (f" at {cfg.data.root}" if cfg.data.root else "")
        try:
            if key not in counts:
                counts[key] = count_images(cfg)
            check_batch_size(cfg.train.batch_size, counts[key][0], uses_mixup(cfg.data.augment))
        except ConfigError as e:
            if not combo:
                raise SpecError(f"base.{e.field}", e.value, e.rule) from None
            raise SpecError.at(f"space={inline(spec.overrides(combo))}", str(e)) from None
    return [f"data {labels[key]}: {n_train} train / {n_val} val images (limits applied), batch rules hold"
            for key, (n_train, n_val) in counts.items()]


# --------------------------------------------------------------------------- resources


def check_resources(spec: SweepSpec, address: Optional[str]) -> None:
    """A trial this machine cannot hold would wait for ever: refuse it.  (At ``--address`` the cluster's
    nodes are checked when the driver joins, before any MLflow run: ``runner._check_fits``.)"""
    if address:
        return
    cpus = spec.num_cpus or os.cpu_count() or 1
    where = f"ray.num_cpus is {cpus}" if spec.num_cpus else f"this machine has {cpus} CPUs"
    if spec.workers > 1:  # every worker and the trial's own process on this one node
        from .placement import check_placement

        check_placement(spec, [{"CPU": cpus, "GPU": _local_gpus() if spec.gpus else 0}],
                        f"the local Ray instance ({where})")
        return
    if spec.cpus > cpus:
        raise SpecError("resources.cpus", spec.cpus, f"must be <= the CPUs of the local Ray instance ({where}); "
                                                     "a trial could never start")
    if spec.gpus > 0:
        n = _local_gpus()
        if spec.gpus > n:
            raise SpecError("resources.gpus", spec.gpus, f"this machine has {n} CUDA GPU(s); a trial could never "
                                                         "start (run on a GPU machine or a cluster with --address)")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --------------------------------------------------------------------------- tracking and storage


def _server_answers(uri: str, timeout: float) -> Optional[str]:
    """None when ``uri/health`` answers within ``timeout`` seconds (name resolution included), else why not."""
    outcome: list[Optional[str]] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError as e:  # it answers; a server error still means it cannot log
            outcome.append(f"answers HTTP {e.code}" if e.code >= 500 else None)
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            outcome.append(f"does not answer ({' '.join(str(reason).split())[:120]})")

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    return outcome[0] if outcome else f"does not answer within {timeout:g} s"


def check_tracking(uri: str, field: str, error: type = ConfigError, write: bool = True,
                   timeout: float = TRACKING_TIMEOUT_S) -> None:
    """An MLflow server must answer (bounded: ``timeout``); a SQLite file or folder store must be writable
    (``write``) or, for readers, exist."""
    from ..tracking import is_remote_tracking_uri

    if uri.startswith(("http://", "https://")):
        why = _server_answers(uri, timeout)
        if why is not None:
            raise error(field, uri, f"{why}; start the server (`mlflow server` or `echos ui`) or use sqlite:///mlflow.db")
        return
    if is_remote_tracking_uri(uri) or (uri.count("://") and not uri.startswith(("sqlite:///", "file://"))):
        return  # databricks, other databases: their client's to check
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri.removeprefix("file://")
    if path == ":memory:":
        return
    if write:
        check_writable(field, path, error=error, what="file" if uri.startswith("sqlite:") else "folder")
    elif not os.path.exists(path):
        raise error(field, uri, "is no MLflow store: it does not exist (no run was ever logged there)")


def check_storage(storage: str) -> None:
    """``ray.storage_path`` must be writable (a local folder; ``s3://`` and other buckets are Ray's to check)."""
    if "://" in storage and not storage.startswith("file://"):
        return
    check_writable("ray.storage_path", storage.removeprefix("file://"), error=SpecError)
