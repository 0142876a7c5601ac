"""MLflow logging for one run, safe inside Ray workers and threads.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids; nothing
touches MLflow's fluent "active run" global, so several runs can be logged from one
process (the sweep driver) or from many (Ray trial workers on several nodes).

* params: the resolved config, flattened to dotted keys (``init.on_ratio``), as strings; of the
  ``init.*`` keys only the ones the run's init scheme reads (:func:`echos_core.registry.applicable_keys`);
  not ``mlflow.*``, ``output_dir``, ``run_name`` (where a run goes, not what it is);
* metrics: one batch per epoch, ``step = metrics['epoch']``; the epoch is the step only, never a
  metric of its own (it would lead MLflow's parallel coordinates and scatter plots); non-numeric
  values are skipped;
* tags: whatever the caller passes (``echos.*``, versions, git revision), plus
  ``mlflow.parentRunId`` when the run is nested under a parent (a sweep).

This module is the one home of echos' MLflow facts: the tag names (``TAG_*``), the client
(:func:`mlflow_client`) and the tracking URI: ``$MLFLOW_TRACKING_URI``, else SQLite in the working
folder (:data:`DEFAULT_TRACKING_URI`); a relative SQLite path is made absolute against the current
folder (:func:`resolve_tracking_uri`), so a process that changes directory (a Ray trial does)
still writes to the same file.
"""

from __future__ import annotations

import numbers
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .config import flatten
from .registry import INIT_SCHEMES, applicable_keys

