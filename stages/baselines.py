"""Stage baselines@<kind>: scikit-learn baselines for ``datasets.<kind>``, each with its
regularisation chosen on the validation split (test is never read here)."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.core import paths
    from reprolab.core.npz import open_npz
    from reprolab.learn.baselines import (
        log_baselines,
        of_task,
        save_baselines,
        select_baselines,
        write_selection,
    )
    from reprolab.learn.objectives import objective_key
    from reprolab.learn.tensors import load_meta
    from reprolab.tracking.tags import stage_tags

    imports_done()

    meta = load_meta(paths.splits_dir(args.kind))
    task = meta["task"]
    splits = {}
    for name in ("train", "val"):
        members = open_npz(paths.split_file(args.kind, name))
        splits[name] = {"x": members["x"], "y": members["y"].load()}
    # Train rows are read when picked (at most baselines.max_rows of them), val a chunk at a time.
    names = of_task(getattr(params.baselines, args.kind), task, f"baselines.{args.kind}")
    selected, fitted = select_baselines(
        names,
        splits["train"],
        splits["val"],
        objective_key(task, meta),
        params.seed,
        params.baselines.max_rows,
    )
    folder = paths.MODELS / "baselines" / args.kind
    identity = save_baselines(fitted, folder)
    write_selection(selected, folder, paths.METRICS / "baselines" / args.kind / "val.json")
    dataset = getattr(params.datasets, args.kind)
    log_baselines(
        dataset,
        identity,
        f"baselines@{args.kind}",
        {s.name: {f"val_{k}": v for k, v in s.val.items()} for s in selected},
        stage_tags("cpu", params),
        params={s.name: {s.hyperparameter: s.value} for s in selected},
    )
    for s in selected:
        print(f"baselines@{args.kind}: {s.name} {s.hyperparameter}={s.value} val {s.val}")


if __name__ == "__main__":
    run_stage(__doc__, main, kind_arg=True)
