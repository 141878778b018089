"""`train` under torchrun: 2 CPU processes (gloo, DistributedDataParallel) give the result
of the single-process run to float32 summation-order noise; rank 0 alone writes and logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import clean_env, copy_repo, run, set_params, stages_run

from reprolab.learn.checkpoints import load_model

pytestmark = pytest.mark.slow

# Each rank computes the mean loss of half of every batch and DDP averages the two
# gradients: the same gradient as the whole batch's, summed in another order. float32
# rounding (~6e-8 relative per sum) compounds through ~60 Adam steps. Measured on 2 CPU
# cores: weights within 4.7e-7, curves equal to 6 digits (see the README); 1e-4 leaves
# room for other CPUs' kernels while a rank stepping on its half alone (no all-reduce)
# or on the whole batch trains on other gradients altogether.
RTOL = 1e-4


def outputs(repo: Path) -> dict:
    curves = (repo / "plots/curves/mlp.tsv").read_text().splitlines()
    rows = [dict(zip(curves[0].split("\t"), line.split("\t"), strict=True)) for line in curves[1:]]
    model, _ = load_model(repo / "models/mlp")
    return {
        "history": [{k: float(v) for k, v in row.items()} for row in rows],
        "train": json.loads((repo / "metrics/mlp/train.json").read_text()),
        "weights": model.state_dict(),
    }


def test_torchrun_two_processes_match_the_single_process_run(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    repo = copy_repo(tiny_pipeline["repo"], tmp_path / "repo")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    set_params(
        repo,
        {
            "threads": 1,  # 2 ranks on 2 cores
            # No dropout: each rank would draw its own masks, another random stream.
            # (classifiers.mlp changes, so tune@mlp reruns first: one trial is enough.)
            "classifiers": {"mlp": {"options": {"dropout": 0.0}, "budget": {"n_trials": 1}}},
            "train": {"launcher": "torchrun --standalone --nproc_per_node 2"},
        },
    )
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    versions = len(client.search_model_versions("name = 'digits-mlp'"))

    result = run(["dvc", "repro", "train@mlp"], repo)  # the stage starts torchrun itself
    assert stages_run(result.stdout)[-1] == "train@mlp"
    assert "torchrun --standalone --nproc_per_node 2 stages/train.py mlp" in result.stdout
    assert result.stdout.count("train@mlp: val") == 1  # rank 0 alone reports
    assert len(client.search_model_versions("name = 'digits-mlp'")) == versions + 1
    ddp = outputs(repo)

    single = subprocess.run(
        [sys.executable, "stages/train.py", "mlp"],
        cwd=repo,
        env=clean_env(PYTHONPATH="src"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = outputs(repo)

    assert ddp["train"]["train"]["best_epoch"] == one["train"]["train"]["best_epoch"]
    assert len(ddp["history"]) == len(one["history"])
    for a, b in zip(ddp["history"], one["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=RTOL), (key, a, b)
    for name, tensor in one["weights"].items():
        torch.testing.assert_close(ddp["weights"][name], tensor, rtol=RTOL, atol=RTOL)
