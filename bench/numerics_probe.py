"""Deterministic CPU training probe (tests/test_numerics.py, bench/numerics.py): prints the
sha256 of final state_dicts as one JSON line.

Env caps (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_CBWR) must be set by the caller
before this process starts (or via --mode portable, which goes through numerics.apply()
before torch is imported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


#: The default pipeline's models (params.yaml keys) and their batch sizes.
PIPELINE = {"mlp": 64, "lenet": 64, "cnn": 64, "alexnet": 64, "resnet18": 128,
            "tabular_mlp": 32, "dcgan": 64}  # fmt: skip


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--adam", choices=["default", "foreach", "fused"], default="default")
    p.add_argument(
        "--mode",
        choices=["none", "portable", "native"],
        default="none",
        help="call numerics.apply(mode) before importing torch",
    )
    p.add_argument(
        "--late",
        action="store_true",
        help="import torch first, then numerics.apply(mode) (too-late test)",
    )
    p.add_argument(
        "--try-late-portable",
        action="store_true",
        help="after training, call numerics.apply('portable') and report the error",
    )
    p.add_argument(
        "--bench",
        type=int,
        default=0,
        help="if >0: time this many training steps per model instead",
    )
    p.add_argument(
        "--models",
        default="cnn,mlp,tab",
        help="the probe's own cnn, mlp, tab, or the default pipeline's models as "
        "params.yaml builds them on digits (1x8x8) and diabetes (10 features): "
        + ",".join(f"pipeline:{name}" for name in PIPELINE),
    )
    return p.parse_args()


args = parse()
if args.late:
    import torch
if args.mode != "none":
    from reprolab.core import numerics

    numerics.apply(args.mode)

import torch  # noqa: E402
from torch import nn  # noqa: E402


def sd_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def make_tab() -> nn.Module:
    return nn.Sequential(
        nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def make_pipeline(name: str) -> nn.Module:
    """The params.yaml model ``name`` as the train stage builds it (digits / diabetes shapes)."""
    import yaml

    from reprolab.models._base import ModelSpec, build_model

    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    for group in ("classifiers", "regressors", "generators"):
        if name in params[group]:
            entry = params[group][name]
    tabular = name == "tabular_mlp"
    shape, n_out = ((10,), 1) if tabular else ((1, 8, 8), 10)
    spec = ModelSpec(
        arch=entry["arch"],
        options=entry.get("options", {}),
        input_shape=shape,
        n_outputs=n_out,
        mean=[0.0] * shape[0],
        std=[1.0] * shape[0],
        target_scale=(0.0, 1.0) if tabular else None,
    )
    return build_model(spec)


def pipeline_batches(name: str, n_batches: int, g: torch.Generator):
    size = PIPELINE[name]
    out = []
    for _ in range(n_batches):
        if name == "tabular_mlp":
            x = torch.randn(size, 10, generator=g)
            out.append((x, x[:, :3].sum(1, keepdim=True)))
        elif name == "dcgan":
            out.append((torch.rand(size, 1, 8, 8, generator=g) * 2 - 1, None))
        else:
            x = torch.randn(size, 1, 8, 8, generator=g)
            out.append((x, torch.randint(0, 10, (size,), generator=g)))
    return out


def data(name: str, n_batches: int, g: torch.Generator):
    out = []
    for _ in range(n_batches):
        if name == "cnn":
            x = torch.randn(64, 1, 8, 8, generator=g)
            y = torch.randint(0, 10, (64,), generator=g)
        elif name == "mlp":
            x = torch.randn(64, 64, generator=g)
            y = torch.randint(0, 10, (64,), generator=g)
        else:
            x = torch.randn(64, 12, generator=g)
            y = x[:, :3].sum(1, keepdim=True) + 0.1 * torch.randn(64, 1, generator=g)
        out.append((x, y))
    return out


def gan_step(model: nn.Module, real: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    model = model[1]  # build_model's Sequential(Standardize, DCGAN)
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
    noise = torch.randn(len(real), model.latent, 1, 1)
    fake = model.generator(noise)
    d_loss = bce(model.discriminator(real), ones) + bce(model.discriminator(fake.detach()), zeros)
    d_loss.backward()
    g_loss = bce(model.discriminator(fake), ones)
    g_loss.backward()
    opt.step()


def train(name: str, steps: int, timed: bool = False) -> tuple[str, float]:
    torch.manual_seed(1234)
    g = torch.Generator().manual_seed(99)
    if name.startswith("pipeline:"):
        name = name.removeprefix("pipeline:")
        model = make_pipeline(name)
        batches = pipeline_batches(name, min(steps, 30), g)
    else:
        model = {"cnn": make_cnn, "mlp": make_mlp, "tab": make_tab}[name]()
        batches = data(name, min(steps, 30), g)
    if name == "cnn" and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        batches = [(x.to(memory_format=torch.channels_last), y) for x, y in batches]
    kw = {}
    if args.adam == "foreach":
        kw["foreach"] = True
    elif args.adam == "fused":
        kw["fused"] = True
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, **kw)
    loss_fn = nn.MSELoss() if name in ("tab", "tabular_mlp") else nn.CrossEntropyLoss()
    model.train()

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        if name == "dcgan":  # one discriminator and one generator update, as a GAN epoch does
            gan_step(model, x, opt)
            return
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    if timed:
        for i in range(5):  # warm-up
            step(i)
        # CPU time of the process, not wall time, when asked: on a loaded shared machine wall
        # time measures the other jobs (bench/numerics.py runs OpenMP passive, no spinning).
        clock = time.process_time if os.environ.get("PROBE_CLOCK") == "cpu" else time.perf_counter
        t0 = clock()
        for i in range(steps):
            step(i)
        dt = clock() - t0
        return "", steps * len(batches[0][0]) / dt
    for i in range(steps):
        step(i)
    return sd_hash(model), 0.0


torch.set_num_threads(args.threads)
if args.deterministic:
    torch.use_deterministic_algorithms(True)

info: dict[str, object] = {
    "torch": torch.__version__,
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    "threads": torch.get_num_threads(),
    "mkldnn_available": torch.backends.mkldnn.is_available(),
    "mkl_available": torch.backends.mkl.is_available(),
    "env": {
        k: os.environ.get(k, "") for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    },
}
par = torch.__config__.parallel_info()
info["parallel"] = [ln.strip() for ln in par.splitlines() if "threads" in ln or "backend" in ln]
models = args.models.split(",")
if args.bench:
    info["samples_per_s"] = {m: round(train(m, args.bench, timed=True)[1], 1) for m in models}
else:
    hashes = {m: train(m, args.steps)[0] for m in models}
    info["hash"] = hashes
    info["hash_all"] = hashlib.sha256("".join(hashes[m] for m in models).encode()).hexdigest()
if args.try_late_portable:
    from reprolab.core import numerics

    try:
        numerics.apply("portable")
        info["late_portable_error"] = None
    except numerics.NumericsTooLateError as e:
        info["late_portable_error"] = f"{type(e).__name__}: {e}"
if args.mode != "none":
    info["describe"] = numerics.describe(args.mode)
print("PROBE " + json.dumps(info))
