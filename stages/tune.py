"""Stage tune@<model>: Optuna search of lr and weight decay on the validation split (a
generator's objective: the Fréchet distance in its scorer's features)."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.core import paths
    from reprolab.core.io import write_json, write_tsv
    from reprolab.tracking.tags import stage_tags
    from reprolab.tuning.worker import model_context, tune_model

    imports_done()

    ctx = model_context(params, args.model)
    tags = stage_tags(ctx.device.type, params, ctx.data_files(("train", "val")))
    result = tune_model(ctx, tags)
    write_tsv(paths.PLOTS / "trials" / f"{args.model}.tsv", result.trials)
    write_json(paths.model_dir(args.model) / "best_params.json", result.best_params)
    print(f"tune@{args.model}: {result.best_params}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
