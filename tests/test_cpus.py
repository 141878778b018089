"""The same bits on other CPUs, checked under QEMU user mode (Debian's qemu-user).

`qemu-x86_64 -cpu MODEL python ...` runs this project's Python on an emulated CPU: its CPUID
(vendor, model, flags) is the emulated one, so MKL, oneDNN, ATen and numpy pick their kernels
for it, and it computes the approximate instructions (RSQRTPS, RCPPS) exactly. An output that
matches tests/golden/ natively and under an emulated Intel and AMD CPU depends on no CPU model.

`make test-cpus` (REPROLAB_TEST_CPUS=1; .ci/run runs it after `make test`), about 20 minutes
on 2 cores: a CPU without AVX2 gets one line from a stage and `reprolab check` (an emulated
Nehalem); two training steps of every architecture family, and the tiny pipeline's computing
stages (baselines, a tune stage, train and evaluate of each model), rerun under an emulated
Haswell and EPYC and compared with tests/golden/tiny_outputs.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BIN, GOLDEN, REPO, copy_repo, output_hashes, run

from reprolab.core import numerics

QEMU = shutil.which("qemu-x86_64")
EMULATED = ("Haswell", "EPYC")  # an Intel and an AMD model, both AVX2 + FMA (no AVX-512)
FULL = os.environ.get("REPROLAB_TEST_CPUS") == "1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates x86-64 CPUs"),
    pytest.mark.skipif(
        QEMU is None, reason="qemu-x86_64 is not installed (apt-get install qemu-user)"
    ),
]
full = pytest.mark.skipif(
    not FULL, reason="the emulated-CPU check runs with `make test-cpus` (REPROLAB_TEST_CPUS=1)"
)

# The tiny pipeline's stages that compute floats: the baselines (scikit-learn, OpenBLAS), a tune
# stage (Optuna's sampler, trials), and train and evaluate of an MLP, a CNN (LeNet), the tabular
# regressor and the GAN (its FID: numpy's eigh). The splits and the report compute no float.
EMULATED_STAGES = (
    "baselines@image",
    "baselines@tabular",
    "evaluate_baselines@tabular",
    "tune@mlp",
    "train@lenet",
    "evaluate@lenet",
    "train_regressor@tabular_mlp",
    "evaluate_regressor@tabular_mlp",
    "train_generator@dcgan",
    "evaluate_generator@dcgan",
)


def emulated_python(folder: Path, cpu: str) -> Path:
    """A folder whose `python` is this venv's python under ``qemu-x86_64 -cpu cpu``: put it
    first on PATH and `dvc repro` runs every stage on the emulated CPU (DVC itself natively)."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {QEMU} -cpu {cpu} {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return folder


def without_qemu_notes(stderr: str) -> list[str]:
    """stderr's lines less QEMU's own ("TCG doesn't support requested feature ...")."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("qemu-x86_64:")]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@full
def test_a_cpu_without_avx2_gets_one_line_not_an_illegal_instruction(workspace: Path) -> None:
    """An emulated Nehalem (SSE4.2, no AVX): the first stage and `reprolab check` name the
    missing features and the choice; /proc/cpuinfo would show the host's AVX2 here, CPUID
    does not. With `numerics: native` the check passes."""
    # A user's shell: none of the caps this test process set (OpenBLAS's Haswell kernels would
    # be an illegal instruction on this CPU whatever reprolab does).
    env = {"PYTHONPATH": str(REPO / "src"), **dict.fromkeys(numerics.PORTABLE_ENV, "")}
    nehalem = [QEMU, "-cpu", "Nehalem", sys.executable]
    for cmd in (
        [*nehalem, str(REPO / "stages/download.py"), "image"],
        [*nehalem, "-m", "reprolab.cli", "check"],
    ):
        result = run(cmd, workspace, check=False, **env)
        lines = without_qemu_notes(result.stderr)
        assert result.returncode == 1, result.stderr[-2000:]
        assert len(lines) == 1, lines
        assert "Nehalem" in lines[0] and "lacks avx, avx2, fma, f16c, bmi1, bmi2" in lines[0]
        assert "Set `numerics: native`" in lines[0]
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    (workspace / "params.yaml").write_text(yaml.safe_dump(params | {"numerics": "native"}))
    result = run([*nehalem, "-m", "reprolab.cli", "check"], workspace, **env)
    assert "params.yaml: valid" in result.stdout


@full
def test_every_architecture_trains_to_the_same_bits_on_emulated_intel_and_amd(
    workspace: Path,
) -> None:
    """Two steps of every classifier and regressor of params.yaml (MLP, LeNet, CNN, AlexNet,
    ResNet18, the tabular MLP) with the pipeline's builder, loss and fused optimizer."""
    probe = [str(REPO / "tests/emulated_probe.py"), "params.yaml"]
    env = {"PYTHONPATH": str(REPO / "src")}
    native = json.loads(run([sys.executable, *probe], workspace, **env).stdout)
    assert set(native) == {"mlp", "lenet", "cnn", "alexnet", "resnet18", "tabular_mlp"}
    for cpu in EMULATED:
        emulated = run([QEMU, "-cpu", cpu, sys.executable, *probe], workspace, **env)
        emulated = json.loads(emulated.stdout)
        differ = sorted(m for m in native if emulated[m] != native[m])
        assert not differ, f"emulated {cpu}: other weights than native for {differ}"


@full
@pytest.mark.parametrize("cpu", EMULATED)
def test_the_pipelines_computing_stages_match_the_golden_file_on_an_emulated_cpu(
    tiny_pipeline: dict, tmp_path: Path, cpu: str
) -> None:
    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    wrapper = emulated_python(tmp_path / "bin", cpu)
    path = os.pathsep.join([str(wrapper), str(BIN), os.environ["PATH"]])
    for stage in EMULATED_STAGES:  # in order: evaluate reads what train wrote just before
        for rel in output_hashes(repo, {stage}):  # the native outputs go: none is left over
            target = repo / rel
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        run(["dvc", "repro", "--force", "--single-item", stage], repo, PATH=path)
    golden = json.loads(GOLDEN.read_text())
    hashes = output_hashes(repo, set(EMULATED_STAGES))
    assert len(hashes) >= 2 * len(EMULATED_STAGES) - 1
    differ = {p: (golden.get(p), h) for p, h in hashes.items() if golden.get(p) != h}
    assert not differ, f"emulated {cpu}: outputs whose bits differ from the golden file: {differ}"
    # The runs recorded the emulated CPU (CPUID), not the host's /proc/cpuinfo: the model runs
    # the emulated train and evaluate stages logged to last.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    cpus = {
        r.info.run_name.split("@")[0]: r.data.tags["reprolab.numerics.cpu_model"]
        for r in runs
        if "@" in r.info.run_name
    }
    for model in ("lenet", "tabular_mlp", "dcgan"):
        assert cpu.lower() in cpus[model].lower(), (model, cpus[model])
