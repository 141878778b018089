"""dvc.yaml's `artifacts:` against params.yaml, for `reprolab check`: a model added to
params.yaml (one arch file and a params entry) trains without an artifact entry, but DVC's
model registry (GTO, Studio, `dvc artifacts get`) and tests/test_dag.py want one; this says
the exact lines to paste."""

from __future__ import annotations

from pathlib import Path

import yaml

from reprolab.core.schema import Params


def artifact_name(model: str) -> str:
    """DVC artifact names take lowercase letters, digits and dashes (tabular_mlp: tabular-mlp)."""
    return model.replace("_", "-")


def artifact_entry(params: Params, model: str) -> str:
    """The dvc.yaml lines (under `artifacts:`) that declare ``model``'s network."""
    group, kind, arch = params.group_of(model), params.kind_of(model), params.model(model).arch
    role = group.removesuffix("s")
    dataset = f"${{datasets.{kind}}}"
    return (
        f"  {artifact_name(model)}: {{path: models/{model}/model.pt, type: model, "
        f"desc: {arch} {role},\n"
        f'    labels: [{role}, "{dataset}"], meta: {{mlflow_model: "{dataset}-{model}"}}}}'
    )


def artifact_advice(params: Params, dvc_yaml: Path) -> list[str]:
    """One message per model of ``params`` without an artifact in ``dvc_yaml`` (with the lines
    to add) and per artifact of no model; [] when they match or there is no dvc.yaml."""
    if not dvc_yaml.is_file():
        return []
    declared = yaml.safe_load(dvc_yaml.read_text()).get("artifacts") or {}
    paths = {str(spec.get("path")): name for name, spec in declared.items()}
    models = params.all_models()
    advice = [
        f"{dvc_yaml}: {model} has no entry under `artifacts:` (DVC's model registry; "
        f"tests/test_dag.py checks it); add:\n{artifact_entry(params, model)}"
        for model in models
        if f"models/{model}/model.pt" not in paths
    ]
    advice += [
        f"{dvc_yaml}: artifact {name} ({path}) is no model of params.yaml (a preset that "
        "drops it is fine; else remove the entry)"
        for path, name in paths.items()
        if path not in {f"models/{m}/model.pt" for m in models}
    ]
    return advice
