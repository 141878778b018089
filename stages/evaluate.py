"""Stage evaluate@<model>: the one final test evaluation (the only reader of test.npz); a
generator also draws its fixed-noise sample grid."""

from reprolab.core.stage import run_stage


def main(params, args) -> None:
    from reprolab.tracking.runs import stage_tags

    if params.task_of(args.model) == "generative":
        from reprolab.learn.tasks.generation import GanContext, evaluate_gan

        ctx, evaluate = GanContext(params, args.model), evaluate_gan
    else:
        from reprolab.learn.context import ModelContext
        from reprolab.learn.final import evaluate_model

        ctx, evaluate = ModelContext(params, args.model), evaluate_model
    tags = stage_tags(ctx.device.type, params.threads, ctx.data_md5(("test",)))
    metrics = evaluate(ctx, tags)
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"evaluate@{args.model}: test {shown}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
