"""Stage evaluate@<model>: the one final test evaluation (the only reader of test.npz); a
generator also draws its fixed-noise sample grid."""

from reprolab.stage import run_stage


def main(params, args) -> None:
    from reprolab.tracking import stage_tags

    if params.task_of(args.model) == "generative":
        from reprolab.generative import GanContext, evaluate_gan

        ctx, evaluate = GanContext(params, args.model), evaluate_gan
    else:
        from reprolab.context import ModelContext
        from reprolab.evaluation import evaluate_model

        ctx, evaluate = ModelContext(params, args.model), evaluate_model
    tags = stage_tags(ctx.device.type, params.threads, ctx.data_md5(("test",)))
    metrics = evaluate(ctx, tags)
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"evaluate@{args.model}: test {shown}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
