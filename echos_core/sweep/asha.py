"""ASHA that spares a sweep's given configurations: ``scheduler.full_budget: points_to_evaluate``.

Ray's :class:`~ray.tune.schedulers.ASHAScheduler` stops trials one by one, so a configuration run
with several seeds can lose some of its seeds at a rung and keep others: its pairs with another
configuration break, and the comparison the sweep was run for has holes.  With ``full_budget``,
the trials of ``search.points_to_evaluate`` (the configurations the user declared, each run with
every seed) always run to ``max_t``; their results still enter ASHA's rungs, so the configurations
Optuna samples afterwards are judged against them, and stopped as usual when they fall behind.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

__all__ = ["FullBudgetASHA"]


class FullBudgetASHA(ASHAScheduler):
    """:class:`ASHAScheduler` that never stops a trial whose sampled values equal one of ``points``."""

    def __init__(self, points: Sequence[dict], **asha_kwargs: Any):
        super().__init__(**asha_kwargs)
        self._points = [dict(p) for p in points]

    def spares(self, config: Optional[dict]) -> bool:
        """Whether a trial of this config is one of the given points (seed and Ray's keys ignored)."""
        config = config or {}
        return any(all(k in config and config[k] == v for k, v in p.items()) for p in self._points)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        ended = result.get(self._time_attr, 0) >= self._max_t
        if action == TrialScheduler.STOP and not ended and self.spares(trial.config):
            self._num_stopped -= 1  # counted by ASHA as it decided to stop; the trial goes on
            return TrialScheduler.CONTINUE
        return action
