"""The Ray Tune trainable: a thin adapter from one trial to :func:`echos_core.trainer.train`.

One call of :func:`run_trial` is one (configuration, seed) trial:

1. the trainer Config is built from the spec's base, the sampled values and the seed
   (``seed`` in the trial config for grid search; ``__trial_index__`` from Ray's
   ``Repeater`` -> ``spec.seeds[index]`` for optuna and random search), and validated;
2. if Ray hands back a checkpoint (``ray.tune.get_checkpoint()``: the trial was paused,
   retried after a failure, migrated, or the sweep was resumed), it is copied next to the
   run and the trainer resumes from it: model, optimiser, schedule, RNG, history, epoch;
3. the trial's MLflow run is the one named in that checkpoint, or else the run tagged with
   this sweep and trial id, or else a new one nested under the sweep's parent run; so a
   trial that starts again never gets a second run, and epochs already logged are skipped;
4. every epoch: metrics to MLflow (``step = epoch``), then ``ray.tune.report(metrics,
   checkpoint=...)`` with the trainer's self-contained checkpoint folder.  MLflow first:
   when the scheduler stops a trial, the code after its last report never runs.

How a trial *ended* (finished, stopped by ASHA, failed) is marked on its MLflow run by the
driver (:class:`echos_core.sweep.runner.MlflowTrialStatus`), since a stopped trial's
process is simply ended.

This is a trial of one process (``resources.workers: 1``); a data-parallel trial
(:mod:`echos_core.sweep.ddp`) shares its config (:func:`trial_config`), its MLflow run
(:func:`open_trial_run`) and its epoch logging (:func:`log_epoch_once`).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ..tracking import (TAG_ASHA_STOPPED, TAG_ERROR, TAG_NODE_HOST, TAG_NODE_ID, TAG_SEED, TAG_STATUS, TAG_SWEEP,
                        TAG_SWEEP_ID, TAG_TRIAL_ID, TAG_TRIAL_NAME, TAG_WORLD_SIZE, environment_tags)
from .spec import SweepSpec

__all__ = ["TrialContext", "run_trial", "trial_seed", "sampled_values", "trial_outcome", "TRIAL_STATE_FILE",
           "REPORT_KEYS", "trial_config", "open_trial_run", "log_epoch_once", "mark_failed"]

TRIAL_STATE_FILE = "echos_trial.json"  # written into every reported checkpoint folder
# Keys each report adds to the trainer's metrics (besides them).
REPORT_KEYS = ("seed", "max_epochs", "mlflow_run_id", "node_id")


@dataclass
class TrialContext:
    """What every trial of one sweep shares (passed with ``tune.with_parameters``)."""

    spec: SweepSpec
    sweep_id: str  # the Ray experiment name, e.g. quick-20250101-120000
    tracking_uri: str  # absolute (a relative SQLite path would follow the trial's working folder)
    parent_run_id: Optional[str] = None
    storage: Optional[str] = None  # the sweep's Ray experiment folder or URI (data-parallel trials' Train runs)


def trial_seed(config: dict, spec: SweepSpec) -> int:
    """The seed of a trial: ``config['seed']`` (grid) or ``spec.seeds[config['__trial_index__']]`` (Repeater)."""
    from ray.tune.search.repeater import TRIAL_INDEX

    if "seed" in config:
        return int(config["seed"])
    return int(spec.seeds[int(config.get(TRIAL_INDEX, 0))])


def sampled_values(config: dict) -> dict:
    """The trial config without Ray's bookkeeping keys and the seed."""
    return {k: v for k, v in config.items() if not k.startswith("__") and k != "seed"}


def trial_outcome(last_result: dict, errored: bool) -> tuple[str, bool, str]:
    """(echos.status, stopped by the scheduler?, MLflow run status) of a trial that ended.

    A trial that ended without error before its own ``train.epochs`` (reported with every result
    as ``max_epochs``) was stopped by the scheduler: nothing else ends a trial early.
    """
    epoch, max_epochs = last_result.get("epoch"), last_result.get("max_epochs")
    if errored:
        return "error", False, "FAILED"
    if epoch is not None and max_epochs is not None and int(epoch) < int(max_epochs):
        return "stopped", True, "KILLED"
    return "finished", False, "FINISHED"


def trial_config(config: dict, spec: SweepSpec) -> dict:
    """The nested trainer config of a trial: the spec's, ``train.threads`` = the CPUs Ray gives one worker."""
    cfg_dict = spec.config_dict(sampled_values(config), trial_seed(config, spec))
    train_section = cfg_dict.setdefault("train", {})
    if train_section.get("threads") is None:  # use the CPUs Ray gave the trial, no more
        train_section["threads"] = max(1, int(spec.cpus))
    return cfg_dict


