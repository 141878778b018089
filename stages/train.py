"""Stage train@<model>: final training with the tuned params; model, curves, val metrics."""

from reprolab.core.stage import run_stage


def main(params, args) -> None:
    import json

    from reprolab.core import paths
    from reprolab.learn import distributed
    from reprolab.tracking.runs import stage_tags

    if params.task_of(args.model) == "generative":  # one process (no train.launcher)
        from reprolab.learn.tasks.generation import GanContext as Context
        from reprolab.learn.tasks.generation import train_gan as train
    else:
        from reprolab.learn.checkpoints import train_final as train
        from reprolab.learn.context import ModelContext as Context

    distributed.init_from_env(params.device)  # under torchrun (train.launcher); else no-op
    try:
        ctx = Context(params, args.model)
        best = json.loads((paths.model_dir(args.model) / "best_params.json").read_text())
        tags = stage_tags(ctx.device.type, params.threads, ctx.data_md5(("train", "val")))
        metrics = train(ctx, best, tags)
    finally:
        distributed.shutdown()
    if metrics is not None:
        print(f"train@{args.model}: val {metrics['val']}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
