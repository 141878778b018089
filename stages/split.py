"""Stage split@<kind>: stratified (classes) or plain (regression), seeded train/val/test
files of ``datasets.<kind>`` under data/splits/<kind>/."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.core import paths
    from reprolab.data.fetch import load_raw
    from reprolab.data.split import write_splits
    from reprolab.data.tables import unseen_warnings

    imports_done()

    s = params.split
    dataset = getattr(params.datasets, args.kind)
    arrays = load_raw(dataset, paths.RAW / dataset)
    meta = write_splits(
        arrays,
        paths.splits_dir(args.kind),
        s.val_fraction,
        s.test_fraction,
        s.seed,
        s.official_test,
    )
    print(f"split@{args.kind}: {dataset}: {meta['sizes']}")
    for line in unseen_warnings(meta["table"]) if "table" in meta else []:
        print(line)


if __name__ == "__main__":
    run_stage(__doc__, main, kind_arg=True, check_kind=True)
