"""Stage split: stratified, seeded train/val/test files under data/splits/."""

from reprolab.stage import run_stage


def main(params, args) -> None:
    from reprolab import paths
    from reprolab.data.fetch import load_raw
    from reprolab.data.split import write_splits

    s = params.split
    arrays = load_raw(params.dataset, paths.RAW / params.dataset)
    meta = write_splits(
        arrays, paths.SPLITS, s.val_fraction, s.test_fraction, s.seed, s.official_test
    )
    print(f"split: {meta['sizes']}")


if __name__ == "__main__":
    run_stage(__doc__, main)
