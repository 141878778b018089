"""Stage download: the dataset's original files, checksummed, under data/raw/<dataset>/."""

from reprolab.stage import run_stage


def main(params, args) -> None:
    from reprolab import paths
    from reprolab.data.fetch import fetch_dataset

    files = fetch_dataset(
        params.dataset,
        paths.RAW / params.dataset,
        params.mirror,
        options=params.imagefolder.model_dump(),
    )
    print(f"download: {params.dataset}: {len(files)} file(s) verified")


if __name__ == "__main__":
    run_stage(__doc__, main)
