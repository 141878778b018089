"""Float32 GEMM routes for ``Linear`` under portable numerics: speed against native and bits
on this CPU and on emulated Intel and AMD CPUs (issue #24, "portable at native speed").

A route is an MKL setting (the environment oneMKL reads when it loads) or a oneDNN call
(oneDNN's JIT is capped by ``ONEDNN_MAX_CPU_ISA`` on every vendor, while oneMKL honours
``MKL_CBWR=AVX2`` on Intel CPUs only). Each route runs in a fresh process with the portable
caps (core.numerics.PORTABLE_ENV), its own MKL variables on top:

* ``mkl``      ``F.linear`` (ATen's addmm/mm: oneMKL SGEMM) under the process's ``MKL_CBWR``;
* ``onednn``   forward, input gradient and weight gradient each through
               ``torch.ops.mkldnn._linear_pointwise`` (oneDNN inner product, brgemm kernels);
* ``conv1x1``  ``Linear`` as a 1x1 ``conv2d`` on (N, C, 1, 1) (oneDNN convolution, its
               backward too).

    python bench/gemm_paths.py speed [ROUNDS]         # ratios vs native, alternating rounds
    python bench/gemm_paths.py bits [--cpus Haswell,EPYC]   # md5 here and under qemu-x86_64
    python bench/gemm_paths.py --probe ENV (bits|speed)     # one process: one JSON line

``--envs "COMPATIBLE;AVX2"`` picks the MKL environments (names of :data:`ENVS`, ;-separated),
``--mlp-in 64`` the default pipeline's digits MLP instead of the 784-wide one.

Bits: md5 of forward output, input and weight gradients of ``Linear`` at the pipeline's
shapes (and odd ones), and of an MLP's weights (784-256-128-10, batch 64; ``--mlp-in 64``:
the default pipeline's digits MLP) after 5 fused-Adam steps, per route. Speed: training
samples/s of that MLP (2 threads), per wall and per CPU second, best of 3 chunks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

#: Process environments: MKL variables on top of the portable caps ("native": no caps at all).
ENVS: dict[str, dict[str, str] | None] = {
    "native": None,
    "COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},  # today's portable mode
    "AVX2": {"MKL_CBWR": "AVX2"},
    "AVX2,STRICT": {"MKL_CBWR": "AVX2,STRICT"},
    "AUTO+ENABLE_AVX2": {"MKL_CBWR": "AUTO", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "COMPATIBLE+ENABLE_AVX2": {"MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
#: The oneDNN routes do not read MKL's variables: they run in the COMPATIBLE process only.
ONEDNN_ROUTES = ("onednn", "conv1x1")
MKL_VARS = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")
#: (batch, in, out): the default MLP's layers, LeNet's, the tabular MLP's, ResNet18's head, odd.
SHAPES = ((64, 784, 256), (64, 256, 128), (64, 128, 10), (64, 400, 120), (32, 12, 64),
          (128, 512, 10), (67, 129, 33))  # fmt: skip
THREADS = 2
#: The MLP's input width: 784 (MNIST-sized) or 64 (the default pipeline's digits) with --mlp-in.
MLP_IN = int(os.environ.get("GEMM_MLP_IN", "784"))


def configure(env_name: str) -> None:
    """Set the caps for ``env_name`` before torch loads."""
    for var in MKL_VARS:
        os.environ.pop(var, None)
    extra = ENVS[env_name]
    if extra is None:
        return
    from reprolab.core import numerics

    numerics.apply("portable")
    os.environ.update(extra)


def routes_for(env_name: str) -> tuple[str, ...]:
    return ("mkl", *ONEDNN_ROUTES) if env_name == "COMPATIBLE" else ("mkl",)


def linear_fn(route: str):
    """``f(x, weight, bias)`` computing ``x @ weight.T + bias`` through ``route``, with autograd."""
    import torch
    import torch.nn.functional as F

    if route == "mkl":
        return F.linear
    if route == "conv1x1":

        def conv1x1(x, weight, bias):
            y = F.conv2d(x[:, :, None, None], weight[:, :, None, None], bias)
            return y.flatten(1)

        return conv1x1
    assert route == "onednn", route
    pointwise = torch.ops.mkldnn._linear_pointwise

    class OneDnnLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight)
            return pointwise(x, weight, bias, "none", [], "")

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            # dX = dY W = linear(dY, W^T); dW = dY^T X = linear(dY^T, X^T). The transposes
            # are views: oneDNN reads them in place (a copy cost more than the GEMM).
            grad_x = pointwise(grad, weight.t(), None, "none", [], "")
            grad_w = pointwise(grad.t(), x.t(), None, "none", [], "")
            return grad_x, grad_w, grad.sum(0)

    return OneDnnLinear.apply


def mlp(route: str):
    import torch
    from torch import nn

    fn = linear_fn(route)

    class RoutedLinear(nn.Linear):
        def forward(self, x):
            return fn(x, self.weight, self.bias)

    torch.manual_seed(1234)
    return nn.Sequential(
        RoutedLinear(MLP_IN, 256), nn.ReLU(), RoutedLinear(256, 128), nn.ReLU(),
        RoutedLinear(128, 10),
    )  # fmt: skip


def mlp_trainer(route: str):
    """(model, one training step) for the MLP through ``route``."""
    import torch

    model = mlp(route)
    gen = torch.Generator().manual_seed(99)
    batches = [
        (torch.randn(64, MLP_IN, generator=gen), torch.randint(0, 10, (64,), generator=gen))
        for _ in range(8)
    ]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    counter = [0]

    def step() -> None:
        x, y = batches[counter[0] % len(batches)]
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return model, step


def bits(route: str) -> str:
    import torch

    md5 = hashlib.md5()
    gen = torch.Generator().manual_seed(0)
    fn = linear_fn(route)
    for n, k, m in SHAPES:
        x = torch.randn(n, k, generator=gen, requires_grad=True)
        w = torch.randn(m, k, generator=gen, requires_grad=True)
        b = torch.randn(m, generator=gen, requires_grad=True)
        y = fn(x, w, b)
        y.backward(torch.randn(n, m, generator=gen))
        for t in (y, x.grad, w.grad, b.grad):
            md5.update(t.detach().contiguous().numpy().tobytes())
    model, step = mlp_trainer(route)
    for _ in range(5):
        step()
    for p in model.parameters():
        md5.update(p.detach().numpy().tobytes())
    return md5.hexdigest()[:12]


def speed(routes: tuple[str, ...], chunks: int = 3, steps: int = 30) -> dict[str, list[float]]:
    """Per route, [samples per wall second, samples per CPU second of the process], each the
    best of ``chunks`` interleaved chunks (the least disturbed). On a shared, loaded machine
    wall time mostly measures the other jobs; CPU time (OpenMP threads passive, so waiting
    costs none) measures the route's own work."""
    trainers = {r: mlp_trainer(r)[1] for r in routes}
    for step in trainers.values():
        for _ in range(5):  # warm-up: oneDNN primitive creation, MKL buffers
            step()
    best = {r: [0.0, 0.0] for r in routes}
    for _ in range(chunks):
        for route, step in trainers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[route] = [
                max(b, steps * 64 / t) for b, t in zip(best[route], (wall, cpu), strict=True)
            ]
    return best


