"""The `reprolab` command, for what is not a pipeline stage."""

from __future__ import annotations

import argparse
import sys

from reprolab.config import ParamsError, load_params


def check(args: argparse.Namespace) -> None:
    """Validate params.yaml completely (every model's arch options too)."""
    params = load_params(args.params)
    print(f"{args.params}: valid; dataset {params.dataset}, models {', '.join(params.models)}")


def predict(args: argparse.Namespace) -> None:
    """Print a model's prediction for each image file or CSV row."""
    from reprolab.prediction import load_predictor, predict_files

    predictor = load_predictor(args.model, args.flavor)
    print("input\tprediction\tprobability")
    for record in predict_files(predictor, args.files):
        print(f"{record['input']}\t{record['prediction']}\t{record['probability']:.4f}")


def main(argv: list[str] | None = None) -> None:
    from reprolab.prediction import PredictError

    parser = argparse.ArgumentParser(prog="reprolab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help=check.__doc__)
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=check)
    p = sub.add_parser("predict", help=predict.__doc__, description=predict.__doc__)
    p.add_argument(
        "--model",
        required=True,
        help="an MLflow model URI (models:/digits-cnn@champion, models:/digits-cnn/2, "
        "runs:/<id>/model) or a DVC model folder (models/cnn)",
    )
    p.add_argument(
        "--flavor",
        choices=("auto", "pytorch", "pyfunc"),
        default="auto",
        help="how to load an MLflow model (default: pytorch when logged with it)",
    )
    p.add_argument("files", nargs="+", help="image files (PNG, JPEG, ...) or CSV files of rows")
    p.set_defaults(func=predict)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ParamsError, PredictError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
