"""Training throughput: the tutorial loop, a minimal in-memory loop and reprolab's engine.

In one process, on the same synthetic data and the same architecture (reprolab's LeNet on
3x32x32, its MLP on 1x28x28), with the same optimiser (Adam, lr 1e-3):

- seed:    the tutorials' way: a Dataset of PIL images, per-sample ToTensor + Normalize,
           DataLoader at batch 4 (timed on a subset; it is slow);
- minimal: a plain hand-written loop over pre-normalised float tensors in memory, batch 128;
- engine:  ``reprolab.learn.engine.fit`` at batch 128 with everything on: uint8 data on the device,
           a validation pass per epoch, early stopping and best-weights checkpoints, a
           progress bar, and an on_epoch callback logging to MLflow (SQLite) and reporting
           to Optuna (SQLite) like the tune stage does.

Variants run interleaved, ``--repeats`` times; the medians are printed, with the ratios
engine/minimal (the goal is >= 1.0) and engine/seed, and the per-epoch cost of the MLflow
and Optuna calls as a share of the engine's epoch time.

    PYTHONPATH=src python bench/throughput.py [--repeats 5] [--epochs 2] [--threads 2]

On a machine shared with other jobs, wall-clock repeats swing by tens of percent;
``--clock cpu --threads 1`` times CPU use instead, which their load barely moves.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

import torch
from torch import nn

BATCH = 128
SEED_BATCH = 4
LR = 1e-3
# Wall time by default; --clock cpu swaps in the process's CPU time (set in main).
clock = time.perf_counter


def synthetic(n: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose class shows in a per-class mean image, so validation loss falls
    (and the engine's checkpointing really copies weights)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    means = torch.rand(10, *shape, generator=torch.Generator().manual_seed(99)) * 255
    x = 0.3 * means[y] + 0.7 * torch.rand(n, *shape, generator=g) * 255
    return x.to(torch.uint8), y


def core_model(arch: str, shape: tuple[int, ...]) -> nn.Module:
    """The architecture without reprolab's Standardize: the loops normalise themselves."""
    from reprolab.core import registry

    module = registry.model_module(arch)
    torch.manual_seed(0)
    return module.build(module.Options(), shape, 10)


