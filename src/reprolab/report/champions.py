"""The MLflow alias ``champion`` of each model group: its best network by validation, as the
workspace's files rank it. The report stage moves it after writing the report; `reprolab
champion` moves it alone (DVC reruns no stage when `git checkout` and `dvc checkout` bring
back an earlier result, so the alias would still name the discarded one)."""

from __future__ import annotations

from collections.abc import Iterator

from reprolab.core.paths import stage_name
from reprolab.core.schema import Params
from reprolab.report.leaderboard import Section, champion_candidates, champion_weights_md5
from reprolab.tracking.champion import champion_refused, promote_champion


def promote_champions(
    params: Params, boards: list[tuple[Section, list[dict]]]
) -> Iterator[tuple[str, bool]]:
    """Move each group's alias to its best network (never a baseline, never one no better than
    a constant guess, never from a temp or queued experiment or `reprolab verify`); yield a
    line saying what was done and why, and whether the alias was left off the best network."""
    refused = champion_refused()
    for section, rows in boards:
        for row in rows:
            if row["flag"]:
                yield f"WARNING: {row['model']} is {row['flag']}: never champion", False
        best_row = rows[0]["model"]
        yield f"{section.group} on {section.dataset}: best by validation: {best_row}", False
        networks = champion_candidates(rows)
        if not networks:
            yield f"no {section.group} network beats a constant guess: champion not moved", False
            continue
        best = networks[0]
        if refused:
            yield f"alias champion not moved: {refused}", False
            continue
        models = getattr(params, section.group)
        uri, held = promote_champion(
            section.dataset, best, champion_weights_md5(best), models, section.group
        )
        if held:
            yield f"alias champion not moved to {uri}: {held}", True
        elif uri is None:
            train = stage_name("train", section.group, best)
            yield (
                (
                    f"no registered MLflow version of {best} matches models/{best}/model.pt; alias "
                    f"'champion' not set (run `dvc repro -f {train}` to register it)"
                ),
                True,
            )
        else:
            yield f"alias champion -> {uri}", False
