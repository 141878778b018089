"""Stage train@<model>: final training with the tuned params; model, curves, val metrics."""

from reprolab.stage import run_stage


def main(params, args) -> None:
    import json

    from reprolab import distributed, paths
    from reprolab.context import ModelContext
    from reprolab.tracking import stage_tags
    from reprolab.training import train_final

    distributed.init_from_env(params.device)  # under torchrun (train.launcher); else no-op
    try:
        ctx = ModelContext(params, args.model)
        best = json.loads((paths.model_dir(args.model) / "best_params.json").read_text())
        tags = stage_tags(ctx.device.type, params.threads, ctx.data_md5(("train", "val")))
        metrics = train_final(ctx, best, tags)
    finally:
        distributed.shutdown()
    if metrics is not None:
        print(f"train@{args.model}: val {metrics['val']}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
