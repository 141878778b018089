"""Trials in fixed-size batches, so that a study's result does not depend on how many workers
run it, when they join, or which of them wins a race.

Every trial has a **slot**, its place in the budget 0..n_trials-1 (a user attribute, set
under the study's claim lock; the retry of a killed trial inherits it). Slot k belongs to
batch k // ``tune.batch``. Trial k's params come from a TPE sampler seeded with
(study seed + k) that sees only the finished trials of earlier batches; its pruning
decisions compare it only with trials of earlier batches; a worker claims slot k only once
every earlier batch has finished. What a trial sees is then fixed by its slot, never by
timing. ``tune.batch: 1`` is sequential TPE: each trial sees every trial before it.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from reprolab.core.schema import TuneParams

SLOT = "slot"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TAKEN = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
DONE = -1  # next_slot: every slot of the budget has a finished trial


def slot_of(trial: FrozenTrial) -> int | None:
    slot = trial.user_attrs.get(SLOT)
    return slot if isinstance(slot, int) else None


def batch_start(slot: int, batch: int) -> int:
    """The first slot of ``slot``'s batch: the trials before it are what ``slot`` sees."""
    return slot - slot % batch


class EarlierBatches:
    """A study as one trial's sampler and pruner see it: its finished trials whose slot is
    below ``cutoff`` (the trial's batch start), and the trial itself (``own``, a trial id)."""

    def __init__(self, study: Any, cutoff: int, own: int | None = None) -> None:
        self.inner, self.cutoff, self.own = study, cutoff, own

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def like(self, study: Any) -> EarlierBatches:
        """The same view of another study object (Hyperband's bracket of this study)."""
        return EarlierBatches(study, self.cutoff, self.own)

    def _keep(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        return [
            t
            for t in trials
            if t._trial_id == self.own
            or (t.state in FINISHED and (s := slot_of(t)) is not None and s < self.cutoff)
        ]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._keep(self.inner.get_trials(deepcopy=deepcopy, states=states))

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        return self._keep(
            self.inner._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        )


class BatchTPESampler(optuna.samplers.TPESampler):
    """TPE for the trial of one slot: it reads the history through EarlierBatches."""

    def __init__(self, cutoff: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cutoff = cutoff

    def infer_relative_search_space(self, study: Any, trial: FrozenTrial) -> dict:
        return super().infer_relative_search_space(EarlierBatches(study, self.cutoff), trial)

    def sample_relative(self, study: Any, trial: FrozenTrial, search_space: dict) -> dict:
        return super().sample_relative(EarlierBatches(study, self.cutoff), trial, search_space)

    def sample_independent(
        self, study: Any, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        view = EarlierBatches(study, self.cutoff)
        return super().sample_independent(view, trial, param_name, param_distribution)


def trial_sampler(seed: int, slot: int, tune: TuneParams) -> BatchTPESampler:
    """The sampler of slot ``slot``: TPE keeps no state but its random generator (it reads
    the history from the storage), so seeding it from the study's seed and the slot, and
    showing it the earlier batches only, makes every worker, and a resumed study, draw the
    same params for that slot."""
    return BatchTPESampler(
        batch_start(slot, tune.batch),
        seed=(seed + slot) % 2**32,
        n_startup_trials=tune.sampler_startup_trials,
    )


def pruner_view(study: Any, trial: FrozenTrial, batch: int) -> EarlierBatches:
    """What a pruner compares ``trial`` with: the trials of earlier batches."""
    slot = slot_of(trial)
    cutoff = batch_start(slot, batch) if slot is not None else 0
    return EarlierBatches(study, cutoff, own=trial._trial_id)


def next_slot(trials: Sequence[FrozenTrial], n_trials: int, batch: int) -> int | None:
    """The slot a worker claims now (under the study's lock): a killed trial's retry waiting
    in the queue first (its slot was claimed before), else the lowest slot no trial holds,
    once every batch before that slot's has finished. DONE when all n_trials slots have
    finished; None when nothing may start yet (wait, and ask again)."""
    finished = {slot_of(t) for t in trials if t.state in FINISHED}
    if all(k in finished for k in range(n_trials)):
        return DONE
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if waiting:  # what study.ask() pops: the oldest waiting trial
        slot = slot_of(min(waiting, key=lambda t: t.number))
        if slot is not None:
            return slot
    taken = {slot_of(t) for t in trials if t.state in TAKEN}
    free = next((k for k in range(n_trials) if k not in taken), None)
    if free is None:
        return None  # every slot is running: wait in case one's worker dies
    if all(k in finished for k in range(batch_start(free, batch))):
        return free
    return None
