"""Numerics modes for CPU training: "portable" (same bits on x86-64 AVX2 CPUs; see caveats) or
"native" (fastest kernels the machine offers; bits depend on the CPU).

Portable mode caps every CPU kernel dispatcher torch uses to AVX2:

* ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``),
* oneDNN convolutions/pooling/batch-norm (``ONEDNN_MAX_CPU_ISA``),
* MKL BLAS for ``Linear``/``addmm`` (``MKL_CBWR``, conditional numerical reproducibility;
  COMPATIBLE branch, see :data:`PORTABLE_ENV`),
* OpenBLAS under numpy and scikit-learn (``OPENBLAS_CORETYPE``),
* numpy's own SIMD loops (``NPY_DISABLE_CPU_FEATURES``: its AVX-512 float64 log1p, expm1,
  exp and log give other bits than its AVX2 ones).

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

import ctypes
import functools
import mmap
import os
import platform
import sys
from dataclasses import dataclass
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
    # numpy's dispatched loops: X86_V3 (AVX2, FMA) at most; its AVX-512 targets are named
    # (numpy 2.4's names; an unknown or absent one is ignored, e.g. on an AVX2-only CPU).
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}

#: What the capped kernels run: torch's AVX2 ATen kernels and MKL, oneDNN's AVX2 JIT,
#: OpenBLAS's Haswell kernels and numpy's X86_V3 loops (AVX2 with FMA, F16C, BMI1/2).
PORTABLE_FEATURES: tuple[str, ...] = ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2")

#: The flags recorded with a run (MLflow tags): the ones that pick kernels, or would.
RECORDED_FLAGS: tuple[str, ...] = (
    *PORTABLE_FEATURES,
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
)

_TRUE_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports when capped


class NumericsTooLateError(ReprolabError):
    """torch was imported before ``apply("portable")``, with kernels not capped to AVX2."""


class PortableUnsupportedError(ReprolabError):
    """This CPU lacks a feature the portable kernels need (or is not x86-64)."""


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # "GenuineIntel", "AuthenticAMD"
    model: str  # the brand string: "AMD EPYC 7763 64-Core Processor"
    flags: frozenset[str]  # of RECORDED_FLAGS, usable (the OS saves their registers)
    source: str  # "cpuid" (the instruction), "/proc/cpuinfo" or "none"


# CPUID leaf -> (register, bit, flag). Leaf 1 ECX and leaf 7 (subleaf 0) EBX/ECX/EDX.
_CPUID_FLAGS = (
    (1, 2, 12, "fma"),
    (1, 2, 28, "avx"),
    (1, 2, 29, "f16c"),
    (7, 1, 3, "bmi1"),
    (7, 1, 5, "avx2"),
    (7, 1, 8, "bmi2"),
    (7, 1, 16, "avx512f"),
    (7, 1, 30, "avx512bw"),
    (7, 1, 31, "avx512vl"),
    (7, 2, 11, "avx512_vnni"),
    (7, 3, 23, "avx512_fp16"),
    (7, 3, 24, "amx_tile"),
)
_YMM_FLAGS = frozenset({"fma", "avx", "f16c", "avx2"})  # need XCR0 bits 1-2 (SSE, AVX state)
_ZMM_FLAGS = frozenset(f for f in RECORDED_FLAGS if f.startswith("avx512"))  # bits 5-7 too

# x86-64 machine code (System V ABI), run through ctypes from an executable page:
# cpuid(leaf=edi, subleaf=esi, out=rdx) stores eax, ebx, ecx, edx at out[0..3];
# xgetbv0() returns XCR0 (which register states the OS saves).
_CPUID_CODE = bytes.fromhex("5389f889f14989d00fa241890041895804418948084189500c5bc3")
_XGETBV_CODE = bytes.fromhex("31c90f01d048c1e2204809d0c3")


def _read_cpuid() -> CpuInfo:
    """Ask the CPU itself. Raises OSError where executable memory is refused (W^X policy)."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CPUID_CODE + _XGETBV_CODE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(base)
    xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64)(base + len(_CPUID_CODE))

    def call(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint32 * 4)()
        cpuid(leaf, subleaf, ctypes.addressof(out))
        return tuple(out)  # type: ignore[return-value]

    top, ebx, ecx, edx = call(0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode("ascii", "replace")
    regs = {1: call(1), 7: call(7) if top >= 7 else (0, 0, 0, 0)}
    flags = {name for leaf, reg, bit, name in _CPUID_FLAGS if regs[leaf][reg] >> bit & 1}
    osxsave = regs[1][2] >> 27 & 1
    xcr0 = xgetbv() if osxsave else 0
    if xcr0 & 0b110 != 0b110:
        flags -= _YMM_FLAGS | _ZMM_FLAGS
    elif xcr0 & 0b11100110 != 0b11100110:
        flags -= _ZMM_FLAGS
    if regs[7][1] >> 16 & 1 and call(7, 1)[0] >> 5 & 1:  # leaf 7.1 EAX bit 5
        flags.add("avx512_bf16")
    model = ""
    if call(0x80000000)[0] >= 0x80000004:
        raw = b"".join(
            r.to_bytes(4, "little") for leaf in range(0x80000002, 0x80000005) for r in call(leaf)
        )
        model = " ".join(raw.rstrip(b"\0").decode("ascii", "replace").split())
    page.close()
    return CpuInfo(vendor, model, frozenset(flags), "cpuid")


def _read_proc_cpuinfo() -> CpuInfo:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if not line.strip():
                break  # the first processor is enough
            fields.setdefault(key.strip(), value.strip())
    linux = set(fields.get("flags", "").split())
    flags = {f for f in RECORDED_FLAGS if f in linux} | ({"bmi1"} if "bmi1" in linux else set())
    return CpuInfo(
        fields.get("vendor_id", ""), fields.get("model name", ""), frozenset(flags), "/proc/cpuinfo"
    )


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU: vendor, model and the flags that pick kernels, from the CPUID instruction (so
    an emulated CPU reports itself), else /proc/cpuinfo (the host's, under an emulator)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return CpuInfo("", platform.processor() or platform.machine(), frozenset(), "none")
    try:
        return _read_cpuid()
    except (OSError, ValueError, AttributeError):
        try:
            return _read_proc_cpuinfo()
        except OSError:
            return CpuInfo("", "", frozenset(), "none")


def portable_missing() -> list[str]:
    """What keeps this machine from portable numerics: "x86-64" or the missing features."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["x86-64"]
    flags = cpu_info().flags
    return [f for f in PORTABLE_FEATURES if f not in flags]


def require_portable() -> None:
    """One line, not an illegal instruction, where portable numerics cannot run."""
    missing = portable_missing()
    if not missing:
        return
    cpu = cpu_info()
    name = " ".join(p for p in (cpu.vendor, cpu.model) if p) or platform.machine()
    lacks = "is not x86-64" if missing == ["x86-64"] else f"lacks {', '.join(missing)}"
    raise PortableUnsupportedError(
        f"numerics: portable needs an x86-64 CPU with {', '.join(PORTABLE_FEATURES)} (the "
        f"kernels whose bits match on every such CPU); this one ({name}) {lacks}. "
        "Set `numerics: native` in params.yaml: results then hold on this kind of CPU only "
        "and will not match the committed dvc.lock"
    )


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
    numpy_features = _numpy_features()
    if numpy_features.get("X86_V4") or numpy_features.get("AVX512_ICL"):
        raise NumericsTooLateError(
            "numerics mode 'portable' requested but numpy is already imported with its "
            "AVX-512 loops enabled; call numerics.apply('portable') before anything imports "
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


def _numpy_features() -> dict[str, bool]:
    """numpy's detected-and-enabled CPU features, if numpy is loaded (a disabled one is False)."""
    if "numpy" not in sys.modules:
        return {}
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # another numpy layout: nothing to check
        return {}
    return dict(__cpu_features__)


def provenance_cpu(mode: str) -> str:
    """The CPU a DVC-tracked output records: in portable mode the class of CPUs whose bits it
    holds (the same text on every such CPU, so the file's bytes are too); in native mode this
    CPU (vendor, model, flags), the only kind whose bits it holds. The exact CPU of every run
    is in its MLflow tags (:func:`describe`)."""
    _check_mode(mode)
    if mode == "portable":
        return f"any x86-64 with {' '.join(PORTABLE_FEATURES)} (portable)"
    cpu = cpu_info()
    flags = " ".join(f for f in RECORDED_FLAGS if f in cpu.flags)
    name = " ".join(p for p in (cpu.vendor, cpu.model) if p) or platform.machine()
    return f"{name} ({flags or 'no recorded flags'}; native)"


def describe(mode: str) -> dict[str, str]:
    """Flat ``str -> str`` description of the numerics in force (for MLflow tags / JSON).

    Call after torch is imported. ``portable_ok`` is "true" only if the mode is portable, the
    CPU has every :data:`PORTABLE_FEATURES`, torch actually runs AVX2 kernels with all caps in
    force, and numpy's AVX-512 loops are off. The CPU (vendor, model, the flags that pick
    kernels, and how they were read) is recorded beside it.
    """
    _check_mode(mode)
    import numpy  # noqa: F401  (its enabled loops are part of the answer)
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    supported = machine_supports_portable()
    caps_in_force = all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())
    npy = _numpy_features()
    numpy_capped = not any(npy.get(f) for f in ("X86_V4", "AVX512_ICL", "AVX512_SPR"))
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
        "numerics.cpu_flags": " ".join(f for f in RECORDED_FLAGS if f in cpu.flags),
        "numerics.cpu_read_from": cpu.source,
        "numerics.numpy_avx512": str(not numpy_capped).lower(),
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