def open_trial_run(ctx: TrialContext, cfg, config: dict, run_id: Optional[str] = None, tags: Optional[dict] = None):
    """The trial's one MLflow run: ``run_id``, else the run tagged with this sweep and trial, else a new one
    nested under the sweep's run (with its config as an artifact)."""
    import ray
    from ray import tune

    from ..config import config_to_dict
    from ..runinfo import environment
    from ..tracking import MlflowRun, find_runs

    spec = ctx.spec
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    if run_id is None:
        found = find_runs(ctx.tracking_uri, spec.experiment,
                          {TAG_SWEEP_ID: ctx.sweep_id, TAG_TRIAL_ID: trial_id})
        run_id = found[0].info.run_id if found else None
    all_tags = environment_tags(environment())
    all_tags.update({
        TAG_SWEEP: spec.name,
        TAG_SWEEP_ID: ctx.sweep_id,
        TAG_TRIAL_ID: trial_id,
        TAG_TRIAL_NAME: tctx.get_trial_name(),
        TAG_SEED: cfg.seed,
        TAG_STATUS: "running",
        TAG_ASHA_STOPPED: "false",
        TAG_NODE_ID: ray.get_runtime_context().get_node_id(),
        TAG_NODE_HOST: socket.gethostname(),
        **(tags or {}),
    })
    run_name = f"{cfg.default_run_name()}-{trial_id.rsplit('_', 1)[-1]}"
    params = config_to_dict(cfg)
    arms = {p.key: config[p.key] for p in spec.params if p.is_arm and p.key in config}
    if arms:  # the arm label as a param too, to group runs by it in MLflow's compare view
        params["arm"] = arms
    run = MlflowRun(ctx.tracking_uri, spec.experiment, run_name, params, all_tags,
                    parent_run_id=ctx.parent_run_id, run_id=run_id)
    if run_id is None:
        trial_dir = Path(tctx.get_trial_dir())
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        run.log_artifact(trial_dir / "config.yaml")
    return run


def log_epoch_once(run, logged: set[int], metrics: dict, run_dir: Path) -> None:
    """Log an epoch's metrics unless ``logged`` has it (a resumed trial repeats no epoch in MLflow)."""
    epoch = int(metrics["epoch"])
    if epoch in logged:
        return
    run.log_epoch(metrics)
    logged.add(epoch)
    if epoch == 1:
        for name in ("init_report.json", "environment.json"):
            if (run_dir / name).is_file():
                run.log_artifact(run_dir / name)


def mark_failed(run, e: BaseException) -> None:
    run.set_tags({TAG_STATUS: "error", TAG_ERROR: " ".join(f"{type(e).__name__}: {e}".split())[:500]})
    run.end("FAILED")


def run_trial(config: dict, ctx: TrialContext) -> None:
    import ray
    from ray import tune

    from ..config import config_from_dict
    from ..trainer import train

    # One "Checkpoint successfully created" line per trial and epoch drowns Ray's table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    trial_dir = Path(tctx.get_trial_dir())
    seed = trial_seed(config, ctx.spec)
    cfg = config_from_dict(trial_config(config, ctx.spec))
    run_dir = trial_dir / "run"

    # ---- resume from Ray's checkpoint, if any
    resume_from, state = None, {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        restored = trial_dir / "restored"
        shutil.rmtree(restored, ignore_errors=True)
        checkpoint.to_directory(str(restored))
        resume_from = restored
        if (restored / TRIAL_STATE_FILE).is_file():
            state = json.loads((restored / TRIAL_STATE_FILE).read_text())

    # ---- the trial's one MLflow run
    node_id = ray.get_runtime_context().get_node_id()
    run = open_trial_run(ctx, cfg, config, run_id=state.get("mlflow_run_id"), tags={TAG_WORLD_SIZE: 1})
    logged = run.logged_steps("epoch")

    extra = {"seed": seed, "max_epochs": cfg.train.epochs, "mlflow_run_id": run.run_id, "node_id": node_id}

    def on_epoch(metrics: dict, checkpoint_dir: Optional[Path]) -> None:
        log_epoch_once(run, logged, metrics, run_dir)
        result = {**metrics, **extra}
        if checkpoint_dir is None:
            tune.report(result)
            return
        (Path(checkpoint_dir) / TRIAL_STATE_FILE).write_text(
            json.dumps({"mlflow_run_id": run.run_id, "trial_id": trial_id, "sweep_id": ctx.sweep_id}))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    try:
        train(cfg, run_dir=run_dir, callback=on_epoch, resume_from=resume_from)
    except Exception as e:  # a failure (FailureConfig may retry it; the run is reattached then)
        mark_failed(run, e)
        raise
    # (Ray ends a trial the scheduler stopped by raising SystemExit in its report call: not a
    # failure, and the driver marks how the trial ended.)
    run.set_tags({TAG_STATUS: "finished", TAG_ASHA_STOPPED: "false"})
    run.end("FINISHED")
