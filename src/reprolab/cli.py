"""The `reprolab` command, for what is not a pipeline stage."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from reprolab.core.errors import ParamsError, ReprolabError
from reprolab.core.numerics import require_cpu_for
from reprolab.core.params import load_params
from reprolab.core.schema import GROUPS
from reprolab.core.stage import record_failure, store_fault

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    """The installed package's version; run from a checkout that was never installed
    (PYTHONPATH=src), the one in its pyproject.toml."""
    from importlib import metadata

    try:
        return metadata.version("reprolab")
    except metadata.PackageNotFoundError:
        import tomllib

        try:
            return tomllib.loads(PYPROJECT.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown (no package metadata, no pyproject.toml)"


def _load(args: argparse.Namespace, model: str | None = None):
    """params.yaml validated (the model's arch options too), with its numerics mode applied
    before anything imports torch, as a stage does."""
    from reprolab.core.stage import set_numerics

    return load_params(
        args.params, options_of=[model] if model else [], before_modules=set_numerics
    )


def check(args: argparse.Namespace) -> None:
    """Validate a params file completely, every model's arch options included.

    Prints each model group with its dataset, warns of a model dvc.yaml's `artifacts:` lacks
    (with the lines to add); a CPU portable kernels cannot run on is one line, before numpy."""
    params = load_params(args.params, before_modules=lambda p: require_cpu_for(p.numerics))
    groups = "; ".join(
        f"{group} on {params.dataset_of(next(iter(models)))}: {', '.join(models)}"
        for group in GROUPS
        if (models := getattr(params, group))
    )
    print(f"{args.params}: valid; {groups}")
    from reprolab.dvc_artifacts import artifact_advice

    for advice in artifact_advice(params, Path(args.params).parent / "dvc.yaml"):
        print(f"warning: {advice}", file=sys.stderr)


def lr_find(args: argparse.Namespace) -> None:
    """Learning-rate range test of a classifier or regressor on its train split.

    Raises the lr exponentially from --start-lr to --end-lr, one training batch per step
    with the model's optimizer, stopping early once the loss diverges; writes the smoothed
    loss curve (<out>/<model>.tsv and .png) and the suggested tune.lr range
    (<out>/<model>.json). A bar shows the steps on a terminal. Run `dvc repro split@image`
    (split@tabular for a regressor) first."""
    params = _load(args, args.model)
    if params.group_of(args.model) == "generators":
        raise ParamsError(
            f"lr-find: {args.model} is a generator (a GAN has no single training loss); "
            "give a model of classifiers: or regressors:"
        )
    # After _load: torch loads with the numerics mode's CPU kernel caps in place.
    from reprolab.core.io import atomic_path, write_json, write_tsv
    from reprolab.learn.context import ModelContext
    from reprolab.learn.lr_find import (
        check_out_folder,
        check_range,
        lr_range_test,
        plot_range_test,
    )

    check_range(args.start_lr, args.end_lr, args.steps)
    check_out_folder(Path(args.out))
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
    """Merge presets/<name>.yaml into the params file, its comments kept.

    Mappings merge key by key, except the model groups (classifiers:, regressors:,
    generators:): a group the preset gives replaces the file's. The result is validated
    before the file is rewritten."""
    from reprolab.core.presets import apply_preset

    merged = apply_preset(args.name, Path(args.params))
    models = [m for group in GROUPS for m in merged.get(group, {})]
    print(f"{args.params}: preset {args.name} applied; models {', '.join(models)}")


def champion(args: argparse.Namespace) -> None:
    """Move the MLflow alias champion to the workspace's results, as the report stage does.

    For when DVC reruns nothing: after `git checkout` and `dvc checkout` bring back an
    earlier result (an experiment discarded), the alias still names the discarded model
    until `report` reruns. Reads the workspace's metrics and models; writes no file. Exits 1
    when a group's best network could not take the alias (not registered in this store, or
    held by another workspace's result)."""
    from reprolab.report.champions import promote_champions
    from reprolab.report.leaderboard import ranked

    params = load_params(args.params)
    left = 0
    for line, off in promote_champions(params, ranked(params)):
        print(f"champion: {line}")
        left += off
    if left:
        sys.exit(f"error: the alias is not on the best network of {left} group(s); see above")


def predict(args: argparse.Namespace) -> None:
    """Print a classifier's or regressor's prediction for each image file or CSV row.

    One tab-separated line per input: the input, the prediction and its probability (a
    classifier's class and its softmax probability; a regressor's target and nan). A tab,
    newline or backslash in a file name is escaped (\\t, \\n, \\\\): one line per input."""
    from reprolab.predict import load_predictor, predict_files

    predictor = load_predictor(args.model)
    records = predict_files(predictor, args.files)  # a bad input stops before any output
    print("input\tprediction\tprobability")
    for record in records:
        cells = (_tsv_cell(str(record[k])) for k in ("input", "prediction"))
        print(*cells, f"{record['probability']:.4f}", sep="\t")


def _tsv_cell(text: str) -> str:
    r"""A cell of one tab-separated line: a backslash, tab, newline or carriage return in a
    file name (or a class name) escaped as \\, \t, \n, \r, so each input stays one row."""
    escapes = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    return "".join(escapes.get(c, c) for c in text)


def tune_worker(args: argparse.Namespace) -> None:
    """Run trials of a model's Optuna study until tune.n_trials of them have finished.

    Start more workers, in more processes or on machines sharing tune.storage (an RDB URL
    such as postgresql://...), at any moment, to tune one study in parallel: the study's trials
    are the same with any number of workers (tune.batch trials run side by side); a model's
    budget.n_trials overrides tune.n_trials. Run `dvc repro split@image` (split@tabular for a
    regressor) first."""
    params = _load(args, args.model)
    # After _load: torch loads with the numerics mode's CPU kernel caps in place.
    from reprolab.tracking.tags import stage_tags
    from reprolab.tuning.identity import study_name
    from reprolab.tuning.storage import storage_url
    from reprolab.tuning.worker import model_context, run_worker, start_tuning

    ctx = model_context(params, args.model)
    tags = stage_tags(ctx.device.type, params, ctx.data_files(("train", "val")))
    name = study_name(ctx)
    url = storage_url(ctx.tune.storage)
    print(f"tune-worker {args.model}: study {name} in {url.split('@')[-1]}", flush=True)
    tracker = start_tuning(ctx, f"tune-worker@{args.model}", tags)  # this run's own MLflow run
    ran = run_worker(ctx, tracker, tags)
    tracker.finish_execution({"trials_run": ran})
    print(f"tune-worker {args.model}: ran {ran} trial(s); the study has its {ctx.tune.n_trials}")


def verify(args: argparse.Namespace) -> None:
    """Rerun stages in a scratch copy and compare their outputs' md5 with dvc.lock.

    Every stage of dvc.lock, or the ones named, reruns from the inputs dvc.lock records; a
    stage whose inputs changed since is reported stale, not rerun. Exits 1 unless every
    output is identical. The workspace is not touched; MLflow runs go to the experiment
    reprolab-<dataset>-verify."""
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends each option's help with its default, unless it has none (a required option, or
    None: the help says what happens then) or the help states it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or action.default is None or "(default" in text:
            return action.help
        return super()._get_help_string(action)


