"""The `reprolab` command, for what is not a pipeline stage."""

from __future__ import annotations

import argparse
import sys

from reprolab.core.errors import ReprolabError
from reprolab.core.params import load_params
from reprolab.core.schema import GROUPS


def _load(args: argparse.Namespace, model: str | None = None):
    """params.yaml validated (the model's arch options too), with its numerics mode applied
    before anything imports torch, as a stage does."""
    from reprolab.core import numerics

    return load_params(
        args.params,
        options_of=[model] if model else [],
        before_modules=lambda p: numerics.apply(p.numerics),
    )


def check(args: argparse.Namespace) -> None:
    """Validate params.yaml completely (every model's arch options too)."""
    params = load_params(args.params)
    groups = "; ".join(
        f"{group} on {params.dataset_of(next(iter(models)))}: {', '.join(models)}"
        for group in GROUPS
        if (models := getattr(params, group))
    )
    print(f"{args.params}: valid; {groups}")


def lr_find(args: argparse.Namespace) -> None:
    """Learning-rate range test of a model on the train split (run `dvc repro split` first)."""
    from pathlib import Path

    from reprolab.core.io import atomic_path, write_json, write_tsv
    from reprolab.learn.context import ModelContext
    from reprolab.learn.lr_find import lr_range_test, plot_range_test

    params = _load(args, args.model)
    ctx = ModelContext(params, args.model)
    result = lr_range_test(
        ctx.new_model(),
        ctx.load("train"),
        ctx.spec,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        steps=args.steps,
        seed=params.seed,
        task=ctx.task,
    )
    low, high = result.suggested
    out = Path(args.out)
    rows = [{"lr": lr, "loss": loss} for lr, loss in zip(result.lrs, result.losses, strict=True)]
    write_tsv(out / f"{args.model}.tsv", rows)
    write_json(
        out / f"{args.model}.json",
        {"steepest": result.steepest, "minimum": result.minimum, "low": low, "high": high},
    )
    with atomic_path(out / f"{args.model}.png") as tmp:
        plot_range_test(result, f"lr range test: {args.model}", tmp)
    print(
        f"{args.model}: steepest descent at lr {result.steepest:.3g}, min at {result.minimum:.3g}"
    )
    print(f"plot: {out / (args.model + '.png')}")
    print(f"bound the search: dvc exp run -S tune.lr.low={low:.3g} -S tune.lr.high={high:.3g}")


def preset(args: argparse.Namespace) -> None:
    """Merge presets/<name>.yaml into params.yaml (validated; comments kept)."""
    from pathlib import Path

    from reprolab.core.presets import apply_preset

    merged = apply_preset(args.name, Path(args.params))
    models = [m for group in GROUPS for m in merged.get(group, {})]
    print(f"{args.params}: preset {args.name} applied; models {', '.join(models)}")


def predict(args: argparse.Namespace) -> None:
    """Print a model's prediction for each image file or CSV row."""
    from reprolab.predict import load_predictor, predict_files

    predictor = load_predictor(args.model)
    print("input\tprediction\tprobability")
    for record in predict_files(predictor, args.files):
        print(f"{record['input']}\t{record['prediction']}\t{record['probability']:.4f}")


def tune_worker(args: argparse.Namespace) -> None:
    """Run trials of a model's Optuna study until tune.n_trials have finished (run it in
    more processes or on more machines sharing the study storage)."""
    import os

    from reprolab.tracking.runs import stage_tags
    from reprolab.tuning.identity import study_name
    from reprolab.tuning.storage import storage_url
    from reprolab.tuning.worker import model_context, run_worker

    params = _load(args, args.model)
    ctx = model_context(params, args.model)
    tags = stage_tags(ctx.device.type, params, ctx.data_files(("train", "val")))
    # The sampler seed is seed + index: distinct per process unless given.
    index = os.getpid() if args.index is None else args.index
    name = study_name(ctx)
    url = storage_url(ctx.tune.storage)
    print(f"tune-worker {args.model}: study {name} in {url.split('@')[-1]}", flush=True)
    ran = run_worker(ctx, tags, index)
    print(f"tune-worker {args.model}: ran {ran} trial(s); the study has its {ctx.tune.n_trials}")


def verify(args: argparse.Namespace) -> None:
    """Rerun stages (all in dvc.lock, or the ones named) in a scratch copy from their recorded
    inputs and compare each output's md5 with dvc.lock; exit 1 if any differs. The workspace
    is not touched; MLflow runs go to the experiment reprolab-<dataset>-verify."""
    from pathlib import Path

    from reprolab.core.paths import workspace_root
    from reprolab.verify import verify as run_verify

    outcomes = run_verify(workspace_root() if args.root is None else Path(args.root), args.stage)
    width = max((len(o.stage) for o in outcomes), default=5)
    for o in outcomes:
        line = f"{o.stage:<{width}}  {o.output}  {o.status}"
        print(line + (f" ({o.detail})" if o.detail else ""))
    bad = [o for o in outcomes if o.status != "identical"]
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} outputs identical to dvc.lock")
    if bad:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reprolab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help=check.__doc__)
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=check)
    p = sub.add_parser("lr-find", help=lr_find.__doc__)
    p.add_argument("model", help="a key of `models:` in params.yaml")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="reports/lr_find", help="folder for the .tsv/.json/.png")
    p.set_defaults(func=lr_find)
    p = sub.add_parser("preset", help=preset.__doc__)
    p.add_argument("name", help="a file presets/<name>.yaml")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=preset)
    p = sub.add_parser("tune-worker", help=tune_worker.__doc__, description=tune_worker.__doc__)
    p.add_argument("model", help="a key of `models:` in params.yaml")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--index", type=int, help="offset of the sampler seed (default: the process id)")
    p.set_defaults(func=tune_worker)
    p = sub.add_parser("predict", help=predict.__doc__, description=predict.__doc__)
    p.add_argument(
        "--model",
        required=True,
        help="an MLflow model URI (models:/digits-cnn@champion, models:/digits-cnn/2, "
        "runs:/<id>/model) or a DVC model folder (models/cnn)",
    )
    p.add_argument("files", nargs="+", help="image files (PNG, JPEG, ...) or CSV files of rows")
    p.set_defaults(func=predict)
    p = sub.add_parser("verify", help=verify.__doc__.split(";")[0], description=verify.__doc__)
    p.add_argument("stage", nargs="*", help="stages as dvc.lock names them (default: all)")
    p.add_argument("--root", help="the workspace (default: the one around the current folder)")
    p.set_defaults(func=verify)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ReprolabError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(f"reprolab {args.command}: interrupted")


if __name__ == "__main__":
    main()
