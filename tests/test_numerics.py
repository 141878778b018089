"""Portability tests for core/numerics.py: real training subprocesses, one at a time (< 20 s)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from reprolab.core import cpuid, numerics
from reprolab.core.errors import ReprolabError

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "bench" / "numerics_probe.py"
KNOBS = tuple(numerics.PORTABLE_ENV)


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
HAS_AVX512 = "avx512f" in FLAGS

pytestmark = pytest.mark.skipif(
    not numerics.machine_supports_portable(),
    reason=f"portable numerics needs x86-64 with AVX2; this is {platform.machine()}",
)


def probe(ambient: dict[str, str], *argv: str) -> dict:
    """Run probe.py in a fresh interpreter with exactly ``ambient`` for the three knobs."""
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(ambient)
    env["PYTHONPATH"] = str(REPO / "src")
    cmd = [sys.executable, str(PROBE), "--steps", "15", "--models", "cnn,mlp", "--threads", "1"]
    out = subprocess.run(
        [*cmd, *argv], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE ") :])


@pytest.fixture(scope="module")
def portable_runs() -> dict[str, dict]:
    ambients = {
        "avx512": {
            "ATEN_CPU_CAPABILITY": "avx512",
            "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
            "MKL_CBWR": "AUTO",
        },
        "default": {"ATEN_CPU_CAPABILITY": "default"},
        "unset": {},
    }
    return {name: probe(amb, "--mode", "portable") for name, amb in ambients.items()}


def test_portable_overrides_ambient_env(portable_runs: dict[str, dict]) -> None:
    for name, r in portable_runs.items():
        assert r["cpu_capability"] == "AVX2", name
        assert r["env"] == {k: numerics.PORTABLE_ENV[k] for k in r["env"]}, name
        assert r["describe"]["numerics.portable_ok"] == "true", name


def test_portable_hash_independent_of_ambient_env(portable_runs: dict[str, dict]) -> None:
    hashes = {name: r["hash_all"] for name, r in portable_runs.items()}
    assert len(set(hashes.values())) == 1, hashes


def test_describe_is_flat_strings(portable_runs: dict[str, dict]) -> None:
    d = portable_runs["unset"]["describe"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
    for key in (
        "numerics.mode",
        "numerics.torch_version",
        "numerics.cpu_capability",
        "numerics.threads",
        "numerics.machine",
        "numerics.machine_supports_portable",
    ):
        assert key in d
    assert d["numerics.mode"] == "portable"
    assert d["numerics.threads"] == "1"


@pytest.mark.skipif(
    not HAS_AVX512,
    reason="no AVX-512 on this CPU: native == AVX2 path here, "
    "so native-vs-portable difference cannot be shown",
)
def test_native_avx512_differs_and_late_apply_raises(portable_runs: dict[str, dict]) -> None:
    r = probe({"ATEN_CPU_CAPABILITY": "avx512"}, "--mode", "native", "--try-late-portable")
    assert r["cpu_capability"] == "AVX512"
    assert r["describe"]["numerics.portable_ok"] == "false"
    assert r["hash_all"] != portable_runs["unset"]["hash_all"]
    # torch already imported with AVX512 kernels: apply("portable") must refuse
    err = r["late_portable_error"]
    assert err is not None and err.startswith("NumericsTooLateError")
    assert "before anything imports torch" in err


def test_apply_native_leaves_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    numerics.apply("native")
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx512"
    assert "MKL_CBWR" not in os.environ


def test_apply_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        numerics.apply("fast")


def test_too_late_error_is_one_line_for_the_cli() -> None:
    assert issubclass(numerics.NumericsTooLateError, ReprolabError)


def test_portable_refuses_packages_other_than_the_pinned_ones(tmp_path: Path) -> None:
    from importlib.metadata import version

    lock = tmp_path / "requirements.lock"
    torch_version = version("torch").split("+")[0]
    lock.write_text(f"numpy=={version('numpy')}\ntorch=={torch_version}\n")
    numerics.check_pins(lock)  # the installed ones: fine
    lock.write_text("torch==1.0.0\n")
    with pytest.raises(numerics.PinMismatchError, match=rf"torch {torch_version} is installed"):
        numerics.check_pins(lock)


PROBE_THREADS = """
import json, sys
from reprolab.core import cpuid, numerics
if sys.argv[1] == "late":
    import numpy  # loaded before the pin: threadpoolctl sets the live pool
numerics.pin_threads(3)
import numpy, sklearn.linear_model
from threadpoolctl import threadpool_info
print(json.dumps([[p["internal_api"], p["num_threads"]] for p in threadpool_info()]))
"""


@pytest.mark.parametrize("when", ["early", "late"])
def test_threads_pins_the_blas_under_numpy_whatever_the_environment(when: str) -> None:
    """The baselines' float sums split by the BLAS thread count: `threads` decides it, not
    the machine's cores or an OPENBLAS_NUM_THREADS the user had set."""
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE_THREADS, when],
        env=env | {"PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    pools = json.loads(out.stdout)  # numpy's OpenBLAS, scipy's own, OpenMP's...
    blas = [threads for api, threads in pools if api == "openblas"]
    assert len(blas) >= 2 and set(blas) == {3}, pools


def test_cpuid_reads_what_the_kernel_reports_natively() -> None:
    """Natively, CPUID (what an emulated CPU answers too) and /proc/cpuinfo agree on the
    vendor and every recorded flag; `model.json`'s portable CPU text names no CPU."""
    cpu = numerics.cpu_info()
    assert cpu.source == "cpuid"
    kernel = cpuid.read_proc_cpuinfo()
    assert (cpu.vendor, cpu.flags) == (kernel.vendor, kernel.flags)
    assert " ".join(numerics.PORTABLE_FEATURES) in numerics.provenance_cpu("portable")
    assert cpu.vendor not in numerics.provenance_cpu("portable")
    assert cpu.vendor in numerics.provenance_cpu("native")
