"""Multi-process training under torchrun: DistributedDataParallel, gloo on CPU, nccl on CUDA.

torchrun starts one process per rank and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; ``init_from_env`` (called by the train stage) joins the process group.
``engine.fit`` then gives every rank its shard of every batch (batches are index tensors)
and DDP averages the gradients, so the ranks step together on the whole batch, with the
same weights. Only rank 0 logs and writes files. Without torchrun (WORLD_SIZE unset or 1)
nothing of this runs and training is the single-process loop, bit for bit.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that logs and writes files."""
    return rank() == 0


def relaunch(launcher: str) -> None:
    """``train.launcher`` torchrun: replace this process with torch.distributed.run (the
    module behind torchrun) given the launcher's flags and this script's arguments; it starts
    the ranks, each running this stage again. The flags were checked by the params schema
    and no shell sees them (dvc.yaml's command never holds a params value). No-op for
    ``python`` and inside a rank."""
    if launcher == "python" or "LOCAL_RANK" in os.environ:
        return
    argv = [sys.executable, "-m", "torch.distributed.run", *launcher.split()[1:], *sys.argv]
    print(f"{launcher} {' '.join(sys.argv)}", flush=True)
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def init_from_env(device: str) -> None:
    """Join torchrun's process group: nccl when this rank trains on CUDA (its GPU is
    LOCAL_RANK), else gloo. A no-op outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device == "mps":
        from reprolab.core.errors import DeviceError

        raise DeviceError("device: 'mps' cannot train under torchrun; use 'cpu' or 'cuda'")
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module) -> nn.Module:
    """The model DDP-wrapped when several ranks train it (gradients averaged in backward)."""
    if not active():
        return model
    device = next(model.parameters()).device
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(model, device_ids=[index])


def shard(index: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's contiguous part of a batch and the weight of its mean loss.

    DDP averages gradients over ranks; weighting each rank's mean loss by
    ``len(part) / len(index) * world`` makes that average the gradient of the whole
    batch's mean loss, also when the parts differ in size. A rank whose part is empty
    (a last batch smaller than the world) steps on one row with weight 0, since every
    rank must join each gradient all-reduce.
    """
    world = world_size()
    if world == 1:
        return index, 1.0
    part = index.tensor_split(world)[rank()]
    if len(part) == 0:
        return index[:1], 0.0
    return part, len(part) / len(index) * world


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
