"""The shared skeleton of the stage scripts: args, validated params, clean errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from reprolab.config import Params, ParamsError, load_params


class StageError(RuntimeError):
    """A stage cannot proceed; the message says why and what to do."""


def expected_errors() -> tuple[type[BaseException], ...]:
    from reprolab.data.fetch import DataError
    from reprolab.engine import DeviceError
    from reprolab.models._base import ModelBuildError
    from reprolab.training import CheckpointError

    return (
        ParamsError,
        DataError,
        DeviceError,
        CheckpointError,
        ModelBuildError,
        StageError,
        FileNotFoundError,
    )


def run_stage(
    description: str,
    body: Callable[[Params, argparse.Namespace], None],
    model_arg: bool = False,
    kind_arg: bool = False,
    check_kind: bool = False,
) -> None:
    """Parse args, validate params.yaml before any work, run ``body``; exit 2 on a known error."""
    parser = argparse.ArgumentParser(description=description)
    if model_arg:
        parser.add_argument("model", help="a model of params.yaml (classifiers, regressors...)")
    if kind_arg:
        parser.add_argument("kind", choices=["image", "tabular"], help="a key of `datasets:`")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args()
    try:
        # A model stage checks its model's arch options too; the others need no torch.
        # download/split check their dataset is of their kind (they import its source anyway).
        params = load_params(
            args.params,
            options_of=[args.model] if model_arg else [],
            kinds_of=[args.kind] if check_kind else [],
        )
        body(params, args)
        _log_imports()
    except ParamsError as err:
        sys.exit(f"error: {err}")
    except Exception as err:
        if isinstance(err, expected_errors()):
            sys.exit(f"error: {err}")
        raise
    _exit_without_teardown()


def _exit_without_teardown() -> None:
    """Exit 0 now that every output is written (atomically) and closed, skipping the
    interpreter's module teardown: unloading torch and MLflow takes about 1 s, paid by each
    of the pipeline's ~30 stages. The atexit handlers (MLflow ending a run, logging's flush)
    still run, and stdio is flushed, first."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _log_imports() -> None:
    """With REPROLAB_IMPORTS_LOG set, record the project files this stage ran, so a test
    can check them against the stage's deps in dvc.yaml."""
    log = os.environ.get("REPROLAB_IMPORTS_LOG")
    if not log:
        return
    root = Path.cwd().resolve()
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(root):
            files.add(Path(path).resolve().relative_to(root).as_posix())
    record = {"argv": [Path(sys.argv[0]).as_posix(), *sys.argv[1:]], "files": sorted(files)}
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")
