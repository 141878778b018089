"""The GAN's tune, train and evaluate stages: the classifiers' contract, a GAN inside.

A generator (``generators:`` in params.yaml, on ``datasets.image``) writes the files a
classifier writes (models/<name>/best_params.json, model.pt + model.json,
metrics/<name>/train.json and test.json, plots/trials/<name>.tsv) plus its curves
(plots/gan/<name>.tsv) and a sample grid (plots/samples/<name>.png). Its score, tuned and
selected on the validation split and measured once on the test split, is the Fréchet
distance between real and generated images in the features of the trained classifier
``scorer`` (reprolab.learn.features says why and what that limits); lower is better. Each split is
compared with as many generated images as it holds, from a fixed noise, so epochs, trials and
reruns differ by the generator alone. Budgets: ``tune`` and ``train`` with the generator's
``budget`` (tune.epochs per trial, train.max_epochs, train.patience on the distance).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from reprolab.core import paths, registry
from reprolab.core.errors import CheckpointError
from reprolab.core.io import read_json, write_json, write_tsv
from reprolab.core.paths import SPEC_FILE
from reprolab.learn.checkpoints import load_model, save_model
from reprolab.learn.context import ModelContext
from reprolab.learn.features import FrechetScorer, load_classifier
from reprolab.learn.gan import fit_gan, fixed_noise, generate, sampler, write_sample_grid
from reprolab.learn.loop import EpochCallback
from reprolab.learn.tasks._base import Task, TrialFit, describe_run
from reprolab.models._base import ModelSpec as ArchSpec
from reprolab.models.dcgan import DCGAN
from reprolab.tracking.models import log_final_model
from reprolab.tracking.runs import log_test_metrics, stage_execution

TEST_NOISE_SEED_OFFSET = 3  # the test split's noise: apart from validation's and the grid's
GRID_SAMPLES = 64


@dataclass
class GanContext(ModelContext):
    """ModelContext for an entry of ``generators:`` (its scorer is a key of ``classifiers:``);
    ``tune`` and ``train`` carry its budget (``tune.epochs``, ``train.max_epochs``)."""

    @cached_property
    def arch_spec(self) -> ArchSpec:
        """A GAN has no outputs per class and no normalisation layer; the split's statistics
        are recorded in model.json all the same."""
        return ArchSpec(
            arch=self.spec.arch,
            options=dict(self.spec.options),
            input_shape=tuple(self.meta["input_shape"]),
            n_outputs=0,
            mean=self.meta["mean"],
            std=self.meta["std"],
        )

    @cached_property
    def options(self):
        """The arch's validated options (``beta1`` for the optimisers)."""
        return registry.model_module(self.spec.arch).Options.model_validate(self.spec.options)

    def new_model(self) -> DCGAN:
        torch.manual_seed(self.params.seed)
        return build_gan(self.arch_spec).to(self.device)

    @property
    def scorer_dir(self) -> Path:
        return paths.model_dir(self.spec.scorer.model)

    def scorer_md5(self) -> str:
        """The scorer's weights md5 (from its model.json): the feature space of the score."""
        stage = f"train@{self.spec.scorer.model}"  # the scorer of this GAN
        return read_json(self.scorer_dir / SPEC_FILE, stage, ("weights_md5",))["weights_md5"]

    def scorer(self, real: torch.Tensor) -> FrechetScorer:
        return FrechetScorer(load_classifier(self.scorer_dir, self.device), real)


def build_gan(spec: ArchSpec) -> DCGAN:
    module = registry.model_module(spec.arch)
    return module.build(module.Options.model_validate(spec.options), spec.input_shape, 0)


def load_gan(folder: Path, device: torch.device | str = "cpu") -> tuple[DCGAN, dict]:
    """A saved GAN (generator and discriminator) and its model.json, in eval mode."""
    return load_model(folder, device, build=build_gan, stage="train_generator")


def _fit(ctx: GanContext, model: DCGAN, train_x, scorer, lr, weight_decay, epochs, **kw):
    return fit_gan(
        model,
        train_x,
        scorer,
        lr=lr,
        weight_decay=weight_decay,
        beta1=ctx.options.beta1,
        epochs=epochs,
        batch_size=ctx.spec.batch_size,
        seed=ctx.params.seed,
        pixel_max=pixel_max(train_x),
        deterministic=ctx.train.deterministic,
        **kw,
    )


def pixel_max(train_x: torch.Tensor) -> float:
    """The top of the raw pixel range, from the train split (16 for digits, 255 for 8-bit)."""
    return float(train_x.max())


def gan_trial_fitter(ctx: GanContext) -> TrialFit:
    """An Optuna trial of the GAN: ``tune.epochs`` of fit_gan, worth its best validation
    Fréchet distance."""
    train_x, val_x = ctx.trial_train().x, ctx.load("val").x
    scorer = ctx.scorer(val_x)

    def fit_trial(
        lr: float, weight_decay: float, on_epoch: EpochCallback, desc: str
    ) -> tuple[float, int]:
        result = _fit(
            ctx,
            ctx.new_model(),
            train_x,
            scorer,
            lr,
            weight_decay,
            ctx.tune.epochs,
            on_epoch=on_epoch,
            desc=desc,
        )
        return result.best_value, result.best_epoch

    return fit_trial


