"""Stage report: leaderboard and figures over all models, ranked by validation metric;
the best model's registered version gets the MLflow alias ``champion``."""

from reprolab.stage import run_stage


def main(params, args) -> None:
    from reprolab.report import champion_weights_md5, write_report
    from reprolab.tracking import promote_champion

    rows = write_report(params)
    best = rows[0]["model"]
    uri = promote_champion(params.dataset, best, champion_weights_md5(best), params.models)
    print(f"report: {len(rows)} model(s); best by validation: {best}")
    if uri is None:
        print(f"report: no registered MLflow version of {best} matches models/{best}/model.pt;")
        print("        alias 'champion' not set (run `dvc repro -f train@...` to register it)")
    else:
        print(f"report: alias champion -> {uri}")


if __name__ == "__main__":
    run_stage(__doc__, main)
