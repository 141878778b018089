"""Where the lines of dvc.lock go, and the fewest lines any lock of this pipeline can have.

DVC writes its lock in block-style YAML (``default_flow_style = False`` in DVC's
``utils/serialize/_yaml.py``): each params leaf is a line, each file dependency or output 4
lines (path, hash, md5, size) and each folder 5 (nfiles too). This script sorts the lines of
a lock by what they record, then adds up a floor: the lines a lock must keep if every stage
still lists its script, its arch file, the data it reads, the outputs it writes and its
model's own params (once, on the stage that first reads them), plus ``--folders`` library
folders per stage, and nothing else: no shared param (seed, tune, train, device...) and no
environment file. A goal below the floor cannot be met with these stages.

    python bench/lock_size.py                   # the committed dvc.lock
    python bench/lock_size.py --lock other/dvc.lock --folders 1 --one-out-folder
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import yaml

GROUPS = ("classifiers", "regressors", "generators")
LIB = "src/reprolab/"


def lines(obj) -> int:
    return yaml.safe_dump(obj, default_flow_style=False, width=10**6).count("\n")


def dep_kind(path: str) -> str:
    if path.startswith(LIB + "models/") and not path.endswith("_base.py"):
        return "arch file"
    if path.startswith(LIB):
        return "library folder or shared module"
    if path.startswith("stages/"):
        return "stage script"
    if path == "requirements.lock":
        return "environment"
    return "data and upstream outputs"


def own_params(stage: str, params: dict) -> dict:
    """The params only this stage's model or dataset owns, kept where they are first read."""
    if stage.startswith(("download", "split")):
        return {k: v for k, v in params.items() if k.startswith("datasets.")}
    if stage.startswith("tune"):
        return {k: v for k, v in params.items() if k.split(".")[0] in GROUPS}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--folders", type=int, default=2, help="library folders per stage")
    parser.add_argument(
        "--one-out-folder",
        action="store_true",
        help="count each stage's outputs as one folder (5 lines), as if every stage wrote one",
    )
    args = parser.parse_args()
    text = args.lock.read_text()
    stages = yaml.safe_load(text)["stages"]
    by_kind: Counter[str] = Counter()
    floor = 1  # the schema line
    for name, stage in stages.items():
        by_kind["stage name and cmd"] += lines({name: {"cmd": stage["cmd"]}})
        for dep in stage.get("deps", []):
            by_kind[f"deps: {dep_kind(dep['path'])}"] += lines([dep])
        params = stage.get("params", {}).get("params.yaml", {})
        for key, value in params.items():
            owner = "own model or dataset" if key in own_params(name, params) else "shared"
            by_kind[f"params: {owner}"] += lines({key: value})
        by_kind["outs"] += lines(stage.get("outs", []))
        by_kind["section keys (deps:, params:, outs:)"] += sum(
            k in stage for k in ("deps", "outs")
        ) + 2 * bool(params)
        kept = {
            "cmd": stage["cmd"],
            "deps": [
                d
                for d in stage.get("deps", [])
                if dep_kind(d["path"]) in ("arch file", "stage script", "data and upstream outputs")
            ],
            "outs": stage.get("outs", [])[: 1 if args.one_out_folder else None],
        }
        if own_params(name, params):
            kept["params"] = {"params.yaml": own_params(name, params)}
        floor += lines({name: kept}) + 5 * args.folders  # a folder dependency is 5 lines
        if args.one_out_folder and kept["outs"] and "nfiles" not in kept["outs"][0]:
            floor += 1  # a folder output records nfiles too
    total = text.count("\n")
    print(f"{args.lock}: {total} lines, {len(stages)} stages")
    for kind, n in by_kind.most_common():
        print(f"  {n:5d}  {kind}")
    print(f"  {total - sum(by_kind.values()):5d}  schema line")
    outputs = "one output folder a stage" if args.one_out_folder else "outputs"
    print(
        f"floor: {floor} lines (script, arch file, data, {outputs}, each model's own params "
        f"once, {args.folders} library folders a stage; no shared param, no environment file)"
    )


if __name__ == "__main__":
    main()
