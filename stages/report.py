"""Stage report: a leaderboard per model group (classifiers, regressors), baselines included,
ranked by validation metric, with figures; the best network of each group's registered
version gets the MLflow alias ``champion``: the workspace's result only (never a temp or
queued experiment, never `reprolab verify`)."""

from reprolab.core.stage import run_stage


def main(params, args) -> None:
    from reprolab.report.leaderboard import champion_candidates, champion_weights_md5
    from reprolab.report.render import write_report
    from reprolab.tracking.champion import champion_refused, promote_champion

    refused = champion_refused()
    for section, rows in write_report(params):
        for row in rows:
            if row["flag"]:
                print(f"report: WARNING: {row['model']} is {row['flag']}: never champion")
        print(
            f"report: {section.group} on {section.dataset}: best by validation: {rows[0]['model']}"
        )
        networks = champion_candidates(rows)
        if not networks:
            print(f"report: no {section.group} network beats a constant guess: champion not moved")
            continue
        best = networks[0]
        if refused:
            print(f"report: alias champion not moved: {refused}")
            continue
        uri, held = promote_champion(
            section.dataset, best, champion_weights_md5(best), getattr(params, section.group)
        )
        if held:
            print(f"report: alias champion not moved to {uri}: {held}")
        elif uri is None:
            print(f"report: no registered MLflow version of {best} matches models/{best}/model.pt;")
            print("        alias 'champion' not set (run `dvc repro -f train@...` to register it)")
        else:
            print(f"report: alias champion -> {uri}")


if __name__ == "__main__":
    run_stage(__doc__, main)
