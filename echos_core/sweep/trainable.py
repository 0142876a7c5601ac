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
4. every epoch: metrics to MLflow (``step = epoch``) and the kernel mosaics (``kernels/init_*``
   once, ``kernels/final_*`` replaced every epoch), then ``ray.tune.report(metrics,
   checkpoint=...)`` with the trainer's self-contained checkpoint folder.  MLflow first:
   when the scheduler stops a trial, the code after its last report never runs;
5. a trial resumed from the checkpoint of its last epoch that Ray did not know of (the driver
   died after that checkpoint reached storage, before Ray's next experiment snapshot:
   :func:`newest_checkpoint` finds it) trains nothing, and reports that last epoch once more:
   Tune's last result of it would otherwise be an earlier epoch's, which reads as a trial the
   scheduler stopped early.  (When Ray's own checkpoint is the last one, so is its last result.)

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

__all__ = ["TrialContext", "run_trial", "trial_seed", "sampled_values", "trial_outcome", "trial_run_name",
           "log_mosaics", "TRIAL_STATE_FILE", "REPORT_KEYS", "trial_dirname", "newest_checkpoint", "trial_config",
           "open_trial_run", "log_epoch_once", "mark_failed"]

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
    storage: Optional[str] = None  # the sweep's Ray storage: a restarted trial looks there for its newest checkpoint


def trial_dirname(trial_id: str) -> str:
    """The folder of a trial inside the sweep's Ray experiment folder."""
    return f"trial_{trial_id}"


def _checkpoint_epoch(fs, path: str) -> int:
    """The epoch of a reported checkpoint folder (from its TRIAL_STATE_FILE); -1 if it is incomplete."""
    from ..checkpoint import CHECKPOINT_FILE

    try:
        if fs.get_file_info(f"{path}/{CHECKPOINT_FILE}").size in (None, 0):
            return -1
        with fs.open_input_stream(f"{path}/{TRIAL_STATE_FILE}") as f:
            return int(json.loads(f.read().decode()).get("epoch", -1))
    except (OSError, ValueError, TypeError):
        return -1


def newest_checkpoint(given, ctx: "TrialContext", trial_id: str):
    """Ray's checkpoint of this trial, or a newer one of its own on storage.

    Ray's experiment state is saved every few seconds; a driver killed in between loses the newest
    checkpoints from that state, but they are on storage all the same, so a resumed trial continues
    from its newest complete one rather than start over."""
    if ctx.storage is None:
        return given
    import pyarrow.fs
    from ray import tune

    if "://" in ctx.storage:
        fs, root = pyarrow.fs.FileSystem.from_uri(ctx.storage)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), ctx.storage
    best_epoch = _checkpoint_epoch(given.filesystem, given.path) if given is not None else -1
    best = given
    folder = f"{root}/{ctx.sweep_id}/{trial_dirname(trial_id)}"
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return given
    for info in infos:
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            epoch = _checkpoint_epoch(fs, info.path)
            if epoch > best_epoch:
                best_epoch, best = epoch, tune.Checkpoint(info.path, filesystem=fs)
    return best


def trial_seed(config: dict, spec: SweepSpec) -> int:
    """The seed of a trial: ``config['seed']`` (grid) or ``spec.seeds[config['__trial_index__']]`` (Repeater)."""
    from ray.tune.search.repeater import TRIAL_INDEX

    if "seed" in config:
        return int(config["seed"])
    return int(spec.seeds[int(config.get(TRIAL_INDEX, 0))])


def sampled_values(config: dict) -> dict:
    """The trial config without Ray's bookkeeping keys and the seed."""
    return {k: v for k, v in config.items() if not k.startswith("__") and k != "seed"}


def log_mosaics(run, run_dir: Path, first: bool) -> None:
    """The trainer's kernel mosaics as artifacts ``kernels/*.png``: ``final_*`` every epoch (replacing the
    previous epoch's, so a trial the scheduler stops has its own last kernels), ``init_*`` with ``first``."""
    for png in sorted((run_dir / "kernels").glob("*.png")):
        if first or png.name.startswith("final_"):
            run.log_artifact(png, "kernels")


def trial_run_name(cfg, spec: SweepSpec, config: dict, trial_id: str) -> str:
    """What differs between trials first (init and its On fraction, seed, other sampled values),
    then the model and the trial number: ``dog-on0.25-s1-lr0.0031-convmixer-k5-embedded-00003``.
    (MLflow's runs table shows the first 20 or so characters of a name.)"""
    sampled = []
    for p in spec.params:
        if p.key in config:
            for key, value in p.overrides(config[p.key]).items():
                if not key.startswith("init."):  # the init label says those
                    short = f"{value:.2g}" if isinstance(value, float) else str(value)
                    sampled.append(f"{key.rsplit('.', 1)[-1]}{short}")
    parts = [cfg.init_label(), f"s{cfg.seed}", *sampled, cfg.model_label(), trial_id.rsplit("_", 1)[-1]]
    return "-".join(parts)


def trial_outcome(last_result: dict, errored: bool) -> tuple[str, bool, str]:
    """(echos.status, stopped by the scheduler?, MLflow run status) of a trial that ended.

    A trial that ended without error before its own ``train.epochs`` (reported with every result
    as ``max_epochs``) was stopped by the scheduler: nothing else ends a trial early.  It ended
    normally (FINISHED, tagged as stopped early); only a real failure is FAILED.
    """
    epoch, max_epochs = last_result.get("epoch"), last_result.get("max_epochs")
    if errored:
        return "error", False, "FAILED"
    if epoch is not None and max_epochs is not None and int(epoch) < int(max_epochs):
        return "stopped", True, "FINISHED"
    return "finished", False, "FINISHED"


