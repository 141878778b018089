"""The shared skeleton of the stage scripts: args, validated params, clean errors."""

from __future__ import annotations

import argparse
import errno
import gc
import signal
import sys
import threading
from collections.abc import Callable

from reprolab.core import numerics
from reprolab.core.errors import ReprolabError, cut
from reprolab.core.params import load_params
from reprolab.core.schema import Params


def run_stage(
    description: str,
    body: Callable[[Params, argparse.Namespace], None],
    model_arg: bool = False,
    kind_arg: bool = False,
    check_kind: bool = False,
) -> None:
    """Parse args, validate params.yaml before any work, run ``body``; on a known error,
    one line and exit 1."""
    parser = argparse.ArgumentParser(description=description)
    if model_arg:
        parser.add_argument("model", help="a model of params.yaml (classifiers, regressors...)")
    if kind_arg:
        parser.add_argument("kind", choices=["image", "tabular"], help="a key of `datasets:`")
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    args = parser.parse_args()
    # No garbage collection while the stage imports: torch, MLflow, Optuna and scikit-learn
    # allocate millions of objects that live until exit, and each full collection would walk
    # them all again (a fifth of a stage's startup; bench/startup.py --stages).
    # imports_done() freezes them and turns collection back on; so does leaving run_stage.
    collecting = gc.isenabled()
    gc.disable()
    # SIGTERM (kill, a scheduler, CI's cancel) ends the stage as Ctrl-C does, not silently.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        # A model stage checks its model's arch options too; the others need no torch.
        # download/split check their dataset is of their kind (they import its source anyway).
        params = load_params(
            args.params,
            options_of=[args.model] if model_arg else [],
            kinds_of=[args.kind] if check_kind else [],
            # Before anything imports torch (an arch module does): it picks kernels on load.
            before_modules=set_numerics,
        )
        body(params, args)
    except ReprolabError as err:
        record_failure("FAILED", str(err))
        sys.exit(f"error: {err}")
    except OSError as err:  # the machine's fault: disk full, read-only or forbidden folder
        where = f"{cut(str(err.filename), 120)}: " if err.filename else ""
        message = f"{where}{err.strerror or err}"
        record_failure("FAILED", message)
        if isinstance(err, FileNotFoundError):
            sys.exit(f"error: {message}; run `dvc repro` (or `dvc pull`) to produce it")
        if err.errno == errno.ENAMETOOLONG:
            sys.exit(f"error: {message}; shorten the model's key in params.yaml (or the path)")
        sys.exit(f"error: {message}; free space or fix the permissions, then rerun the stage")
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
        record_failure("KILLED", how)
        sys.exit(f"{parser.prog}: {how}; no output was replaced (writes are atomic)")
    except BaseException as err:
        known = store_fault(err)
        record_failure("FAILED", known or f"{type(err).__name__}: {err}")
        if known is None:
            raise  # a bug: keep its traceback
        sys.exit(f"error: {known}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if collecting:
            gc.enable()
    # The run is done. Interpreter shutdown runs full garbage collections over every object
    # torch and MLflow allocated (0.7-0.9 s a stage, bench/startup.py); frozen ones are skipped.
    gc.freeze()


def imports_done() -> None:
    """A stage calls this once it has imported what it runs, before it computes: what was
    imported is frozen (collections never walk it again) and collection is back on."""
    gc.freeze()
    gc.enable()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the stage is (a KeyboardInterrupt: every cleanup of Ctrl-C runs)."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise Terminated


# Faults of the stores other layers talk to (MLflow, Optuna's database): the exception type a
# layer registers and what the user should do; the stage reports them in one line.
STORE_FAULTS: list[tuple[type[BaseException], str]] = []

# Called with (status, reason) when a stage fails: tracking ends the MLflow runs this
# process left running (FAILED, or KILLED on Ctrl-C or SIGTERM) instead of leaving them RUNNING.
FAILURE_HOOKS: list[Callable[[str, str], None]] = []


def store_fault(err: BaseException) -> str | None:
    """One line for a fault of a store (STORE_FAULTS): its root cause and what to do; None
    for anything else."""
    advice = next((a for kind, a in STORE_FAULTS if isinstance(err, kind)), None)
    if advice is None:
        return None
    return f"{type(err).__name__}: {_root_cause(err)[:300]}; {advice}"


def _root_cause(err: BaseException) -> str:
    """The first line of the innermost error a store's exception wraps (MLflow and
    SQLAlchemy put their own notes first: "(raised as a result of Query-invoked autoflush"),
    e.g. "attempt to write a readonly database"."""
    while err.__cause__ is not None or (err.__context__ and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def record_failure(status: str, reason: str) -> None:
    """Run FAILURE_HOOKS (a stage's, or a `reprolab` command's, that failed or was stopped)."""
    for hook in FAILURE_HOOKS:
        try:
            hook(status, reason)
        except Exception as err:  # a store that is itself the fault must not hide the error
            print(
                f"warning: could not record the failure in MLflow: {_root_cause(err)}",
                file=sys.stderr,
            )


def set_numerics(params: Params) -> None:
    """The numerics mode and the BLAS thread count, before anything imports torch or numpy
    (they pick kernels and pools on load); in portable mode the installed packages must be
    the pinned ones."""
    numerics.apply(params.numerics)
    numerics.pin_threads(params.threads)
    if params.numerics == "portable":
        numerics.check_pins()