__all__ = [
    "DEFAULT_TRACKING_URI",
    "TAG_SWEEP", "TAG_SWEEP_ID", "TAG_ROLE", "TAG_STORAGE", "TAG_TRIAL_ID", "TAG_TRIAL_NAME", "TAG_SEED",
    "TAG_STATUS", "TAG_ASHA_STOPPED", "TAG_LAST_EPOCH", "TAG_ERROR", "TAG_NODE_ID", "TAG_NODE_HOST",
    "TAG_N_TRIALS", "TAG_N_ASHA_STOPPED", "TAG_N_ERRORS", "TAG_WALL_S", "TAG_BEST_TRIAL_ID", "TAG_BEST_RUN_ID",
    "TAG_BEST_CHECKPOINT", "ROLE_SWEEP", "echos_tag", "best_metric_tag", "environment_tags",
    "mlflow_client",
    "MlflowRun",
    "resolve_tracking_uri",
    "is_remote_tracking_uri",
    "get_or_create_experiment",
    "find_runs",
    "end_run",
    "delete_run",
    "param_value",
    "run_params",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # when neither the caller nor $MLFLOW_TRACKING_URI names one
STEP_KEY = "epoch"  # the metrics' step; not logged as a metric

# --------------------------------------------------------------------------- tag names

TAG_PREFIX = "echos."


def echos_tag(name: str) -> str:
    """The MLflow tag that holds echos' fact ``name`` (``sweep_id`` -> ``echos.sweep_id``)."""
    return TAG_PREFIX + name


TAG_SWEEP = echos_tag("sweep")  # the sweep's name (every run of a sweep: parent and trials)
TAG_SWEEP_ID = echos_tag("sweep_id")  # one invocation of a sweep (a resume keeps it)
TAG_ROLE = echos_tag("role")  # ROLE_SWEEP on the parent run
TAG_STORAGE = echos_tag("storage")  # the sweep's Ray storage folder (parent run)
TAG_TRIAL_ID = echos_tag("trial_id")  # Ray's trial id (trial runs only)
TAG_TRIAL_NAME = echos_tag("trial_name")
TAG_SEED = echos_tag("seed")
TAG_STATUS = echos_tag("status")  # running, finished, stopped (ASHA), error, orphaned
TAG_ASHA_STOPPED = echos_tag("asha_stopped")  # "true" / "false"
TAG_LAST_EPOCH = echos_tag("last_epoch")
TAG_ERROR = echos_tag("error")  # "<ExceptionType>: <message>" of a failed trial
TAG_NODE_ID = echos_tag("node_id")
TAG_NODE_HOST = echos_tag("node_host")
TAG_WORLD_SIZE = echos_tag("world_size")  # data-parallel processes of a trial (1: a single process)
TAG_NODES = echos_tag("nodes")  # the Ray node ids a data-parallel trial's workers ran on, in rank order
TAG_N_TRIALS = echos_tag("n_trials")  # sweep summary on the parent run
TAG_N_ASHA_STOPPED = echos_tag("n_asha_stopped")
TAG_N_ERRORS = echos_tag("n_errors")
TAG_WALL_S = echos_tag("wall_s")
TAG_BEST_TRIAL_ID = echos_tag("best_trial_id")
TAG_BEST_RUN_ID = echos_tag("best_run_id")
TAG_BEST_CHECKPOINT = echos_tag("best_checkpoint")
ROLE_SWEEP = "sweep"


def best_metric_tag(metric: str) -> str:
    """The parent-run tag with the best trial's value of ``metric``."""
    return echos_tag(f"best_{metric}")


def environment_tags(env: Mapping[str, Any]) -> dict[str, Any]:
    """Tags of a run's environment (:func:`echos_core.runinfo.environment`): ``echos.<key>``, None dropped."""
    return {echos_tag(k): v for k, v in env.items() if v is not None}

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def resolve_tracking_uri(uri: Optional[str] = None, base_dir: str | Path | None = None) -> str:
    """The store to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`;
    a relative SQLite path or plain folder is made absolute.

    ``sqlite:///mlflow.db`` (three slashes: relative path) becomes ``sqlite:////abs/dir/mlflow.db``.
    HTTP(S) and other URIs are returned unchanged.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and not path.startswith("/") and path != ":memory:":
            return "sqlite:///" + str((base / path).resolve())
        return uri
    if "://" not in uri and not uri.startswith("databricks"):
        return str((base / uri).resolve())  # a plain folder: MLflow's file store
    return uri


def is_remote_tracking_uri(uri: str) -> bool:
    """True for a tracking server every node can reach (http, https, databricks)."""
    return uri.startswith(("http://", "https://", "databricks"))


def param_value(v: Any) -> str:
    """How a config value is written as an MLflow param (YAML spelling of null and booleans)."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    if v is None:
        s = "null"
    elif isinstance(v, bool):
        s = "true" if v else "false"
    else:
        s = str(v)
    return s[:MAX_PARAM_VAL_LENGTH]


# Config keys that say where a run is logged or written, not what it trains: never params.
NOT_PARAMS = ("output_dir", "run_name")
NOT_PARAM_PREFIXES = ("mlflow.",)


def run_params(config: Mapping) -> dict[str, Any]:
    """The params of a run: ``config`` flattened, without the ``init.*`` keys its init scheme does not
    read and without the keys that only say where it is written or logged (:data:`NOT_PARAMS`, ``mlflow.*``).

    (A config without a registered ``init.scheme``, such as a sweep's parent run, keeps every init key.)"""
    flat = {k: v for k, v in flatten(dict(config)).items()
            if k not in NOT_PARAMS and not k.startswith(NOT_PARAM_PREFIXES)}
    scheme = flat.get("init.scheme")
    if scheme not in INIT_SCHEMES:
        return flat
    keep = set(applicable_keys(scheme))
    return {k: v for k, v in flat.items() if not k.startswith("init.") or k == "init.scheme" or k in keep}


def mlflow_client(tracking_uri: str):
    """The MLflow client every echos module uses (explicit URI, never the fluent global)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def get_or_create_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created (or restored from the bin) if needed; race-safe."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client, name))
    except MlflowException:
        # Another process created it between our look-up and create: use theirs.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _artifact_location(client, name: str) -> Optional[str]:
    """For a SQLite store: ``<db folder>/mlartifacts/<experiment>``, beside the database.

    (MLflow's own default is ``./mlruns`` relative to whichever process happens to create
    the experiment.)  Servers and other stores keep their own default (``None``).
    """
    uri = client.tracking_uri
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return (db.parent / "mlartifacts" / safe).as_uri()


def find_runs(tracking_uri: str, experiment: str, tags: Mapping[str, str]) -> list:
    """Runs of ``experiment`` whose tags equal ``tags`` (all of them), oldest first."""
    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = " and ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items())
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=flt, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def end_run(tracking_uri: str, run_id: str, status: str, tags: Optional[Mapping[str, Any]] = None) -> bool:
    """Set ``tags`` on an existing run and mark it ``status`` (FINISHED, FAILED, KILLED), from any process.

    A run that already ended keeps its own end time (so its duration stays its own); a run already
    ended with this status and these tags is left untouched.  Returns whether anything changed."""
    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    run = client.get_run(run_id)
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if run.info.status == status and all(run.data.tags.get(k) == v for k, v in tags.items()):
        return False
    _log_tags(client, run_id, tags)
    ended = run.info.status != "RUNNING" and run.info.end_time
    client.set_terminated(run_id, status, end_time=run.info.end_time if ended else None)
    return True


def _log_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` on a run, in batches of MLflow's size, values cut to MLflow's length limit."""
    from mlflow.entities import RunTag
    from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

    items = [RunTag(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
    for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk, synchronous=True)


def delete_run(tracking_uri: str, run_id: str, tags: Optional[Mapping[str, Any]] = None) -> None:
    """Tag, end (KILLED) and soft-delete a run: hidden from searches and the UI, restorable."""
    end_run(tracking_uri, run_id, "KILLED", tags)
    mlflow_client(resolve_tracking_uri(tracking_uri)).delete_run(run_id)


def _quote(v: Any) -> str:
    return str(v).replace("'", "\\'")


class MlflowRun:
    """One MLflow run: a context manager that ends the run FINISHED, or FAILED on an exception.

    ``run_id`` given: attach to that existing run (a resumed trial) instead of creating one;
    params already logged are not logged again.
    """

    def __init__(self, tracking_uri: Optional[str], experiment: str, run_name: Optional[str],
                 config: Mapping, tags: Optional[Mapping[str, Any]] = None, *,
                 parent_run_id: Optional[str] = None, run_id: Optional[str] = None):
        from mlflow.entities import Param, RunStatus
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = mlflow_client(self.tracking_uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment)
        all_tags = {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id
            logged_params: dict[str, str] = {}
        else:
            run = self.client.get_run(run_id)
            self.run_id = run_id
            logged_params = dict(run.data.params)
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.set_tags(all_tags)
        params = [Param(k, param_value(v)) for k, v in run_params(config).items() if k not in logged_params]
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk, synchronous=True)
        self._ended = False

    # ------------------------------------------------------------------ logging

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        """Log every numeric value of ``metrics`` but the epoch at ``step = metrics['epoch']``."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        step = int(metrics.get("epoch", 0))
        now = int(time.time() * 1000)
        batch = [Metric(str(k), float(v), now, step) for k, v in metrics.items()
                 if k != STEP_KEY and _is_number(v)]
        for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        _log_tags(self.client, self.run_id, tags)

    def logged_steps(self, key: Optional[str] = None) -> set[int]:
        """Steps (epochs) at which metric ``key`` (default: any metric) was already logged, to skip
        them when a run resumes."""
        keys = [key] if key else list(self.client.get_run(self.run_id).data.metrics)
        return {m.step for k in keys for m in self.client.get_metric_history(self.run_id, k)}

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED (idempotent)."""
        if not self._ended:
            self.client.set_terminated(self.run_id, status)
            self._ended = True

    def __enter__(self) -> "MlflowRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


def _is_number(v: Any) -> bool:
    """int, float, bool and numpy scalars; strings, None and containers are not metrics."""
    return isinstance(v, numbers.Real)


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
