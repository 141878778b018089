"""What this CPU is: vendor, model and the flags that pick float kernels, read with the CPUID
instruction itself (a few bytes of machine code run through ctypes), so that under an emulator
(QEMU user mode) the emulated CPU answers; ``/proc/cpuinfo`` (the host's, under QEMU) only
where executable memory is refused. core/numerics.py decides what the flags allow."""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
from dataclasses import dataclass

#: The flags read: x86-64-v3's (what the portable kernels run) and the wider ones that would
#: pick other kernels.
FLAGS: tuple[str, ...] = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
)


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # "GenuineIntel", "AuthenticAMD"
    model: str  # the brand string: "AMD EPYC 7763 64-Core Processor"
    flags: frozenset[str]  # of FLAGS, usable (the OS saves their registers)
    source: str  # "cpuid" (the instruction), "/proc/cpuinfo" or "none"

    @property
    def name(self) -> str:
        """ "GenuineIntel Intel Core Processor (Haswell)"; the machine type if unknown."""
        return " ".join(p for p in (self.vendor, self.model) if p) or platform.machine()

    @property
    def flag_text(self) -> str:
        """Its flags in :data:`FLAGS` order, space-separated ("" for none)."""
        return " ".join(f for f in FLAGS if f in self.flags)


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


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
_ZMM_FLAGS = frozenset(f for f in FLAGS if f.startswith("avx512"))  # bits 5-7 too

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


def read_proc_cpuinfo() -> CpuInfo:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if not line.strip():
                break  # the first processor is enough
            fields.setdefault(key.strip(), value.strip())
    linux = set(fields.get("flags", "").split())
    flags = {f for f in FLAGS if f in linux}
    return CpuInfo(
        fields.get("vendor_id", ""), fields.get("model name", ""), frozenset(flags), "/proc/cpuinfo"
    )


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU: vendor, model and the flags that pick kernels, from the CPUID instruction (so
    an emulated CPU reports itself), else /proc/cpuinfo (the host's, under an emulator)."""
    if not is_x86_64():
        return CpuInfo("", platform.processor() or platform.machine(), frozenset(), "none")
    try:
        return _read_cpuid()
    except (OSError, ValueError, AttributeError):
        try:
            return read_proc_cpuinfo()
        except OSError:
            return CpuInfo("", "", frozenset(), "none")
