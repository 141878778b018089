"""Stage download@<kind>: the original files of ``datasets.<kind>``, checksummed, under
data/raw/<dataset>/."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.core import paths
    from reprolab.data.fetch import fetch_dataset

    imports_done()

    dataset = getattr(params.datasets, args.kind)
    options = getattr(params, dataset, None)  # a user's source reads its section
    files = fetch_dataset(
        dataset, paths.RAW / dataset, params.mirror, options=options and options.model_dump()
    )
    print(f"download@{args.kind}: {dataset}: {len(files)} file(s) verified")


if __name__ == "__main__":
    run_stage(__doc__, main, kind_arg=True, check_kind=True)
