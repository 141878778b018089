"""The machine side of a run: which device, one seed for every generator, thread count and
deterministic kernels."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from reprolab.core.errors import DeviceError


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, else mps, else cpu; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device: 'cuda' requested but no CUDA GPU is visible; use 'auto' or 'cpu'"
        )
    if name == "mps" and not has_mps:
        raise DeviceError("device: 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int, threads: int) -> None:
    """One seed for python, numpy and torch; a fixed thread count (it changes float sums)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels, or (CUDA) cuDNN autotuning when determinism is not asked for."""
    if device.type == "cuda":
        if deterministic:
            # cuBLAS is deterministic only with a fixed workspace, set before its first use.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)
    # Filling every torch.empty with NaN is a debugging aid that costs time on each batch.
    torch.utils.deterministic.fill_uninitialized_memory = False