_TRIAL_ARTIFACTS = ("config.yaml", "init_report.json", "environment.json")


def _reattach(run, run_id: Optional[str]) -> set[str]:
    """The trial artifacts its run still lacks; on a run that is being retried or resumed, the error tag
    of the failure it recovers from is removed (its status is set to running again)."""
    if run_id is None:
        return set(_TRIAL_ARTIFACTS)
    have = {a.path for a in run.client.list_artifacts(run.run_id)}
    if TAG_ERROR in run.client.get_run(run.run_id).data.tags:
        run.client.delete_tag(run.run_id, TAG_ERROR)
    return {name for name in _TRIAL_ARTIFACTS if name not in have}


def trial_config(config: dict, spec: SweepSpec) -> dict:
    """The nested trainer config of a trial: the spec's, ``train.threads`` = the CPUs Ray gives one worker."""
    cfg_dict = spec.config_dict(sampled_values(config), trial_seed(config, spec))
    train_section = cfg_dict.setdefault("train", {})
    if train_section.get("threads") is None:  # use the CPUs Ray gave the trial, no more
        train_section["threads"] = max(1, int(spec.cpus))
    return cfg_dict


def open_trial_run(ctx: TrialContext, cfg, config: dict, run_id: Optional[str] = None,
                   tags: Optional[dict] = None) -> tuple:
    """The trial's one MLflow run (``run_id``, else the run tagged with this sweep and trial, else a new one
    nested under the sweep's run, its config logged) and the trainer's artifacts that run still lacks."""
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
    params = config_to_dict(cfg)
    arms = {p.key: config[p.key] for p in spec.params if p.is_arm and p.key in config}
    if arms:  # the arm label as a param too, to group runs by it in MLflow's compare view
        params["arm"] = arms
    run = MlflowRun(ctx.tracking_uri, spec.experiment, trial_run_name(cfg, spec, config, trial_id), params,
                    all_tags, parent_run_id=ctx.parent_run_id, run_id=run_id)
    missing = _reattach(run, run_id)
    if "config.yaml" in missing:
        trial_dir = Path(tctx.get_trial_dir())
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        run.log_artifact(trial_dir / "config.yaml")
        missing.discard("config.yaml")
    return run, missing


def log_epoch_once(run, logged: set[int], missing: set[str], metrics: dict, run_dir: Path) -> None:
    """An epoch's metrics and mosaics unless ``logged`` has it (a resumed trial repeats no epoch in MLflow),
    and the ``missing`` artifacts the trainer has written by now."""
    epoch = int(metrics["epoch"])
    if epoch not in logged:
        run.log_epoch(metrics)
        logged.add(epoch)
        log_mosaics(run, run_dir, first=epoch == 1)
    for name in sorted(missing):  # written by the trainer before its first epoch
        if (run_dir / name).is_file():
            run.log_artifact(run_dir / name)
            missing.discard(name)


def error_line(error) -> str:
    """The last line of an error, Ray-wrapped or not (``TrainingDiverged: ...``, not the traceback), for a tag."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return " ".join((lines[-1] if lines else type(error).__name__).split())[:500]


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
    given = tune.get_checkpoint()
    checkpoint = newest_checkpoint(given, ctx, trial_id)
    if checkpoint is not None:
        restored = trial_dir / "restored"
        shutil.rmtree(restored, ignore_errors=True)
        checkpoint.to_directory(str(restored))
        resume_from = restored
        if (restored / TRIAL_STATE_FILE).is_file():
            state = json.loads((restored / TRIAL_STATE_FILE).read_text())

    # ---- the trial's one MLflow run
    node_id = ray.get_runtime_context().get_node_id()
    run, missing = open_trial_run(ctx, cfg, config, run_id=state.get("mlflow_run_id"), tags={TAG_WORLD_SIZE: 1})
    logged = run.logged_steps()

    extra = {"seed": seed, "max_epochs": cfg.train.epochs, "mlflow_run_id": run.run_id, "node_id": node_id}
    reported = []  # the epochs this process reported

    def on_epoch(metrics: dict, checkpoint_dir: Optional[Path]) -> None:
        reported.append(metrics["epoch"])
        log_epoch_once(run, logged, missing, metrics, run_dir)
        result = {**metrics, **extra}
        if checkpoint_dir is None:
            tune.report(result)
            return
        (Path(checkpoint_dir) / TRIAL_STATE_FILE).write_text(json.dumps(
            {"mlflow_run_id": run.run_id, "trial_id": trial_id, "sweep_id": ctx.sweep_id, "epoch": int(metrics["epoch"])}))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    try:
        result = train(cfg, run_dir=run_dir, callback=on_epoch, resume_from=resume_from)
        if not reported and result.history and checkpoint is not given:  # (5. above)
            on_epoch(dict(result.history[-1]), resume_from)
    except Exception as e:  # a failure (FailureConfig may retry it; the run is reattached then)
        mark_failed(run, e)
        raise
    # (Ray ends a trial the scheduler stopped by raising SystemExit in its report call: not a
    # failure, and the driver marks how the trial ended.)
    run.set_tags({TAG_STATUS: "finished", TAG_ASHA_STOPPED: "false"})
    run.end("FINISHED")
