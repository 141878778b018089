"""The `reprolab` command, for what is not a pipeline stage."""

from __future__ import annotations

import argparse
import sys

from reprolab.config import ParamsError, load_params


def check(args: argparse.Namespace) -> None:
    """Validate params.yaml completely (every model's arch options too)."""
    params = load_params(args.params)
    print(f"{args.params}: valid; dataset {params.dataset}, models {', '.join(params.models)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reprolab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help=check.__doc__)
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=check)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ParamsError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
