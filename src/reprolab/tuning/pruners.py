"""The pruners of ``tune.pruner.kind``, made to decide by a trial's slot, never by timing.

median: Optuna's MedianPruner. successive_halving and hyperband, multi-fidelity over
1..``tune.epochs``: Optuna's pruners. Each compares a trial only with the finished trials of
earlier batches (tuning/batches.py), so a trial's fate does not depend on which trials of its
own batch happened to finish first, on how many workers ran, or on a killed trial's retry
(a failed trial is no competitor). Hyperband draws a trial's bracket from its slot and the
sampler's seed: Optuna's hashes the study name, which carries the code's fingerprint (an edit
that changes no number would move trials to other brackets), and the trial's number, which
the retry of a killed trial (and every trial after it) gets anew.
"""

from __future__ import annotations

import binascii

import optuna
from optuna.trial import FrozenTrial

from reprolab.core.schema import TuneParams
from reprolab.tuning.batches import EarlierBatches, pruner_view, slot_of


class BatchPruner(optuna.pruners.BasePruner):
    """``inner`` deciding on what the trial's batch may see."""

    def __init__(self, inner: optuna.pruners.BasePruner, batch: int) -> None:
        self.inner, self.batch = inner, batch

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.inner.prune(pruner_view(study, trial, self.batch), trial)


class SlotHyperband(optuna.pruners.HyperbandPruner):
    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed

    def _create_bracket_study(self, study: optuna.Study, bracket_id: int) -> optuna.Study:
        if isinstance(study, EarlierBatches):  # a bracket of the view is the view of a bracket
            return study.like(super()._create_bracket_study(study.inner, bracket_id))
        return super()._create_bracket_study(study, bracket_id)

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        if len(self._pruners) == 0:
            return 0
        place = slot_of(trial)
        place = trial.number if place is None else place
        n = binascii.crc32(f"{self.seed}_{place}".encode())
        n %= self._total_trial_allocation_budget
        for bracket_id, budget in enumerate(self._trial_allocation_budgets):
            n -= budget
            if n < 0:
                return bracket_id
        raise AssertionError("the bracket budgets sum to their total")


def make_pruner(tune: TuneParams, seed: int) -> optuna.pruners.BasePruner:
    """``tune.pruner.kind``: median (stop a trial below the median of earlier ones at the
    same epoch), or multi-fidelity: successive_halving / hyperband over 1..tune.epochs
    (``seed``, the sampler's, draws Hyperband's brackets)."""
    pruner = tune.pruner
    if pruner.kind == "hyperband":
        inner: optuna.pruners.BasePruner = SlotHyperband(
            seed,
            min_resource=pruner.min_epochs,
            max_resource=tune.epochs,
            reduction_factor=pruner.reduction_factor,
        )
    elif pruner.kind == "successive_halving":
        inner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_epochs,
            reduction_factor=pruner.reduction_factor,
            min_early_stopping_rate=0,
        )
    else:
        inner = optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    return BatchPruner(inner, tune.batch)
