"""Stage report: the leaderboard over all models, ranked by validation metric."""

from reprolab.stage import run_stage


def main(params, args) -> None:
    from reprolab.report import write_report

    rows = write_report(params)
    print(f"report: {len(rows)} model(s); best by validation: {rows[0]['model']}")


if __name__ == "__main__":
    run_stage(__doc__, main)