def _command(sub, name: str, func: Callable[[argparse.Namespace], None]):
    """A subcommand: the first paragraph of ``func``'s docstring is its line in `reprolab
    --help`, the whole docstring the description of its own --help."""
    doc = inspect.cleandoc(func.__doc__ or "")
    summary = " ".join(doc.split("\n\n")[0].split())
    p = sub.add_parser(name, help=summary, description=doc, formatter_class=_HelpFormatter)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reprolab", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    params_help = "the params file"
    p = _command(sub, "check", check)
    p.add_argument("--params", default="params.yaml", help=params_help)
    p = _command(sub, "champion", champion)
    p.add_argument("--params", default="params.yaml", help=params_help)
    p = _command(sub, "lr-find", lr_find)
    p.add_argument("model", help="a model of classifiers: or regressors: in the params file")
    p.add_argument("--params", default="params.yaml", help=params_help)
    p.add_argument("--start-lr", type=float, default=1e-6, help="the first step's lr")
    p.add_argument("--end-lr", type=float, default=1.0, help="the last step's lr")
    p.add_argument("--steps", type=int, default=100, help="training batches, one lr each")
    p.add_argument("--out", default="reports/lr_find", help="folder of the .tsv/.json/.png")
    p = _command(sub, "preset", preset)
    p.add_argument("name", help="a preset: presets/<name>.yaml in the current folder")
    p.add_argument("--params", default="params.yaml", help="the params file to rewrite")
    p = _command(sub, "tune-worker", tune_worker)
    p.add_argument("model", help="a model of classifiers:, regressors: or generators:")
    p.add_argument("--params", default="params.yaml", help=params_help)
    p = _command(sub, "predict", predict)
    p.add_argument(
        "--model",
        required=True,
        help="an MLflow model URI (models:/digits-cnn@champion, models:/digits-cnn/2, "
        "runs:/<id>/model) or a DVC model folder (models/cnn)",
    )
    p.add_argument("files", nargs="+", help="image files (PNG, JPEG, ...) or CSV files of rows")
    p = _command(sub, "verify", verify)
    p.add_argument("stage", nargs="*", help="stages as dvc.lock names them (default: all)")
    p.add_argument(
        "--root", help="the workspace (default: $DVC_ROOT, else the nearest folder up holding .dvc)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        record_failure("KILLED", "interrupted (Ctrl-C)")  # a command's MLflow runs: KILLED
        sys.exit(f"reprolab {args.command}: interrupted")
    except Exception as err:  # ours, or an MLflow or Optuna store's fault: one line; else a bug
        known = str(err) if isinstance(err, ReprolabError) else store_fault(err)
        record_failure("FAILED", known or f"{type(err).__name__}: {err}")
        if known is None:
            raise
        sys.exit(f"error: {known}")


if __name__ == "__main__":
    main()
