"""``echos ui``: the MLflow UI on 127.0.0.1, opened on a sweep's runs table.

MLflow 3 opens on its GenAI overview ("Traces", "Tokens"), which says nothing about a sweep; the
link :func:`runs_url` opens an experiment's runs table directly.  ``echos ui [EXPERIMENT]`` prints
that link for the experiment named (default: the one with the newest run) and, with ``--open``,
opens it in a browser when there is one.

The server (``mlflow server``, UI and REST API) runs in its own process group, so a Ctrl-C in the
terminal reaches only ``echos ui``, which then stops the whole group (server and workers) and exits
quietly; SIGTERM and SIGHUP do the same, and on Linux the server is also told to stop if ``echos ui``
dies without cleaning up (``PR_SET_PDEATHSIG``).  The port is checked the way the server binds it
(``SO_REUSEADDR``), so a port left in TIME_WAIT by a server just stopped is free again at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from .validation import ConfigError

__all__ = ["register", "runs_url", "port_free", "DEFAULT_PORT", "HOST"]

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
_RUNS_VIEW = "runs?workflowType=machine_learning"  # the classic runs table, not the GenAI overview
_START_TIMEOUT_S = 300  # a loaded 2-core machine takes a minute or more
_STOP_GRACE_S = 20


def runs_url(base: str, experiment_id: str) -> str:
    """The runs table of experiment ``experiment_id`` on the MLflow UI at ``base`` (``http://HOST:PORT``)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/{_RUNS_VIEW}"


def register(sub) -> None:
    u = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 and print the link to a sweep's runs",
                       description="Start `mlflow server` on 127.0.0.1 (the UI and its REST API) against the "
                                   "default store ($MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder) "
                                   "or --backend-store-uri, and print the link to EXPERIMENT's runs table. "
                                   "Ctrl-C stops it.")
    u.add_argument("experiment", nargs="?", metavar="EXPERIMENT",
                   help="experiment to link to (a sweep's name, or `train`; default: the one with the newest run)")
    u.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})")
    u.add_argument("--backend-store-uri", metavar="URI", help="MLflow store (default: $MLFLOW_TRACKING_URI "
                                                              "or sqlite:///mlflow.db)")
    u.add_argument("--open", action="store_true", help="open the link in a web browser, when there is one")
    u.set_defaults(func=_cmd_ui)


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``host:port`` now (bound as uvicorn/gunicorn bind: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


def _experiment_id(uri: str, name: Optional[str]) -> Optional[str]:
    """The id of experiment ``name`` (a one-line error listing the others when unknown), or without a name
    the experiment of the newest run; None when the store has no runs yet."""
    from .tracking import mlflow_client

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        if name:
            raise ConfigError("EXPERIMENT", name, f"{uri} does not exist yet (no runs logged there)")
        return None
    client = mlflow_client(uri)
    if name:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage != "active":
            known = ", ".join(e.name for e in client.search_experiments()) or "(none)"
            raise ConfigError("EXPERIMENT", name, f"no such experiment in {uri}; experiments there: {known}")
        return exp.experiment_id
    ids = [e.experiment_id for e in client.search_experiments()]
    newest = client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
    return newest[0].info.experiment_id if newest else None


def _die_with_parent() -> None:
    """In the server's process: SIGTERM when the process that started it dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _start_server(uri: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
           "--backend-store-uri", uri, "--workers", "1"]
    if uri.startswith("sqlite:///"):
        cmd += ["--artifacts-destination", str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop_server(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(proc.pid):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + _STOP_GRACE_S
        while time.time() < deadline:
            proc.poll()  # reap the leader, else it lingers in the group as a zombie
            if not _group_alive(proc.pid):
                break
            time.sleep(0.2)
    proc.poll()


def _wait_healthy(proc: subprocess.Popen, base: str) -> bool:
    deadline = time.time() + _START_TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived: stop the server and exit."""


def _on_signal(signum, frame) -> None:
    raise _Stop(signum)


def _cmd_ui(args: argparse.Namespace) -> int:
    from .tracking import resolve_tracking_uri

    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "must be in 1..65535")
    uri = resolve_tracking_uri(args.backend_store_uri)
    if uri.startswith(("http://", "https://")):
        exp_id = _experiment_id(uri, args.experiment)
        print(f"{uri} is already a tracking server: {runs_url(uri, exp_id) if exp_id else uri}")
        return 0
    if not port_free(args.port):
        raise ConfigError("--port", args.port, f"is in use on {HOST}; pick another, e.g. --port {args.port + 1}")
    exp_id = _experiment_id(uri, args.experiment)
    base = f"http://{HOST}:{args.port}"
    before = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    before[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    proc = _start_server(uri, args.port)
    try:
        if not _wait_healthy(proc, base):
            print(f"echos: error: mlflow server did not answer on {base} (exit status {proc.poll()})",
                  file=sys.stderr)
            return 1
        link = runs_url(base, exp_id) if exp_id else base
        print(f"MLflow UI: {base}  (store {uri}); Ctrl-C stops it", flush=True)
        print(f"runs: {link}" if exp_id else "no runs in this store yet", flush=True)
        if args.open:
            import webbrowser

            if not webbrowser.open(link):
                print("no web browser found here: open the link above yourself", flush=True)
        return proc.wait()
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        _stop_server(proc)
        for sig, handler in before.items():
            signal.signal(sig, handler)
