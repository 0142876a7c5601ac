"""How each trial of a sweep ended, marked on its MLflow run by the driver; the progress table.

A trial that the scheduler stops is simply ended by Ray (its report call raises SystemExit),
so the trial itself cannot say so; the driver can, from the trial's last result.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

from ray.tune import Callback, CLIReporter

from ..tracking import TAG_ASHA_STOPPED, TAG_ERROR, TAG_LAST_EPOCH, TAG_STATUS, TAG_SWEEP_ID, TAG_TRIAL_ID
from .trainable import error_line, trial_outcome

__all__ = ["MlflowTrialStatus", "SweepReporter", "interruption"]


class SweepReporter(CLIReporter):
    """Ray's progress table, naming the sweep's own folder where Ray names its temporary session folder."""

    def __init__(self, exp_path: str, **kwargs):
        super().__init__(**kwargs)
        self.exp_path = exp_path

    def _print(self, msg: str) -> None:
        lines = [f"Results: {self.exp_path}" if line.startswith("Result logdir: ") else line
                 for line in msg.split("\n")]
        super()._print("\n".join(lines))

_INTERRUPTED: dict[str, str] = {}  # sweep id -> the signal that interrupted its driver (this process)


def interruption(sweep_id: str) -> Optional[str]:
    """The name of the signal (SIGINT, SIGTERM) that interrupted this driver's run of ``sweep_id``, or None."""
    return _INTERRUPTED.get(sweep_id)


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
        self._ended: set[str] = set()  # trials that ended before any interruption

    @property
    def interrupted(self) -> Optional[str]:
        return _INTERRUPTED.get(self.sweep_id)

    # ---- Tune's hooks

    def setup(self, **info):
        """Note a SIGINT/SIGTERM of the driver, then let Ray's own handler stop the run (it saves the
        experiment state first, so ``--resume`` continues every unfinished trial)."""
        _INTERRUPTED.pop(self.sweep_id, None)
        self._ended = set()
        if threading.current_thread() is not threading.main_thread():
            return
        ray_handler = signal.getsignal(signal.SIGINT)

        def note(signum, frame):
            _INTERRUPTED[self.sweep_id] = signal.Signals(signum).name
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends the driver at once
            if callable(ray_handler):
                ray_handler(signum, frame)
            else:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, note)
        signal.signal(signal.SIGTERM, note)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safe_mark(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe_mark(trial, errored=True)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                self._safe_mark(trial, errored=trial.status == "ERROR")
        if self.interrupted:  # trials Ray lost are dropped when the resumed sweep ends, not now
            return
        try:
            self.drop_orphans({t.trial_id for t in trials})
        except Exception as e:
            print(f"echos: warning: could not check MLflow for orphaned trial runs: {e}", file=sys.stderr)

    def _safe_mark(self, trial, errored: bool) -> None:
        try:
            last = trial.last_result or {}
            ended = getattr(self, "_ended", set())
            if self.interrupted and not errored and trial.trial_id not in ended and \
                    not (last.get("epoch") is not None and last.get("max_epochs") is not None
                         and int(last["epoch"]) >= int(last["max_epochs"])):
                self.mark_interrupted(trial.trial_id, last)  # stopped by the interruption, not the scheduler
                return
            self.mark(trial.trial_id, trial.last_result, errored, error=_error_text(trial) if errored else None)
            if not self.interrupted:
                ended.add(trial.trial_id)
        except Exception as e:  # logging trouble must never take the sweep down
            print(f"echos: warning: could not mark trial {trial.trial_id} in MLflow: {e}", file=sys.stderr)

    def mark_interrupted(self, trial_id: str, last_result: Optional[dict]) -> Optional[str]:
        """Tag the run of a trial the interruption stopped: ``echos.status=interrupted``, KILLED (a resume
        reopens it)."""
        from ..tracking import end_run

        run_id = self._run_id(trial_id, last_result)
        if run_id is None:
            return None
        tags = {TAG_STATUS: "interrupted", TAG_ASHA_STOPPED: "false"}
        if (last_result or {}).get("epoch") is not None:
            tags[TAG_LAST_EPOCH] = int(last_result["epoch"])
        end_run(self.tracking_uri, run_id, "KILLED", tags)
        return "interrupted"

    def _run_id(self, trial_id: str, last_result: Optional[dict]) -> Optional[str]:
        from ..tracking import find_runs

        run_id = (last_result or {}).get("mlflow_run_id")
        if run_id:
            return run_id
        found = find_runs(self.tracking_uri, self.experiment, {TAG_SWEEP_ID: self.sweep_id, TAG_TRIAL_ID: trial_id})
        return found[0].info.run_id if found else None

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

    def _last_logged_epoch(self, run_id: str) -> Optional[int]:
        from ..tracking import mlflow_client

        history = mlflow_client(self.tracking_uri).get_metric_history(run_id, "val_loss")
        return max((m.step for m in history), default=None)

    def mark(self, trial_id: str, last_result: Optional[dict], errored: bool,
             error: Optional[str] = None) -> Optional[str]:
        """Tag the trial's MLflow run with how it ended; returns the status, or None if it has no run.
        ``error``: the failure, tagged ``echos.error`` on a failed run that the trial could not tag itself
        (a data-parallel trial leaves that to the driver)."""
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        from ..tracking import end_run, find_runs, mlflow_client

        last = dict(last_result or {})
        run_id = last.get("mlflow_run_id")
        if not run_id:
            found = find_runs(self.tracking_uri, self.experiment,
                              {TAG_SWEEP_ID: self.sweep_id, TAG_TRIAL_ID: trial_id})
            if not found:
                return None
            run_id = found[0].info.run_id
        decided_at = last.get("epoch")
        held = self._last_logged_epoch(run_id)
        if held is not None and (decided_at is None or held > int(decided_at)):
            last["epoch"] = held  # a data-parallel trial's workers run ahead of Tune: the run holds more
        status, stopped, mlflow_status = trial_outcome(last, errored)
        tags = {TAG_STATUS: status, TAG_ASHA_STOPPED: "true" if stopped else "false"}
        if last.get("epoch") is not None:
            tags[TAG_LAST_EPOCH] = int(last["epoch"])
        if stopped:  # shown as the run's description in the UI
            tags[MLFLOW_RUN_NOTE] = (f"Stopped early by the scheduler (ASHA) after epoch {last.get('epoch')} "
                                     f"of {last.get('max_epochs')}" + (
                                         f" (decided on epoch {decided_at}'s result; the trial's data-parallel "
                                         "workers had gone on meanwhile)." if last["epoch"] != decided_at else "."))
        if errored and error and TAG_ERROR not in mlflow_client(self.tracking_uri).get_run(run_id).data.tags:
            tags[TAG_ERROR] = error
        end_run(self.tracking_uri, run_id, mlflow_status, tags)
        return status


def _error_text(trial) -> Optional[str]:
    """The last line of a failed trial's error, as Ray stored it; None if it stored none."""
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # an unreadable error file: the run is still marked failed
        return None
    return error_line(error) if error is not None else None
