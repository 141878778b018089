"""Numerics modes for CPU training: "portable" (same bits on x86-64 AVX2 CPUs; see caveats) or
"native" (fastest kernels the machine offers; bits depend on the CPU).

Portable mode caps every CPU kernel dispatcher torch uses to AVX2:

* ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``),
* oneDNN convolutions/pooling/batch-norm (``ONEDNN_MAX_CPU_ISA``),
* MKL BLAS for ``Linear``/``addmm`` (``MKL_CBWR``, conditional numerical reproducibility;
  COMPATIBLE branch, see :data:`PORTABLE_ENV`),
* OpenBLAS under numpy and scikit-learn (``OPENBLAS_CORETYPE``),
* numpy's own SIMD loops (``NPY_DISABLE_CPU_FEATURES``: its AVX-512 float64 log1p, expm1,
  exp and log give other bits than its AVX2 ones; only its baseline loops run).

Portable mode needs the x86-64-v3 features those capped kernels run (:data:`PORTABLE_FEATURES`);
on a CPU without them it refuses in one line (an AVX2 kernel there is an illegal instruction,
exit 132 with no message). The CPU is read with the CPUID instruction itself
(:func:`cpu_info`), not ``/proc/cpuinfo``: under an emulator (QEMU user mode) the file shows the
host's flags while the code runs on the emulated CPU.

A cap cannot fix an op whose kernel uses an *approximate* instruction (RSQRTPS, RCPPS: their
bits differ between CPU implementations): ATen's float ``sqrt`` runs oneMKL VML, whose kernel
seeds from RSQRTPS. The pipeline's losses use an exactly rounded form instead
(learn/objectives.py); bench/approx_ops.py finds such ops (docs/reproducibility.md).

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

from reprolab.core import cpuid
from reprolab.core.cpuid import cpu_info
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
    # numpy's dispatched loops: none, its baseline (SSE4.2) loops only (numpy 2.4's target
    # names; an absent one is ignored). Its AVX-512 float64 log1p, expm1, exp and log give
    # other bits than its AVX2 ones; its AVX2 argsort (x86-simd-sort: other orders of ties
    # than the scalar one) is what QEMU 7.2 emulates wrongly, so the emulated-CPU check
    # (tests/test_cpus.py) can only run baseline loops. Float64 math then calls libm, as
    # numpy's AVX2 build does; numpy does little of the pipeline's work (BLAS is OpenBLAS).
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}

_NUMPY_TARGETS = tuple(PORTABLE_ENV["NPY_DISABLE_CPU_FEATURES"].split())

#: What the capped kernels run: torch's AVX2 ATen kernels and MKL, oneDNN's AVX2 JIT,
#: OpenBLAS's Haswell kernels and numpy's X86_V3 loops (AVX2 with FMA, F16C, BMI1/2).
PORTABLE_FEATURES: tuple[str, ...] = ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2")


_TRUE_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports when capped


class NumericsTooLateError(ReprolabError):
    """torch was imported before ``apply("portable")``, with kernels not capped to AVX2."""


class PortableUnsupportedError(ReprolabError):
    """This CPU lacks a feature the portable kernels need (or is not x86-64)."""


def portable_missing() -> list[str]:
    """What keeps this machine from portable numerics: "x86-64" or the missing features."""
    if not cpuid.is_x86_64():
        return ["x86-64"]
    flags = cpu_info().flags
    return [f for f in PORTABLE_FEATURES if f not in flags]


def require_portable() -> None:
    """One line, not an illegal instruction, where portable numerics cannot run."""
    missing = portable_missing()
    if not missing:
        return
    lacks = "is not x86-64" if missing == ["x86-64"] else f"lacks {', '.join(missing)}"
    raise PortableUnsupportedError(
        f"numerics: portable needs an x86-64 CPU with {', '.join(PORTABLE_FEATURES)} (the "
        f"kernels whose bits match on every such CPU); this one ({cpu_info().name}) {lacks}. "
        "Set `numerics: native` in params.yaml: results then hold on this kind of CPU only "
        "and will not match the committed dvc.lock"
    )


def require_cpu_for(mode: str) -> None:
    """:func:`require_portable` where ``mode`` is portable (`reprolab check`)."""
    if mode == "portable":
        require_portable()


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"numerics mode must be one of {MODES}, got {mode!r}")


def apply(mode: str) -> None:
    """Configure the process environment for ``mode`` ("portable" or "native").

    ``portable`` overwrites ``os.environ`` with :data:`PORTABLE_ENV` (user values such as
    ``ATEN_CPU_CAPABILITY=avx512`` are replaced, not kept). It must be called before torch is
    imported; if torch is already in ``sys.modules`` and its CPU capability is not AVX2, the
    caps can no longer take effect and :class:`NumericsTooLateError` is raised.
    ``native`` leaves the environment untouched. On a CPU the portable kernels cannot run on,
    :class:`PortableUnsupportedError` is raised, naming the missing feature.
    """
    _check_mode(mode)
    if mode == "native":
        return
    require_portable()
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
    if _numpy_dispatching():
        raise NumericsTooLateError(
            "numerics mode 'portable' requested but numpy is already imported with its "
            "AVX2/AVX-512 loops enabled; call numerics.apply('portable') before anything imports "
            "numpy, or start the process with "
            f"NPY_DISABLE_CPU_FEATURES='{PORTABLE_ENV['NPY_DISABLE_CPU_FEATURES']}'."
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
    """True if this is an x86-64 CPU with every :data:`PORTABLE_FEATURES` (the precondition
    of the portable promise)."""
    return not portable_missing()


def _numpy_dispatching() -> bool:
    """True if numpy is loaded with any of its dispatched SIMD targets (AVX2, AVX-512)
    enabled: the cap was not in force when it loaded."""
    if "numpy" not in sys.modules:
        return False
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # another numpy layout: nothing to check
        return False
    return any(__cpu_features__.get(f) for f in _NUMPY_TARGETS)


def provenance_cpu(mode: str) -> str:
    """The CPU a DVC-tracked output records: in portable mode the class of CPUs whose bits it
    holds (the same text on every such CPU, so the file's bytes are too); in native mode this
    CPU (vendor, model, flags), the only kind whose bits it holds. The exact CPU of every run
    is in its MLflow tags (:func:`describe`)."""
    _check_mode(mode)
    if mode == "portable":
        return f"any x86-64 with {' '.join(PORTABLE_FEATURES)} (portable)"
    cpu = cpu_info()
    return f"{cpu.name} ({cpu.flag_text or 'no recorded flags'}; native)"


def describe(mode: str) -> dict[str, str]:
    """Flat ``str -> str`` description of the numerics in force (for MLflow tags / JSON).

    Call after torch is imported. ``portable_ok`` is "true" only if the mode is portable, the
    CPU has every :data:`PORTABLE_FEATURES`, torch actually runs AVX2 kernels with all caps in
    force, and numpy's dispatched (AVX2, AVX-512) loops are off. The CPU (vendor, model, the
    flags that pick kernels, and how they were read) is recorded beside it.
    """
    _check_mode(mode)
    import numpy  # noqa: F401  (its enabled loops are part of the answer)
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    supported = machine_supports_portable()
    caps_in_force = all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())
    numpy_capped = not _numpy_dispatching()
    cpu = cpu_info()
    out = {
        "numerics.mode": mode,
        "numerics.torch_version": torch.__version__,
        "numerics.cpu_capability": cap,
        "numerics.threads": str(torch.get_num_threads()),
        "numerics.machine": platform.machine(),
        "numerics.machine_supports_portable": str(supported).lower(),
        "numerics.cpu_vendor": cpu.vendor,
        "numerics.cpu_model": cpu.model,
        "numerics.cpu_flags": cpu.flag_text,
        "numerics.cpu_read_from": cpu.source,
        "numerics.numpy_simd_dispatch": str(not numpy_capped).lower(),
        "numerics.portable_ok": str(
            mode == "portable"
            and supported
            and caps_in_force
            and cap == _TRUE_CAPABILITY
            and numpy_capped
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
