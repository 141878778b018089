"""The errors a user can cause and fix: each says what was given and what to do.

Every one derives from ``ReprolabError``, the one class the stages and the CLI catch to print
a single line and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

# How much of a value (or a name) an error message echoes: a bad value can be a 50 MB string
# or a whole expanded section, and the message must stay one readable line.
SHOWN_CHARS = 60


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks the cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    return cut(repr(value), limit)


def first_lines(lines: list[str], limit: int = 20) -> list[str]:
    """The first ``limit`` of ``lines``, and a line counting the others (a file with
    millions of bad keys gets a short message, not millions of lines)."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  ... and {len(lines) - limit} more"]


class ReprolabError(Exception):
    """An expected fault (bad params, data, files or environment); the message says why and
    what to do."""


class ParamsError(ReprolabError, ValueError):
    """params.yaml holds a value the pipeline cannot run with."""


class DataError(ReprolabError):
    """A dataset file is missing, corrupt or of the wrong kind."""


class DeviceError(ReprolabError):
    """The requested device is not available on this machine."""


class DivergedError(ReprolabError):
    """The loss became NaN or infinite."""


class CheckpointError(ReprolabError):
    """A model file is missing, unreadable or inconsistent."""


class ModelBuildError(ReprolabError):
    """An architecture cannot be built for the data it is given."""


class StageError(ReprolabError):
    """A stage cannot proceed."""


class PredictError(ReprolabError, ValueError):
    """An input or a model reference that ``reprolab predict`` cannot use."""


class TuningError(ReprolabError):
    """A study cannot give a result (every trial pruned, a worker died)."""
