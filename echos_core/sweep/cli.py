"""``echos sweep`` and ``echos ui``.  Ray and MLflow are imported inside the commands only."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..config import ConfigError

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

    u = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 against the sweep store",
                       description="Start `mlflow server` on 127.0.0.1 (the UI and its REST API) against "
                                   "the default store (sqlite:///mlflow.db in this folder) or --backend-store-uri.")
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    u.add_argument("--backend-store-uri", metavar="URI", help="MLflow store (default: $MLFLOW_TRACKING_URI "
                                                              "or sqlite:///mlflow.db)")
    u.set_defaults(func=_cmd_ui)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..tracking import resolve_tracking_uri
    from .runner import resolve_storage
    from .smoke import smoke_spec
    from .spec import SpecError, load_spec
    from .summary import describe_spec
    from .validate import check_trainer_configs

    if args.smoke_test and args.address:
        raise SpecError("--address", args.address, "--smoke-test runs on the local machine; leave out --address")
    spec = load_spec(args.spec, tracking_uri=args.tracking_uri, storage_path=args.storage_path)
    n_checked = check_trainer_configs(spec)  # the real spec, even when only its smoke test runs
    notes: list[str] = []
    if args.smoke_test:
        import torch

        spec, notes = smoke_spec(spec, cuda_available=torch.cuda.is_available())
        n_checked = check_trainer_configs(spec)
    tracking_uri = resolve_tracking_uri(spec.tracking_uri)
    storage = resolve_storage(spec.storage_path)
    print(describe_spec(spec, tracking_uri, storage, n_checked), flush=True)
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


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cmd_ui(args: argparse.Namespace) -> int:
    from ..tracking import resolve_tracking_uri

    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "must be in 1..65535")
    uri = resolve_tracking_uri(args.backend_store_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is already a tracking server: open it in a browser")
        return 0
    if not _port_free(args.port):
        raise ConfigError("--port", args.port, "is in use on 127.0.0.1; pick another, e.g. --port 5001")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(args.port),
           "--backend-store-uri", uri, "--workers", "1"]
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.exists():
            print(f"note: {db} does not exist yet (no runs logged there); the UI will be empty")
        cmd += ["--artifacts-destination", str(db.parent / "mlartifacts")]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        if proc.poll() is not None:
            return proc.returncode or 1
        print(f"MLflow UI: {url}  (store {uri}); Ctrl-C stops it", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
