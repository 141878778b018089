"""Find the ops whose bits depend on the CPU under portable numerics: approximate
instructions (RSQRTPS, RCPPS) and dispatch that the caps do not reach.

QEMU user mode computes RSQRTPS/RCPPS exactly, while real CPUs return implementation-defined
approximations; so an op whose bits under ``qemu-x86_64 -cpu <model>`` differ from native
(same caps, same threads) either uses such an instruction or picks its kernel by CPU model.
Comparing two emulated models (an Intel and an AMD) separates vendor dispatch from the rest.

    python bench/approx_ops.py                       # native vs emulated Haswell and EPYC
    python bench/approx_ops.py --cpus Haswell,EPYC,Icelake-Server
    python bench/approx_ops.py --probe               # one process: JSON {op: md5}

Each op runs forward (and backward where the pipeline differentiates it) on fixed inputs of
4099 elements (vector body and scalar tail). Needs `qemu-user` (Debian) for the comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def probe() -> dict[str, str]:
    from reprolab.core import numerics

    numerics.apply("portable")
    numerics.pin_threads(2)
    import numpy as np
    import torch
    from torch import nn

    from reprolab.learn.objectives import exact_sqrt

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4099, generator=gen)
    pos = x.abs() + 0.01
    unit = torch.rand(4099, generator=gen) * 0.98 + 0.01
    logits = torch.randn(257, 10, generator=gen)
    labels = torch.randint(0, 10, (257,), generator=gen)
    a, b = torch.randn(67, 129, generator=gen), torch.randn(129, 33, generator=gen)
    img = torch.randn(8, 3, 17, 17, generator=gen)

    def h(*tensors: torch.Tensor | np.ndarray) -> str:
        md5 = hashlib.md5()
        for t in tensors:
            arr = t.detach().contiguous().numpy() if isinstance(t, torch.Tensor) else t
            md5.update(np.ascontiguousarray(arr).tobytes())
        return md5.hexdigest()[:12]

    def with_grad(fn, *inputs: torch.Tensor) -> str:
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        return h(out, *(t.grad for t in leaves))

    F = nn.functional
    ops = {
        "sqrt": lambda: with_grad(torch.sqrt, pos),
        "exact_sqrt (the losses')": lambda: with_grad(lambda t: exact_sqrt(t), pos),
        "pow 0.5": lambda: with_grad(lambda t: t.pow(0.5), pos),
        "rsqrt": lambda: with_grad(torch.rsqrt, pos),
        "reciprocal": lambda: with_grad(torch.reciprocal, pos),
        "div": lambda: h(x / pos),
        "exp": lambda: with_grad(torch.exp, x),
        "expm1": lambda: with_grad(torch.expm1, x),
        "log": lambda: with_grad(torch.log, pos),
        "log1p": lambda: with_grad(torch.log1p, pos),
        "tanh": lambda: with_grad(torch.tanh, x),
        "sigmoid": lambda: with_grad(torch.sigmoid, x),
        "erf": lambda: with_grad(torch.erf, x),
        "gelu": lambda: with_grad(F.gelu, x),
        "leaky_relu": lambda: with_grad(lambda t: F.leaky_relu(t, 0.2), x),
        "log_softmax": lambda: with_grad(lambda t: F.log_softmax(t, 1), logits),
        "cross_entropy": lambda: with_grad(lambda t: F.cross_entropy(t, labels), logits),
        "mse_loss": lambda: with_grad(lambda t: F.mse_loss(t, x.flip(0)), x),
        "bce_with_logits": lambda: with_grad(
            lambda t: F.binary_cross_entropy_with_logits(t, unit), x
        ),
        "std_mean": lambda: with_grad(lambda t: t.std() + t.mean(), x),
        "norm": lambda: with_grad(torch.linalg.vector_norm, x),
        "matmul": lambda: with_grad(torch.matmul, a, b),
        "linear (addmm)": lambda: with_grad(lambda m: F.linear(m, b.T, b[0]), a),
        "conv2d": lambda: with_grad(lambda t: F.conv2d(t, img[:4, :3, :3, :3], padding=1), img),
        "conv_transpose2d": lambda: with_grad(
            lambda t: F.conv_transpose2d(t, img[:3, :4, :4, :4], stride=2), img
        ),
        "batch_norm (train)": lambda: with_grad(
            lambda t: F.batch_norm(t, None, None, training=True), img
        ),
        "max_pool2d": lambda: with_grad(lambda t: F.max_pool2d(t, 2), img),
        "avg_pool2d": lambda: with_grad(lambda t: F.adaptive_avg_pool2d(t, 3), img),
        "interpolate bilinear": lambda: with_grad(
            lambda t: F.interpolate(t, scale_factor=2.5, mode="bilinear"), img
        ),
        "float64 sqrt": lambda: h(pos.double().sqrt()),
        "float64 exp": lambda: h(x.double().exp()),
        "float64 log": lambda: h(pos.double().log()),
        "float64 softmax (test metrics)": lambda: h(torch.softmax(logits.double(), 1)),
        "numpy f32 sqrt/exp/log": lambda: h(
            np.sqrt(pos.numpy()), np.exp(x.numpy()), np.log(pos.numpy())
        ),
        "numpy f64 log1p/expm1": lambda: h(
            np.log1p(pos.double().numpy()), np.expm1(x.double().numpy())
        ),
        "numpy f64 exp/log/tanh": lambda: h(
            np.exp(x.double().numpy()), np.log(pos.double().numpy()), np.tanh(x.double().numpy())
        ),
        "numpy eigh/matmul": lambda: h(
            np.linalg.eigh(a.double().numpy() @ a.double().numpy().T)[0],
            a.double().numpy() @ b.double().numpy(),
        ),
    }
    for name, fused in (("adam fused", True), ("adam for-loop", False)):

        def adam_steps(fused: bool = fused) -> str:
            w = nn.Parameter(x.clone())
            opt = torch.optim.Adam([w], lr=1e-2, weight_decay=1e-4, fused=fused)
            for step in range(3):
                opt.zero_grad()
                (w * unit * (step + 1)).sum().backward()
                opt.step()
            return h(w)

        ops[name] = adam_steps

    def sgd_steps() -> str:
        w = nn.Parameter(x.clone())
        opt = torch.optim.SGD([w], lr=1e-2, momentum=0.9, weight_decay=1e-4, fused=True)
        for _ in range(3):
            opt.zero_grad()
            (w * unit).sum().backward()
            opt.step()
        return h(w)

    ops["sgd fused"] = sgd_steps
    return {name: fn() for name, fn in ops.items()}


def run_probe(prefix: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [*prefix, sys.executable, __file__, "--probe"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", action="store_true", help="print this process's hashes")
    parser.add_argument("--cpus", default="Haswell,EPYC", help="QEMU CPU models to emulate")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe()))
        return
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("qemu-x86_64 not found: apt-get install qemu-user")
    columns = {"native": run_probe([])}
    for cpu in args.cpus.split(","):
        start = time.monotonic()
        columns[cpu] = run_probe([qemu, "-cpu", cpu])
        print(f"# emulated {cpu}: {time.monotonic() - start:.0f} s", file=sys.stderr)
    names = list(columns)
    print("| op | " + " | ".join(names) + " | verdict |")
    print("|---|" + "---|" * (len(names) + 1))
    for op, native in columns["native"].items():
        row = [columns[n][op] for n in names]
        emulated = row[1:]
        if len(set(emulated)) > 1:
            verdict = "**differs between emulated CPUs** (kernel chosen by CPU model)"
        elif emulated and emulated[0] != native:
            verdict = "**approximate instruction** (native differs from exact emulation)"
        else:
            verdict = "same"
        print(f"| {op} | " + " | ".join(f"`{v}`" for v in row) + f" | {verdict} |")


if __name__ == "__main__":
    main()
