"""Stage evaluate_baselines@<kind>: the one test evaluation of the chosen baselines."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.core import paths
    from reprolab.core.io import md5_file, write_json
    from reprolab.core.npz import open_npz
    from reprolab.learn.baselines import FILE, evaluate_baselines, log_baselines
    from reprolab.learn.objectives import objective_key
    from reprolab.learn.tensors import load_meta
    from reprolab.tracking.tags import stage_tags

    imports_done()

    meta = load_meta(paths.splits_dir(args.kind))
    task = meta["task"]
    members = open_npz(paths.split_file(args.kind, "test"))  # x is read a chunk at a time
    test = {"x": members["x"], "y": members["y"].load()}
    folder = paths.MODELS / "baselines" / args.kind
    results = evaluate_baselines(folder, test, objective_key(task, meta), meta)
    write_json(paths.METRICS / "baselines" / args.kind / "test.json", results)
    logged = {
        name: {f"test_{k}": v for k, v in m.items() if isinstance(v, float)}
        for name, m in results.items()
    }
    dataset = getattr(params.datasets, args.kind)
    tags = stage_tags("cpu", params)
    log_baselines(dataset, md5_file(folder / FILE), f"evaluate_baselines@{args.kind}", logged, tags)
    for name, metrics in results.items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
        print(f"evaluate_baselines@{args.kind}: {name} test {shown}")


if __name__ == "__main__":
    run_stage(__doc__, main, kind_arg=True)
