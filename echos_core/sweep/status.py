"""How each trial of a sweep ended, marked on its MLflow run by the driver; the progress table.

A trial that the scheduler stops is simply ended by Ray (its report call raises SystemExit),
so the trial itself cannot say so; the driver can, from the trial's last result.
"""

from __future__ import annotations

import sys
from typing import Optional

from ray.tune import Callback, CLIReporter

from ..tracking import TAG_ASHA_STOPPED, TAG_LAST_EPOCH, TAG_STATUS, TAG_SWEEP_ID, TAG_TRIAL_ID
from .trainable import trial_outcome

__all__ = ["MlflowTrialStatus", "SweepReporter"]


class SweepReporter(CLIReporter):
    """Ray's progress table, naming the sweep's own folder where Ray names its temporary session folder."""

    def __init__(self, exp_path: str, **kwargs):
        super().__init__(**kwargs)
        self.exp_path = exp_path

    def _print(self, msg: str) -> None:
        lines = [f"Results: {self.exp_path}" if line.startswith("Result logdir: ") else line
                 for line in msg.split("\n")]
        super()._print("\n".join(lines))


class MlflowTrialStatus(Callback):
    """Tune callback (driver side): how each trial ended, on its MLflow run.

    * completed without error before its ``train.epochs``: stopped by the scheduler (ASHA), an
      ordinary end: run status FINISHED, ``echos.asha_stopped=true``, ``echos.status=stopped``,
      ``echos.last_epoch=<the epoch it stopped after>`` and a run description saying so;
    * completed all epochs: ``echos.asha_stopped=false``, ``echos.status=finished``, FINISHED;
    * failed for good (after FailureConfig's retries): ``echos.status=error``, FAILED.

    Marked as each trial ends, and checked again for every trial when the experiment ends (so a
    sweep that was interrupted and resumed is consistent too); a run already marked is left as it
    is, so every run keeps its own end time.  Then the runs of trials that Ray lost in an
    interruption are dropped (:meth:`drop_orphans`).  Idempotent.
    """

    def __init__(self, tracking_uri: str, experiment: str, sweep_id: str):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_id = sweep_id

    # ---- Tune's hooks

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safe_mark(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe_mark(trial, errored=True)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                self._safe_mark(trial, errored=trial.status == "ERROR")
        try:
            self.drop_orphans({t.trial_id for t in trials})
        except Exception as e:
            print(f"echos: warning: could not check MLflow for orphaned trial runs: {e}", file=sys.stderr)

    def _safe_mark(self, trial, errored: bool) -> None:
        try:
            self.mark(trial.trial_id, trial.last_result, errored)
        except Exception as e:  # logging trouble must never take the sweep down
            print(f"echos: warning: could not mark trial {trial.trial_id} in MLflow: {e}", file=sys.stderr)

    # ----

    def drop_orphans(self, trial_ids: set[str]) -> list[str]:
        """Soft-delete the runs of this sweep whose trial Ray no longer has; returns their run ids.

        When the driver dies, Ray's last experiment snapshot may miss a trial that had just
        started (and opened its MLflow run). The resumed sweep does not know that trial: the
        searcher suggests again and a new trial runs the configuration. The orphan's partial run
        is tagged ``echos.status=orphaned``, ended KILLED and deleted (restorable in MLflow), so
        the experiment holds every trial exactly once.
        """
        from ..tracking import delete_run, find_runs

        dropped = []
        for run in find_runs(self.tracking_uri, self.experiment, {TAG_SWEEP_ID: self.sweep_id}):
            tid = run.data.tags.get(TAG_TRIAL_ID)
            if tid and tid not in trial_ids:
                delete_run(self.tracking_uri, run.info.run_id,
                           {TAG_STATUS: "orphaned", TAG_ASHA_STOPPED: "false"})
                dropped.append(run.info.run_id)
        return dropped

    def mark(self, trial_id: str, last_result: Optional[dict], errored: bool) -> Optional[str]:
        """Tag the trial's MLflow run with how it ended; returns the status, or None if it has no run."""
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        from ..tracking import end_run, find_runs

        last = dict(last_result or {})
        run_id = last.get("mlflow_run_id")
        if not run_id:
            found = find_runs(self.tracking_uri, self.experiment,
                              {TAG_SWEEP_ID: self.sweep_id, TAG_TRIAL_ID: trial_id})
            if not found:
                return None
            run_id = found[0].info.run_id
        status, stopped, mlflow_status = trial_outcome(last, errored)
        tags = {TAG_STATUS: status, TAG_ASHA_STOPPED: "true" if stopped else "false"}
        if last.get("epoch") is not None:
            tags[TAG_LAST_EPOCH] = int(last["epoch"])
        if stopped:  # shown as the run's description in the UI
            tags[MLFLOW_RUN_NOTE] = (f"Stopped early by the scheduler (ASHA) after epoch {last.get('epoch')} "
                                     f"of {last.get('max_epochs')}.")
        end_run(self.tracking_uri, run_id, mlflow_status, tags)
        return status
