"""Numerics modes for CPU training: "portable" (same bits on x86-64 AVX2 CPUs; see caveats) or
"native" (fastest kernels the machine offers; bits depend on the CPU).

Portable mode caps every CPU kernel dispatcher torch uses to AVX2:

* ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``),
* oneDNN convolutions/pooling/batch-norm (``ONEDNN_MAX_CPU_ISA``),
* MKL BLAS for ``Linear``/``addmm`` (``MKL_CBWR``, conditional numerical reproducibility;
  COMPATIBLE branch, see :data:`PORTABLE_ENV`),
* OpenBLAS under numpy and scikit-learn (``OPENBLAS_CORETYPE``).

The caps are read when torch (and its libraries) initialise, so ``apply("portable")`` must run
before the first ``import torch`` in the process; it overrides whatever the user had set.

Same bits additionally need: same torch build (version + wheel), same thread count, same code
and data order. CUDA: learn.device.configure_backends sets deterministic algorithms and
CUBLAS_WORKSPACE_CONFIG; runs repeat on one GPU model only. ARM never matches x86-64 bits.

This module deliberately does not import torch at module level.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from reprolab.core.errors import ReprolabError

MODES: tuple[str, ...] = ("portable", "native")

#: Env caps that pin CPU float kernels for x86-64 CPUs with AVX2. ``MKL_CBWR`` is COMPATIBLE, not
#: AVX2: oneMKL honours the AVX2 branch only on Intel CPUs and silently falls back to its AUTO
#: branch on AMD (measured: MKL_VERBOSE prints CNR:AUTO), so AVX2 cannot give Intel == AMD bits.
#: COMPATIBLE is oneMKL's documented branch for "Intel and Intel-compatible" CPUs; it cost 20-28%
#: on GEMM-bound models (docs/reproducibility.md); AVX2 is the faster Intel-only value.
PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    # numpy/scipy's OpenBLAS (the scikit-learn baselines): its AVX2 kernel set.
    "OPENBLAS_CORETYPE": "Haswell",
}

_TRUE_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports when capped


class NumericsTooLateError(ReprolabError):
    """torch was imported before ``apply("portable")``, with kernels not capped to AVX2."""


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"numerics mode must be one of {MODES}, got {mode!r}")


def apply(mode: str) -> None:
    """Configure the process environment for ``mode`` ("portable" or "native").

    ``portable`` overwrites ``os.environ`` with :data:`PORTABLE_ENV` (user values such as
    ``ATEN_CPU_CAPABILITY=avx512`` are replaced, not kept). It must be called before torch is
    imported; if torch is already in ``sys.modules`` and its CPU capability is not AVX2, the
    caps can no longer take effect and :class:`NumericsTooLateError` is raised.
    ``native`` leaves the environment untouched.
    """
    _check_mode(mode)
    if mode == "native":
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        cap = torch.backends.cpu.get_cpu_capability()
        if cap != _TRUE_CAPABILITY:
            raise NumericsTooLateError(
                f"numerics mode 'portable' requested but torch is already imported with CPU "
                f"capability {cap!r} (need {_TRUE_CAPABILITY!r}); the kernel caps are read "
                f"only when torch loads. Call numerics.apply('portable') before anything "
                f"imports torch (first lines of the entry point), or start the process with "
                + " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items())
                + "."
            )
    os.environ.update(PORTABLE_ENV)


#: The thread pools under numpy, scipy and scikit-learn (OpenBLAS, MKL, OpenMP): their sums
#: split by thread count like torch's, and OpenBLAS would take every core of the machine.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_threads(threads: int) -> None:
    """Give the BLAS and OpenMP pools under numpy and scikit-learn ``threads`` threads (the
    ``threads`` param; torch's own pool is set by learn.device.seed_everything), so a
    baseline's bytes do not change with the machine's core count. Like :func:`apply`, it
    overrides the user's environment (read when numpy loads its BLAS), then sets the loaded
    pools with threadpoolctl: OpenBLAS caps an environment value at the machine's cores."""
    os.environ.update({name: str(threads) for name in THREAD_ENV})
    # Load the BLAS libraries whose pools are set next: numpy's, and scipy's own OpenBLAS
    # (scikit-learn's solvers call it), which would otherwise load later, capped at the cores.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def machine_supports_portable() -> bool:
    """True if this is an x86-64 CPU with AVX2 (the precondition of the portable promise)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx2" in line.split()
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:  # non-Linux fallback: ask torch what the CPU could do natively
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return False


def describe(mode: str) -> dict[str, str]:
    """Flat ``str -> str`` description of the numerics in force (for MLflow tags / JSON).

    Call after torch is imported. ``portable_ok`` is "true" only if the mode is portable, the
    machine is x86-64 with AVX2 and torch actually runs AVX2 kernels with all caps in force.
    """
    _check_mode(mode)
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    supported = machine_supports_portable()
    caps_in_force = all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())
    out = {
        "numerics.mode": mode,
        "numerics.torch_version": torch.__version__,
        "numerics.cpu_capability": cap,
        "numerics.threads": str(torch.get_num_threads()),
        "numerics.machine": platform.machine(),
        "numerics.machine_supports_portable": str(supported).lower(),
        "numerics.portable_ok": str(
            mode == "portable" and supported and caps_in_force and cap == _TRUE_CAPABILITY
        ).lower(),
    }
    for k in PORTABLE_ENV:
        out[f"numerics.env.{k}"] = os.environ.get(k, "")
    return out


class PinMismatchError(ReprolabError):
    """An installed package differs from its pin in requirements.lock."""


# What decides the bytes of an output: kernels and BLAS, the sampler, the FID and baseline
# solvers, image decoding and the report's PNGs, the baselines' file format.
PINNED = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-learn",
    "optuna",
    "pillow",
    "matplotlib",
    "skops",
)


def check_pins(lock_file: str | os.PathLike[str] = "requirements.lock") -> None:
    """Portable results hold only with the exact packages dvc.lock was made with: refuse to
    compute when an installed torch, torchvision, numpy or scikit-learn differs from its pin
    in ``lock_file`` (a DVC dep of every stage that computes, so a new pin reruns them)."""
    from importlib.metadata import PackageNotFoundError, version

    path = Path(lock_file)
    if not path.is_file():
        return
    pins = dict(
        line.split("==", 1)
        for line in path.read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    )
    for name in PINNED:
        pinned = pins.get(name, "").strip()
        try:
            installed = version(name).split("+")[0]
        except PackageNotFoundError:
            continue
        if pinned and installed != pinned:
            raise PinMismatchError(
                f"{name} {installed} is installed but {path} pins {pinned}: portable results "
                f"would not match dvc.lock; run `make install` (or pip install -c {path} -e .), "
                "or set numerics: native to compute with what is installed"
            )
