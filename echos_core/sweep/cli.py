"""``echos sweep``.  Ray and MLflow are imported inside the command only."""

from __future__ import annotations

import argparse


__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a hyperparameter sweep from a YAML spec (Ray Tune + Optuna + ASHA, MLflow)",
        description="Run the sweep described by SPEC.yaml (format: sweeps/README.md). The whole spec, and the "
                    "trainer config at the bounds of its space, are validated before Ray starts.")
    p.add_argument("spec", metavar="SPEC.yaml", help="sweep spec, e.g. sweeps/quick.yaml")
    p.add_argument("--address", metavar="ADDR", help="join this Ray cluster (HOST:PORT, or 'auto') instead of "
                                                     "starting a local Ray instance")
    p.add_argument("--resume", action="store_true", help="continue the newest interrupted sweep of this name "
                                                         "(Tuner.restore): finished trials are not run again")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved space and the number "
                                                          "of trials, start nothing (with --address: also check "
                                                          "that the cluster can place one trial)")
    p.add_argument("--smoke-test", action="store_true", help="the same sweep with a tiny budget on this machine: "
                                                             "a few trials, 2 epochs of at most 3 steps, small data")
    p.add_argument("--tracking-uri", metavar="URI", help="override mlflow.tracking_uri of the spec")
    p.add_argument("--storage-path", metavar="PATH", help="override ray.storage_path of the spec")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..tracking import resolve_tracking_uri
    from .preflight import check_resources, check_storage, check_tracking
    from .runner import resolve_storage
    from .spec import SpecError, load_spec
    from .summary import describe_spec

    if args.smoke_test and args.address:
        raise SpecError("--address", args.address, "--smoke-test runs on the local machine; leave out --address")
    spec = load_spec(args.spec, tracking_uri=args.tracking_uri, storage_path=args.storage_path)
    # 1. trainer configs (models built), smoke budget, data: before anything starts, in the order of check_spec
    spec, n_checked, checked, notes = _checked(spec, args)
    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    storage = resolve_storage(spec.storage_path)
    # 2. the rest of the preflight (echos_core.sweep.preflight): resources, tracking, storage
    check_resources(spec, args.address)
    check_tracking(tracking_uri, "mlflow.tracking_uri", error=SpecError)
    check_storage(storage)
    print(describe_spec(spec, tracking_uri, storage, n_checked), flush=True)
    for line in checked:
        print(f"preflight: {line}")
    for n in notes:
        print(f"smoke test: {n}")
    if args.dry_run:
        if args.address:
            from .placement import check_placement, cluster_nodes

            nodes = cluster_nodes(args.address)
            check_placement(spec, nodes, f"the cluster at {args.address}")
            print(f"cluster {args.address}: {len(nodes)} live node(s) can place a trial of "
                  f"{spec.describe_resources()}")
        return 0
    from .runner import run_sweep

    return run_sweep(spec, address=args.address, resume=args.resume)


def check_spec(spec, smoke_test: bool):
    """The checks that build models and open data: the trainer configs of the space (of the real spec, even
    when only its smoke test runs), the smoke budget, then the data (:func:`.preflight.check_data`).
    Returns ``(spec as it runs, configs checked, one line per data source, smoke-test notes)``."""
    from .preflight import check_data
    from .smoke import smoke_spec
    from .validate import check_trainer_configs

    n_checked = check_trainer_configs(spec)
    notes: list[str] = []
    if smoke_test:
        import torch

        spec, notes = smoke_spec(spec, cuda_available=torch.cuda.is_available())
        n_checked = check_trainer_configs(spec)
    return spec, n_checked, check_data(spec), notes


def _checked(spec, args: argparse.Namespace):
    """:func:`check_spec`; for a launch from a process without torch (the ``echos`` command), in a child
    process while this one imports what the driver needs (Ray Tune, MLflow): the driver itself never needs
    torch and timm, and their import (about 5 s on one idle core, most of the checks' time) then overlaps
    the driver's own.  A refusal comes back as the same one-line SpecError; nothing starts before it."""
    import sys

    if args.dry_run or "torch._C" in sys.modules:  # nothing to overlap / torch is here already (tests)
        return check_spec(spec, args.smoke_test)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from .runner import import_driver_modules

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        checked = pool.submit(check_spec, spec, args.smoke_test)
        import_driver_modules(spec)
        return checked.result()
    finally:
        pool.shutdown(wait=False)  # (its process then exits by itself, while this one goes on)
