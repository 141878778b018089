"""The shared skeleton of the stage scripts: args, validated params, clean errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from reprolab.config import Params, ParamsError, load_params


class StageError(RuntimeError):
    """A stage cannot proceed; the message says why and what to do."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from reprolab.data.fetch import DataError
    from reprolab.engine import DeviceError
    from reprolab.training import CheckpointError

    return (ParamsError, DataError, DeviceError, CheckpointError, StageError, FileNotFoundError)


def run_stage(
    description: str, body: Callable[[Params, argparse.Namespace], None], model_arg: bool = False
) -> None:
    """Parse args, validate params.yaml before any work, run ``body``; exit 2 on a known error."""
    parser = argparse.ArgumentParser(description=description)
    if model_arg:
        parser.add_argument("model", help="a key of `models:` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
        if model_arg:
            params.model(args.model)
        body(params, args)
    except ParamsError as err:
        sys.exit(f"error: {err}")
    except Exception as err:
        if isinstance(err, _expected_errors()):
            sys.exit(f"error: {err}")
        raise
