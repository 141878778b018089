"""The pruners of ``tune.pruner.kind``, made to prune a resumed study as an uninterrupted one.

median: Optuna's MedianPruner (it reads complete trials only). successive_halving and
hyperband, multi-fidelity over 1..``tune.epochs``: Optuna's pruners, except for what a killed
trial leaves behind. Optuna's successive halving counts every trial's rung values, a failed
(killed) trial's too, so its retry would meet one competitor more than in an uninterrupted
study; and Hyperband assigns brackets by trial number, which the retry of a killed trial (and
every trial after it) gets anew. Here failed trials are left out, and a trial's bracket goes
by its place in the budget: its number less the failed trials before it.
"""

from __future__ import annotations

import binascii
from collections.abc import Container

import optuna
from optuna.trial import FrozenTrial, TrialState

from reprolab.core.schema import TuneParams


class _WithoutFailed:
    """A study as a pruner sees it, without its failed trials."""

    def __init__(self, study: optuna.Study) -> None:
        self._inner = study

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._inner.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.state != TrialState.FAIL]


class ResumableSuccessiveHalving(optuna.pruners.SuccessiveHalvingPruner):
    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(_WithoutFailed(study), trial)


class ResumableHyperband(optuna.pruners.HyperbandPruner):
    def _create_bracket_study(self, study: optuna.Study, bracket_id: int) -> optuna.Study:
        return _WithoutFailed(super()._create_bracket_study(study, bracket_id))

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        if len(self._pruners) == 0:
            return 0
        failed = study._storage.get_all_trials(
            study._study_id, deepcopy=False, states=(TrialState.FAIL,)
        )
        place = trial.number - sum(t.number < trial.number for t in failed)
        n = binascii.crc32(f"{study.study_name}_{place}".encode())
        n %= self._total_trial_allocation_budget
        for bracket_id, budget in enumerate(self._trial_allocation_budgets):
            n -= budget
            if n < 0:
                return bracket_id
        raise AssertionError("the bracket budgets sum to their total")


def make_pruner(tune: TuneParams) -> optuna.pruners.BasePruner:
    """``tune.pruner.kind``: median (stop a trial below the median of earlier ones at the
    same epoch), or multi-fidelity: successive_halving / hyperband over 1..tune.epochs."""
    pruner = tune.pruner
    if pruner.kind == "hyperband":
        return ResumableHyperband(
            min_resource=pruner.min_epochs,
            max_resource=tune.epochs,
            reduction_factor=pruner.reduction_factor,
        )
    if pruner.kind == "successive_halving":
        return ResumableSuccessiveHalving(
            min_resource=pruner.min_epochs,
            reduction_factor=pruner.reduction_factor,
            min_early_stopping_rate=0,
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
    )