def seed_loop(arch: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """One pass of the tutorial loop over (x, y); returns images/s."""
    from PIL import Image
    from torchvision import transforms

    class PILDataset(torch.utils.data.Dataset):
        def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
            arrays = x.numpy()
            self.images = [
                Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)) for a in arrays
            ]
            self.labels = y.tolist()
            self.transform = transform

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int):
            return self.transform(self.images[i]), self.labels[i]

    channels = x.shape[1]
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,) * channels, (0.25,) * channels)]
    )
    loader = torch.utils.data.DataLoader(
        PILDataset(x, y, transform), batch_size=SEED_BATCH, shuffle=True, num_workers=0
    )
    model = core_model(arch, tuple(x.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    start = clock()
    model.train()
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
    return len(y) / (clock() - start)


def minimal_loop(arch: str, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    """A plain loop over pre-normalised float tensors; returns images/s."""
    data = (x.float() / 255 - 0.5) / 0.25
    model = core_model(arch, tuple(x.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    start = clock()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y), BATCH):
            index = order[i : i + BATCH]
            loss = nn.functional.cross_entropy(model(data[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return epochs * len(y) / (clock() - start)


class EpochLogger:
    """The tune stage's on_epoch work: MLflow log_batch, Optuna report + should_prune."""

    def __init__(self, store: Path, name: str) -> None:
        import optuna

        from reprolab.tracking.runs import Tracker

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.tracker = Tracker("bench", name, "bench")
        self.run_id = self.tracker.client.create_run(self.tracker.experiment_id).info.run_id
        study = optuna.create_study(
            study_name=f"bench-{name}-{time.time_ns()}",
            storage=f"sqlite:///{store / 'optuna.db'}",
            pruner=optuna.pruners.NopPruner(),
        )
        self.trial = study.ask()
        self.mlflow_s = self.optuna_s = 0.0

    def __call__(self, epoch: int, row: dict[str, float]) -> None:
        t0 = clock()
        self.tracker.log(
            self.run_id, metrics={k: v for k, v in row.items() if k != "epoch"}, step=epoch
        )
        t1 = clock()
        self.trial.report(row["val_loss"], epoch)
        self.trial.should_prune()
        self.optuna_s += clock() - t1
        self.mlflow_s += t1 - t0


def engine_loop(
    arch: str, x: torch.Tensor, y: torch.Tensor, val: tuple, epochs: int, store: Path
) -> tuple[float, float, float]:
    """learn.engine.fit with everything on; returns (images/s, mlflow share, optuna share)."""
    from reprolab.core.schema import ModelSpec, TrainParams
    from reprolab.learn.engine import fit, make_optimizer
    from reprolab.learn.tensors import TensorData
    from reprolab.models._base import ModelSpec as ArchSpec
    from reprolab.models._base import build_model

    shape = tuple(x.shape[1:])
    torch.manual_seed(0)
    model = build_model(ArchSpec(arch, {}, shape, 10, [127.5] * shape[0], [64.0] * shape[0]))
    optimizer = make_optimizer(model, ModelSpec(arch=arch), lr=LR, weight_decay=0.0)
    logger = EpochLogger(store, arch)
    # patience = epochs: the early-stopping check and checkpoint copies run every epoch,
    # but every run trains the same number of epochs.
    params = TrainParams(max_epochs=epochs, patience=epochs)
    start = clock()
    result = fit(
        model,
        TensorData(x, y),
        TensorData(*val),
        optimizer=optimizer,
        train_params=params,
        epochs=epochs,
        batch_size=BATCH,
        seed=0,
        on_epoch=logger,
        desc=f"engine {arch}",
        progress=True,
    )
    elapsed = clock() - start
    assert len(result.history) == epochs
    return epochs * len(y) / elapsed, logger.mlflow_s / elapsed, logger.optuna_s / elapsed


def bench_model(arch: str, shape: tuple[int, ...], args: argparse.Namespace, store: Path) -> dict:
    n = args.lenet_images if arch == "lenet" else args.mlp_images
    x, y = synthetic(n, shape, seed=1)
    val = synthetic(max(1, n // 10), shape, seed=2)
    seed_n = min(n, args.seed_images)
    # Warm-up (allocator, oneDNN kernels, MLflow/Optuna stores): not timed.
    quiet = io.StringIO()
    with redirect_stderr(quiet):
        minimal_loop(arch, x[:2048], y[:2048], 1)
        engine_loop(arch, x[:2048], y[:2048], (val[0][:256], val[1][:256]), 1, store)
    runs: dict[str, list[float]] = {
        "seed": [],
        "minimal": [],
        "engine": [],
        "mlflow": [],
        "optuna": [],
    }
    for repeat in range(args.repeats):
        # Rotate the order so no variant always runs first (CPU load from others drifts).
        order = ["seed", "minimal", "engine"]
        order = order[repeat % 3 :] + order[: repeat % 3]
        for variant in order:
            if variant == "seed":
                runs["seed"].append(seed_loop(arch, x[:seed_n], y[:seed_n]))
            elif variant == "minimal":
                runs["minimal"].append(minimal_loop(arch, x, y, args.epochs))
            else:
                with redirect_stderr(sys.stderr if args.show_progress else quiet):
                    ips, mlflow_share, optuna_share = engine_loop(
                        arch, x, y, val, args.epochs, store
                    )
                runs["engine"].append(ips)
                runs["mlflow"].append(mlflow_share)
                runs["optuna"].append(optuna_share)
    ratios = [e / m for e, m in zip(runs["engine"], runs["minimal"], strict=True)]
    return {k: statistics.median(v) for k, v in runs.items()} | {
        "ratio_min": statistics.median(ratios),
        "ratios": ratios,
        "n": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per variant")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per minimal/engine run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--lenet-images", type=int, default=8192, help="train images, LeNet")
    parser.add_argument("--mlp-images", type=int, default=32768, help="train images, MLP")
    parser.add_argument("--seed-images", type=int, default=2048, help="images per seed-loop run")
    parser.add_argument("--models", default="lenet,mlp", help="comma-separated: lenet,mlp")
    parser.add_argument("--show-progress", action="store_true", help="let the bars through")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time.process_time, immune to other jobs holding the cores; use it with "
        "--threads 1 (with more threads it counts OpenMP spin-waits, which their load inflates)",
    )
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    torch.set_num_threads(args.threads)
    shapes = {"lenet": (3, 32, 32), "mlp": (1, 28, 28)}
    with tempfile.TemporaryDirectory(prefix="reprolab-bench-") as tmp:
        store = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
        os.environ["DVC_ROOT"] = str(store)  # MLflow artifacts under the temp folder
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
            f"{args.repeats} interleaved repeats, medians; batch {BATCH} (seed loop {SEED_BATCH})"
        )
        header = (
            f"{'model':6} {'images':>7} {'seed/s':>8} {'minimal/s':>10} {'engine/s':>9} "
            f"{'eng/min':>8} {'eng/seed':>9} {'mlflow%':>8} {'optuna%':>8}"
        )
        lines = []
        for arch in args.models.split(","):
            r = bench_model(arch, shapes[arch], args, store)
            lines.append(
                f"{arch:6} {r['n']:>7} {r['seed']:>8.0f} {r['minimal']:>10.0f} {r['engine']:>9.0f} "
                f"{r['ratio_min']:>8.2f} {r['engine'] / r['seed']:>9.1f} "
                f"{100 * r['mlflow']:>7.2f}% {100 * r['optuna']:>7.2f}%"
            )
            print(f"{arch}: engine/minimal per repeat " + " ".join(f"{q:.2f}" for q in r["ratios"]))
        print(header)
        print("\n".join(lines))
        print(
            "eng/min: median of per-repeat ratios; mlflow%/optuna%: time in the on_epoch "
            "MLflow log_batch / Optuna report+should_prune, share of the engine's run time"
        )


if __name__ == "__main__":
    main()
