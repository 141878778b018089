"""Stage evaluate@<model>: the one final test evaluation (the only reader of test.npz)."""

from reprolab.stage import run_stage


def main(params, args) -> None:
    from reprolab.context import ModelContext
    from reprolab.evaluation import evaluate_model
    from reprolab.tracking import stage_tags

    ctx = ModelContext(params, args.model)
    tags = stage_tags(ctx.device.type, params.threads, ctx.data_md5(("test",)))
    metrics = evaluate_model(ctx, tags)
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"evaluate@{args.model}: test {shown}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
