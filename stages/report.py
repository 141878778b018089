"""Stage report: a leaderboard per model group (classifiers, regressors), baselines included,
ranked by validation metric, with figures; the best network of each group's registered
version gets the MLflow alias ``champion``: the workspace's result only (never a temp or
queued experiment, never `reprolab verify`)."""

from reprolab.core.stage import imports_done, run_stage


def main(params, args) -> None:
    from reprolab.report.champions import promote_champions
    from reprolab.report.render import write_report

    imports_done()

    for line, _ in promote_champions(params, write_report(params)):
        print(f"report: {line}")  # the report is written either way: the alias is MLflow's


if __name__ == "__main__":
    run_stage(__doc__, main)