def train_gan(ctx: GanContext, best: dict, tags: dict[str, str]) -> dict:
    """Train with the tuned lr and weight decay, keep the best epoch by validation FID (or the
    last, ``train.restore: last``); write the model, curves and val metrics; log and register
    the generator in MLflow."""
    spec = ctx.spec
    train_x, val_x = ctx.load("train").x, ctx.load("val").x
    scorer = ctx.scorer(val_x)
    model = ctx.new_model()
    started = time.perf_counter()
    result = _fit(
        ctx,
        model,
        train_x,
        scorer,
        best["lr"],
        best["weight_decay"],
        ctx.train.max_epochs,
        patience=ctx.train.patience,
        restore=ctx.train.restore,
        desc=f"train {ctx.name}",
    )
    train_seconds = time.perf_counter() - started  # MLflow only: DVC outputs stay byte-equal
    top = pixel_max(train_x)
    run_record = describe_run(ctx, result, best, model.generator)
    run_record["n_parameters_discriminator"] = sum(
        t.numel() for t in model.discriminator.parameters()
    )
    kept_fid = result.kept["val_fid"]  # the epoch whose weights are saved
    val_metrics = {"fid": round(kept_fid, 6), "n_real": scorer.n_real}
    about = {
        **ctx.environment,
        "model": ctx.name,
        "task": "generative",
        "study": best["study"],
        "scorer": spec.scorer.model,
        "scorer_weights_md5": ctx.scorer_md5(),
        "pixel_max": top,
        "latent": model.latent,
    }
    weights_md5 = save_model(model, ctx.arch_spec, paths.model_dir(ctx.name), about)
    # Losses (about 1) and the validation distance (hundreds) in plots of their own.
    fid = [{"epoch": r["epoch"], "val_fid": r["val_fid"]} for r in result.history]
    write_tsv(
        paths.PLOTS / "gan" / f"{ctx.name}.tsv", [_without(r, "val_fid") for r in result.history]
    )
    write_tsv(paths.PLOTS / "fid" / f"{ctx.name}.tsv", fid)
    metrics = {"val": val_metrics, "train": run_record}
    write_json(paths.METRICS / ctx.name / "train.json", metrics)
    _log_generator(
        ctx, model, best, tags, result.history, kept_fid, about, weights_md5, train_seconds
    )
    return metrics


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def _log_generator(ctx, model, best, tags, history, kept_fid, about, weights_md5, train_seconds):
    """The final epochs, the kept epoch's val FID and the generator (noise -> raw pixel
    images), registered."""
    log_final_model(
        ctx,
        best,
        tags,
        history=history,
        logged={"val_fid": kept_fid, "train_seconds": train_seconds},
        served=sampler(model.to("cpu"), about["pixel_max"]).eval(),
        example=fixed_noise(4, model.latent, ctx.params.seed).numpy(),
        about=about,
        weights_md5=weights_md5,
        version_tags={"scorer_weights_md5": about["scorer_weights_md5"]},
    )


def evaluate_gan(ctx: GanContext, tags: dict[str, str]) -> dict:
    """The one test score: Fréchet distance of as many generated images as the test split
    holds (a noise of its own) to the test split; and the fixed-noise sample grid."""
    p = ctx.params
    model, info = load_gan(paths.model_dir(ctx.name), ctx.device)
    run = stage_execution(ctx, "evaluate", info["study"], tags)
    if info.get("scorer_weights_md5") != ctx.scorer_md5():
        raise CheckpointError(
            f"models/{ctx.name} was scored with another {info['scorer']} than "
            f"models/{ctx.spec.scorer.model} holds now; run `dvc repro train_generator@{ctx.name}`"
        )
    test_x = ctx.load("test").x
    scorer = ctx.scorer(test_x)
    noise = fixed_noise(len(test_x), model.latent, p.seed + TEST_NOISE_SEED_OFFSET)
    fid = scorer.score(generate(model, noise, info["pixel_max"]))
    metrics = {
        "fid": round(fid, 6),
        "n_test": int(len(test_x)),
    }
    write_json(paths.METRICS / ctx.name / "test.json", metrics)
    write_sample_grid(
        model, paths.PLOTS / "samples" / f"{ctx.name}.png", info["pixel_max"], p.seed, GRID_SAMPLES
    )
    log_test_metrics(run, {"fid": metrics["fid"]})
    return metrics


class GenerativeTask(Task):
    """A GAN on the image dataset, tuned, kept and tested on the Fréchet distance in its
    scorer's features."""

    name = "generative"
    objective = "val_fid"
    trial_train_keys = ("deterministic",)  # a trial runs tune.epochs whole (no patience)

    def context(self, params, model: str) -> GanContext:
        return GanContext(params, model)

    def identity(self, ctx: GanContext) -> dict:
        return {"scorer": ctx.scorer_md5()}  # the objective lives in the scorer's features

    def trial_fitter(self, ctx: GanContext) -> TrialFit:
        return gan_trial_fitter(ctx)

    def train_final(self, ctx: GanContext, best: dict, tags: dict[str, str]) -> dict:
        return train_gan(ctx, best, tags)

    def evaluate(self, ctx: GanContext, tags: dict[str, str]) -> dict:
        return evaluate_gan(ctx, tags)


TASK = GenerativeTask()
