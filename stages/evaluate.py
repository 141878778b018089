"""Stage evaluate@<model>: the one final test evaluation (the only reader of test.npz); a
generator also draws its fixed-noise sample grid."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.learn.tasks import get_task
    from reprolab.tracking.tags import stage_tags

    task = get_task(params.task_of(args.model))  # imports the task's modules
    imports_done()
    ctx = task.context(params, args.model)
    tags = stage_tags(ctx.device.type, params, ctx.data_files(("test",)))
    metrics = task.evaluate(ctx, tags)
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    print(f"evaluate@{args.model}: test {shown}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
