"""What optuna-dashboard shows of a study, beside its name (``<dataset>.<model>.<fingerprint>``):
the objective's name instead of "Objective 0", the identity attributes the fingerprint hashes,
and one readable attribute, ``about``, that says what the study tunes. ``about`` is written
after the name is made and is not among its inputs (identity.study_inputs): a study's name,
and so which study a rerun resumes, is the same with or without it."""

from __future__ import annotations

import warnings

import optuna

from reprolab.learn.context import ModelContext
from reprolab.learn.tasks import get_task
from reprolab.tuning.identity import study_inputs

ABOUT = "about"


def identity_attrs(user_attrs: dict) -> dict:
    """A study's user attributes less ``about``: what its name's fingerprint hashes."""
    return {key: value for key, value in user_attrs.items() if key != ABOUT}


def describe(ctx: ModelContext) -> str:
    tune, objective = ctx.tune, get_task(ctx.task).objective
    return (
        f"{ctx.name} ({ctx.spec.arch}, {ctx.task}) on {ctx.dataset}: {tune.n_trials} trials of "
        f"up to {tune.epochs} epochs, lr in [{tune.lr.low:g}, {tune.lr.high:g}] and "
        f"weight_decay in [{tune.weight_decay.low:g}, {tune.weight_decay.high:g}] (log-uniform), "
        f"{tune.pruner.kind} pruner; minimizes {objective}. The name ends with the first 12 "
        "hex digits of the sha256 of the other attributes (JSON, sorted keys)."
    )


def label_study(study: optuna.Study, ctx: ModelContext) -> None:
    """Record the identity attributes (once, as the study is created), ``about`` and the
    objective's name; none of them changes what the trials draw or find."""
    if not identity_attrs(study.user_attrs):
        for key, value in study_inputs(ctx).items():
            study.set_user_attr(key, value)
    if ABOUT not in study.user_attrs:
        study.set_user_attr(ABOUT, describe(ctx))
    if not study.metric_names:
        with warnings.catch_warnings():  # experimental in Optuna; stable on the dashboard
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([get_task(ctx.task).objective])