def probe(env_name: str, what: str) -> dict[str, object]:
    configure(env_name)
    import torch

    torch.set_num_threads(THREADS)
    routes = routes_for(env_name)
    if what == "bits":
        return {r: bits(r) for r in routes}
    return speed(routes)


def run_probe(env_name: str, what: str, prefix: tuple[str, ...] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k not in MKL_VARS}
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # no spinning: CPU time is work (speed's measure)
    out = subprocess.run(
        [*prefix, sys.executable, __file__, "--probe", env_name, what],
        env=env, capture_output=True, text=True, check=True, timeout=3600,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main_speed(rounds: int, envs: list[str]) -> None:
    """Rounds of one process per environment, the order rotating; a route's ratio is its
    samples/s over the native process's in the same round, the median over rounds."""
    ratios: dict[str, dict[str, list[float]]] = {}
    within: list[float] = []
    for r in range(rounds):
        order = envs[r % len(envs) :] + envs[: r % len(envs)]
        got = {name: run_probe(name, "speed") for name in order}
        native = got["native"]["mkl"]
        for name in envs:
            for route, value in got[name].items():
                key = f"{name} {route}" if route == "mkl" else route
                for i, clock in enumerate(("wall", "cpu")):
                    ratios.setdefault(key, {}).setdefault(clock, []).append(value[i] / native[i])
        if "COMPATIBLE" in got:
            within.append(got["COMPATIBLE"]["onednn"][1] / got["COMPATIBLE"]["mkl"][1])
        print(f"# round {r}: {json.dumps(got)}", file=sys.stderr, flush=True)
    print("| route | /native, CPU time (median; rounds) | /native, wall (median; rounds) |")
    print("|---|---|---|")
    for key, clocks in ratios.items():
        cells = [
            f"**{statistics.median(v):.3f}** ({min(v):.2f}-{max(v):.2f})"
            for v in (clocks["cpu"], clocks["wall"])
        ]
        print(f"| {key} | " + " | ".join(cells) + " |")
    if within:
        print(f"\nonednn / COMPATIBLE mkl, CPU time, one process: {statistics.median(within):.3f}")


def main_bits(cpus: list[str], envs: list[str]) -> None:
    """One process per (environment, CPU); the CPUs of one environment run side by side."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("qemu-x86_64 not found: apt-get install qemu-user")
    prefixes = {"native": (), **{cpu: (qemu, "-cpu", cpu) for cpu in cpus}}
    table: dict[str, dict[str, str]] = {}
    for name in envs:
        start = time.monotonic()
        with ThreadPoolExecutor(len(prefixes)) as pool:
            futures = {c: pool.submit(run_probe, name, "bits", p) for c, p in prefixes.items()}
            got = {column: future.result() for column, future in futures.items()}
        for column, digests in got.items():
            for route, digest in digests.items():
                key = f"{name} {route}" if route == "mkl" else route
                table.setdefault(key, {})[column] = digest
        print(f"# {name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    print("| route | " + " | ".join(prefixes) + " | identical? |")
    print("|---|" + "---|" * (len(prefixes) + 1))
    for key, row in table.items():
        same = "yes" if len(set(row.values())) == 1 else "**no**"
        print(f"| {key} | " + " | ".join(f"`{row[c]}`" for c in prefixes) + f" | {same} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["speed", "bits"], default="speed")
    parser.add_argument("rounds", nargs="?", type=int, default=5)
    parser.add_argument("--cpus", default="Haswell,EPYC", help="QEMU CPU models to emulate")
    parser.add_argument(
        "--envs", default=";".join(list(ENVS)[1:]), help="for bits: names, ;-separated"
    )
    parser.add_argument("--mlp-in", type=int, help="the MLP's input width (default 784)")
    parser.add_argument("--probe", nargs=2, metavar=("ENV", "WHAT"))
    args = parser.parse_args()
    if args.mlp_in:  # the probes (child processes) read it from the environment
        os.environ["GEMM_MLP_IN"] = str(args.mlp_in)
    if args.probe:
        env_name, what = args.probe
        print(json.dumps(probe(env_name, what)))
    elif args.command == "bits":
        main_bits(args.cpus.split(","), args.envs.split(";"))
    else:
        main_speed(args.rounds, ["native", *args.envs.split(";")])


if __name__ == "__main__":
    main()
