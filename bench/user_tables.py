"""The tabular MLP beside the scikit-learn baselines on real tables given as a user's own
(`datasets.tabular: csv`), with the shipped params.yaml's budgets.

Each table is one of scikit-learn's bundled files written as a headed CSV under
data/own/tabular/ of a fresh copy of this checkout; the real pipeline runs
`dvc repro evaluate_regressor@tabular_mlp evaluate_baselines@tabular` there (download, split,
baselines, tune, train and evaluate) and the test metrics are printed. Not a test: minutes.

    python bench/user_tables.py                # wine, breast cancer (classes), diabetes,
                                               # triglycerides (a signed target: RMSE)
    python bench/user_tables.py --table wine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).parents[1] / "tests")]
from accuracy import REPO, fresh_copy, repro  # noqa: E402
from test_user_tables import diabetes_table, sklearn_table  # noqa: E402  (the tests' tables)


def wine(dest: Path) -> dict:
    """178 wines, 13 measurements, 3 cultivars (class_0..2) to classify."""
    sklearn_table("wine_data.csv", dest, target="cultivar")
    return {"target": "cultivar", "metric": "accuracy"}


def breast_cancer(dest: Path) -> dict:
    """569 tumours, 30 measurements, malignant or benign."""
    sklearn_table("breast_cancer.csv", dest, target="diagnosis")
    return {"target": "diagnosis", "metric": "accuracy"}


def diabetes(dest: Path) -> dict:
    """442 patients, 10 features (sex as words), disease progression to regress."""
    diabetes_table(dest)
    return {"target": "progression", "metric": "rmsle"}


def triglycerides(dest: Path) -> dict:
    """442 patients: the diabetes table as ``load_diabetes(scaled=True)`` gives it (every
    measurement mean-centred and scaled), to regress s5 (log serum triglycerides, centred:
    about half of it below zero, so RMSE on its own scale) from the nine others and the
    disease progression."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(scaled=True, as_frame=True).frame
    frame.rename(columns={"target": "progression"}).to_csv(dest, index=False)
    return {"target": "s5", "metric": "rmse"}


TABLES = {
    "wine": wine,
    "breast_cancer": breast_cancer,
    "diabetes": diabetes,
    "triglycerides": triglycerides,
}


def run_table(name: str, root: Path) -> dict:
    workspace = fresh_copy(root / name)
    table = workspace / "data" / "own" / "tabular" / f"{name}.csv"
    about = TABLES[name](table)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["datasets"]["tabular"] = "csv"
    params["csv"] |= {"path": table.relative_to(workspace).as_posix(), "target": about["target"]}
    params["baselines"]["tabular"] = ["ridge", "logistic_regression", "rbf_svm"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    targets = ["evaluate_regressor@tabular_mlp", "evaluate_baselines@tabular"]
    times = repro(workspace, targets, root / f"{name}.log")
    metric = about["metric"]
    models = {"tabular_mlp": json.loads((workspace / "metrics/tabular_mlp/test.json").read_text())}
    models |= json.loads((workspace / "metrics/baselines/tabular/test.json").read_text())
    meta = json.loads((workspace / "data/splits/tabular/meta.json").read_text())
    return {
        "table": name,
        "task": meta["task"],
        "sizes": meta["sizes"],
        "constant_guess_val": meta["trivial_val"],  # the bar any model must clear
        "metric": metric,
        "models": {m: v[metric] for m, v in models.items()},
        "stage_seconds": times,
        "total_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "user_tables"))
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    results = [run_table(name, root) for name in args.table]
    print(f"\n{'table':<10} {'task':<15} {'model':<20} {'test':>12}")
    for r in results:
        for model, value in r["models"].items():
            print(f"{r['table']:<10} {r['task']:<15} {model:<20} {r['metric']:>6} {value:.4f}")
        print(f"{r['table']:<10} sizes {r['sizes']}, all stages {r['total_seconds']:.1f} s")
        print(f"{r['table']:<10} a constant guess scores {r['constant_guess_val']} on val")
    (root / "user_tables.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
