"""The baselines' skops file is loaded trusting exactly the types the pipeline writes: a file
from a remote or a commit that picks callables of its own (a real payload whose loading and
use would run code) is refused before anything in it is built."""

from __future__ import annotations

import numpy as np
import pytest
import skops.io as sio

from reprolab.core.errors import CheckpointError
from reprolab.learn.baselines import (
    FILE,
    GRIDS,
    TRUSTED_TYPES,
    load_baselines,
    make_estimator,
    save_baselines,
)


def _fitted() -> dict:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.arange(60) % 3
    target = {"classification": y, "regression": np.abs(x[:, 0]) * 10}
    return {
        name: make_estimator(name, grid[0], seed=0).fit(x, target[task])
        for name, (task, _, grid) in GRIDS.items()
    }


def test_trusted_types_are_exactly_what_the_baselines_write(tmp_path) -> None:
    fitted = _fitted()
    save_baselines(fitted, tmp_path)
    data = (tmp_path / FILE).read_bytes()
    assert set(sio.get_untrusted_types(data=data)) == TRUSTED_TYPES
    loaded = load_baselines(tmp_path)
    x = np.random.default_rng(1).normal(size=(5, 4))
    for name, estimator in fitted.items():
        assert np.array_equal(loaded[name].predict(x), estimator.predict(x))


def test_a_baselines_file_that_would_run_code_is_refused(tmp_path) -> None:
    from numpy.testing._private import utils
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    marker = tmp_path / "PWNED"
    code = f"open({str(marker)!r}, 'w').write('code ran')"
    # Each step a numpy or scikit-learn name, as a prefix rule ("sklearn.", "numpy.") trusted:
    # the first two turn any input into the code string, the third exec()s it.
    evil = make_pipeline(
        FunctionTransformer(np.full_like, kw_args={"fill_value": code, "dtype": np.object_}),
        FunctionTransformer(np.take, kw_args={"indices": 0}),
        FunctionTransformer(utils.runstring, kw_args={"dict": {}}),
    )
    (tmp_path / FILE).write_bytes(sio.dumps({"logistic_regression": evil}))
    with pytest.raises(CheckpointError, match="runstring.*refusing to load"):
        load_baselines(tmp_path)
    assert not marker.exists()


def test_a_file_that_is_not_skops_is_one_line(tmp_path) -> None:
    (tmp_path / FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a skops file"):
        load_baselines(tmp_path)
