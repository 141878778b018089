"""The errors a user can cause and fix: each says what was given and what to do.

Every one derives from ``ReprolabError``, the one class the stages and the CLI catch to print
a single line and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
