"""Stage train@<model>: final training with the tuned params; model, curves, val metrics."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.core import paths
    from reprolab.learn import distributed
    from reprolab.learn.checkpoints import read_best_params
    from reprolab.learn.tasks import get_task
    from reprolab.tracking.runs import stage_execution
    from reprolab.tracking.tags import stage_tags

    task = get_task(params.task_of(args.model))  # imports the task's modules
    imports_done()
    if task.distributed:  # train.launcher torchrun: this process becomes its agent
        distributed.relaunch(params.train.launcher)
    distributed.init_from_env(params.device)  # a torchrun rank joins its group; else no-op
    try:
        ctx = task.context(params, args.model)
        tuned_by = paths.stage_name("tune", ctx.group, args.model)
        best = read_best_params(paths.model_dir(args.model), tuned_by)
        tags = stage_tags(ctx.device.type, params, ctx.data_files(("train", "val")))
        if distributed.is_main():  # this execution's MLflow run, from its start (rank 0's)
            stage_execution(ctx, "train", best["study"], tags)
        metrics = task.train_final(ctx, best, tags)
    finally:
        distributed.shutdown()
    if metrics is not None:
        print(f"train@{args.model}: val {metrics['val']}")


if __name__ == "__main__":
    run_stage(__doc__, main, model_arg=True)
