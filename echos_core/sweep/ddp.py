"""Data-parallel trials: Ray Train's ``TorchTrainer`` launched from a Ray Tune trial (``resources.workers > 1``).

The pattern of Ray's "Hyperparameter Tuning with Ray Tune" guide for Train V2:

* the Tune trial (:func:`run_ddp_trial`) asks for ``DRIVER_CPUS`` only: it opens the trial's
  MLflow run, starts a ``TorchTrainer`` with ``ScalingConfig(num_workers, resources_per_worker,
  placement_strategy, use_gpu)`` and waits; Ray Train starts the workers, their process group
  (gloo on CPUs, NCCL on GPUs) and restarts them from the last checkpoint when one fails
  (``FailureConfig``);
* every worker (:func:`_worker_loop`) runs :func:`echos_core.trainer.train` with a
  :class:`echos_core.parallel.DataParallel` for its rank; rank 0 alone logs to MLflow (tags
  ``echos.world_size`` and ``echos.nodes``) and hands its checkpoint to ``ray.train.report``;
* ``TuneReportCallback`` passes rank 0's result of every epoch to Tune: ASHA and Optuna see
  one result per epoch per trial, as for a single-process trial.

The Train run of a trial is ``<storage>/<sweep id>/train/trial_<id>``.  A trial that Tune starts
again (after a failure of its own process, or ``echos sweep --resume``) starts a ``TorchTrainer``
with the same name and storage, which Ray Train restores from its latest checkpoint; the MLflow
run is found again by its sweep and trial tags, and epochs it already holds are not logged again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..tracking import TAG_ASHA_STOPPED, TAG_NODES, TAG_STATUS, TAG_WORLD_SIZE
from .spec import DRIVER_CPUS, SweepSpec
from .trainable import (TrialContext, log_epoch_once, open_trial_run, trial_config, trial_dirname,
                        trial_seed)
from .watchdog import pid_alive

__all__ = ["trial_trainable", "run_ddp_trial", "worker_dir"]


def trial_trainable(spec: SweepSpec, ctx: TrialContext):
    """What Tune runs per trial: the trial trains itself (``workers: 1``) or drives a ``TorchTrainer``."""
    from ray import tune

    from .trainable import run_trial

    if spec.workers == 1:
        return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": spec.cpus, "gpu": spec.gpus})
    return tune.with_resources(tune.with_parameters(run_ddp_trial, ctx=ctx),
                               tune.PlacementGroupFactory([{"CPU": DRIVER_CPUS}]))


def _scaling(spec: SweepSpec):
    import ray.train

    per_worker = {"CPU": spec.cpus, **({"GPU": spec.gpus} if spec.gpus else {})}
    return ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=spec.gpus > 0,
                                   resources_per_worker=per_worker, placement_strategy=spec.placement)


def run_ddp_trial(config: dict, ctx: TrialContext) -> None:
    import ray
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..config import config_from_dict

    spec = ctx.spec
    trial_id = tune.get_context().get_trial_id()
    cfg_dict = trial_config(config, spec)
    cfg = config_from_dict(cfg_dict)
    run, missing = open_trial_run(ctx, cfg, config, tags={TAG_WORLD_SIZE: spec.workers})
    job = {"cfg": cfg_dict, "gpu": spec.gpus > 0, "tracking_uri": ctx.tracking_uri, "experiment": spec.experiment,
           "run_id": run.run_id, "missing": sorted(missing),
           "extra": {"seed": trial_seed(config, spec), "max_epochs": cfg.train.epochs, "mlflow_run_id": run.run_id,
                     "node_id": ray.get_runtime_context().get_node_id()}}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=job, scaling_config=_scaling(spec),
        run_config=ray.train.RunConfig(
            name=trial_dirname(trial_id), storage_path=f"{ctx.storage}/{ctx.sweep_id}/train",
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            callbacks=[TuneReportCallback()]))
    # A failure is marked on the run by the driver alone (MlflowTrialStatus, once Tune's FailureConfig gives
    # up): fit() also raises here when the scheduler stops the trial (Ray ends its controller), possibly
    # after the driver has marked the run stopped, which a mark from here would overwrite.
    trainer.fit()
    run.set_tags({TAG_STATUS: "finished", TAG_ASHA_STOPPED: "false"})
    run.end("FINISHED")


_WORK_DIR = re.compile(r"echos-rank\d+-pid(\d+)-")


def worker_dir(rank: int) -> Path:
    """A fresh local folder for one worker's run folder and restored checkpoint, removed when it ends.

    A worker that is killed (its node lost, its trial stopped hard) cannot remove its own, and it may hold
    a checkpoint per epoch: so each new worker first removes the folders of this host's dead workers (the
    folder names the pid; a pid that is alive, or taken again by another process, is left alone)."""
    root = Path(tempfile.gettempdir())
    for old in root.glob("echos-rank*-pid*-*"):
        m = _WORK_DIR.match(old.name)
        if m and old.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"echos-rank{rank}-pid{os.getpid()}-"))


def _worker_loop(job: dict) -> None:
    """One data-parallel worker: the echos trainer for this rank, rank 0 logging and checkpointing."""
    import ray
    import ray.train
    import torch

    from ..config import config_from_dict
    from ..parallel import DataParallel
    from ..tracking import MlflowRun
    from ..trainer import train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Reporting training result" per rank and epoch
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    if job["gpu"]:
        from ray.train.torch import get_device

        job["cfg"]["train"]["device"] = str(get_device())
    cfg = config_from_dict(job["cfg"])
    parallel = DataParallel(rank, world, torch.device(cfg.train.device) if job["gpu"] else None)
    nodes = parallel.gather(ray.get_runtime_context().get_node_id())
    work = worker_dir(rank)
    run, logged, missing = None, set(), set(job["missing"])
    if parallel.is_main:
        run = MlflowRun(job["tracking_uri"], job["experiment"], None, {}, run_id=job["run_id"])
        run.set_tags({TAG_WORLD_SIZE: world, TAG_NODES: ",".join(nodes)})
        logged = run.logged_steps()
    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # every rank restores the same (rank 0's) checkpoint
        resume_from = Path(checkpoint.to_directory(str(work / "restored")))

    reported = []  # the epochs this process reported

    def on_epoch(metrics: dict, checkpoint_dir) -> None:
        reported.append(metrics["epoch"])
        if run is not None:
            log_epoch_once(run, logged, missing, metrics, work / "run")
        saved = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report({**metrics, **job["extra"]}, checkpoint=saved)

    try:
        result = train(cfg, run_dir=work / "run", callback=on_epoch, resume_from=resume_from, parallel=parallel)
        if not reported and result.history:  # resumed from its last epoch's checkpoint (see .trainable, 5.)
            on_epoch(dict(result.history[-1]), resume_from if parallel.is_main else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
