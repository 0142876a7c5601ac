"""Can a cluster place one trial of a spec's shape?  Checked before a sweep starts and by ``--dry-run --address``.

A trial is ``resources.workers`` bundles of ``{CPU: cpus, GPU: gpus}`` that Ray places with the
``resources.placement`` strategy (plus, when data-parallel, ``DRIVER_CPUS`` for the trial's own
process).  A trial that no arrangement of the live nodes can hold would wait forever; this says
so in one line instead (a :class:`SpecError`, exit status 2).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from .spec import DRIVER_CPUS, SpecError, SweepSpec

__all__ = ["check_placement", "cluster_nodes"]


def _capacity(node: Mapping[str, float], cpus: float, gpus: float) -> int:
    """How many worker bundles of (cpus, gpus) fit on a node with ``node`` resources."""
    fit = math.floor(node.get("CPU", 0) / cpus + 1e-9) if cpus > 0 else 10**9
    if gpus > 0:
        fit = min(fit, math.floor(node.get("GPU", 0) / gpus + 1e-9))
    return max(fit, 0)


def _describe(nodes: Sequence[Mapping[str, float]]) -> str:
    return ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no live node"


def check_placement(spec: SweepSpec, nodes: Sequence[Mapping[str, float]], where: str) -> None:
    """Raise :class:`SpecError` unless ``nodes`` (each node's total resources) can hold one trial."""
    caps = [_capacity(n, spec.cpus, spec.gpus) for n in nodes]
    w = spec.workers
    if spec.placement == "STRICT_PACK" or w == 1:
        fits, rule = max(caps, default=0) >= w, "one node must hold every worker"
    elif spec.placement == "STRICT_SPREAD":
        fits, rule = sum(c >= 1 for c in caps) >= w, "each worker needs a node of its own"
    else:
        fits, rule = sum(caps) >= w, "the nodes together must hold every worker"
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    if fits and total_cpu + 1e-9 < spec.trial_cpus:
        fits, rule = False, f"the trial's own process needs {DRIVER_CPUS:g} CPU beside its workers"
    if not fits:
        key = "resources" if w > 1 else ("resources.gpus" if spec.gpus and max(caps, default=0) < 1
                                         and any(_capacity(n, spec.cpus, 0) for n in nodes) else "resources.cpus")
        value = spec.describe_resources() if w > 1 else (spec.gpus if key == "resources.gpus" else spec.cpus)
        raise SpecError(key, value, f"{where} cannot place one trial of this shape ({rule}; "
                                    f"nodes: {_describe(nodes)})")


def cluster_nodes(address: str) -> list[dict]:
    """The total resources of every live node of the Ray cluster at ``address`` (connects, then leaves)."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
