"""The learning tasks, one module each (``TASK``): classification, regression, generative.

A task module is imported only when a stage uses it, so a classifier's stages never import
the GAN code.
"""

from __future__ import annotations

import importlib

from reprolab.learn.tasks._base import Task, TrialFit

__all__ = ["Task", "TrialFit", "get_task"]


def get_task(name: str) -> Task:
    """The ``TASK`` of module reprolab.learn.tasks.<name> (a task of core.schema.GROUPS)."""
    return importlib.import_module(f"{__name__}.{name}").TASK
