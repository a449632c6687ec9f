"""classify on sparse stores: the dense results bit for bit, pyramid levels,
checkpoints and resume, the estimator's layouts, and the CLI options."""

import sys

import numpy as np
import pytest
from click.testing import CliRunner

from gridflow import bin_points, classify, open_grid, predict
from gridflow.cli import main
from gridflow.estimators import GridClassifier
from gridflow.sparse_grid import densify, is_sparse
from gridflow.synth import PointProcess

classify_mod = sys.modules["gridflow.classify"]

VARIABLES = ("label", "confidence", "density", "votes", "probability")


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def points4():
    frame = PointProcess(dims=4, classes=3, scale=0.1, seed=3).sample(0, 3000)
    return frame[["x0", "x1", "x2", "x3"]].to_numpy(), frame["label"].to_numpy()


def _stores(points, tmp_path, chunks=(6, 12, 12, 12), periodic=False):
    X, y = points
    out = {}
    for layout in ("dense", "sparse"):
        path = tmp_path / f"{layout}.zarr"
        bin_points(
            X, path, labels=y, bins=12, bounds=(0, 1), periodic=periodic, layout=layout,
            chunks=chunks,
        )  # fmt: skip
        out[layout] = path
    assert is_sparse(open_grid(out["sparse"])["counts"])
    return out


@pytest.mark.parametrize("support", ["reachable", "occupied"])
@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_sparse_store_equals_dense_store_with_levels(points4, tmp_path, support, boundary):
    stores = _stores(points4, tmp_path, periodic=boundary == "periodic")
    kw = {"window": 1, "iterations": 2, "levels": 3, "min_votes": 1.0, "probabilities": True}
    dense = classify(stores["dense"], support=support, boundary=boundary, **kw)
    got = classify(stores["sparse"], support=support, boundary=boundary, **kw)
    names = [f"{v}{s}" for v in VARIABLES for s in ("", "_l1", "_l2")]
    for name in names:
        np.testing.assert_array_equal(densify(got[name]), densify(dense[name]), err_msg=name)
    assert is_sparse(got["label"])  # level 0 stays sparse; a coarse level may be dense
    record = got.attrs["gridflow_stages"]["classify"]
    assert record["support"] == support and record["levels"] == 3
    # Prediction from the stores: the same answers and the same per-level report.
    X = points4[0][:500]
    a, b = predict(stores["dense"], X), predict(stores["sparse"], X)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.report == b.report and sum(a.report["levels"]) == a.report["predicted"]


def test_auto_support_is_chosen_per_level_and_recorded(points4, tmp_path):
    stores = _stores(points4, tmp_path)
    out = classify(stores["sparse"], window=1, iterations=1, levels=3)
    record = out.attrs["gridflow_stages"]["classify"]
    assert record["support"] in ("reachable", "occupied")
    assert len(record["level_supports"]) == 2


def test_sparse_resume_is_bit_identical_and_skips_done_rounds(points4, tmp_path, monkeypatch):
    stores = _stores(points4, tmp_path)
    kw = {"window": 1, "iterations": 7, "fuse": 2, "support": "reachable"}
    ref = classify(open_grid(stores["sparse"]), **kw)
    saved = []
    real_save = classify_mod._Checkpoint.save

    def dying_save(self, state, stats):
        result = real_save(self, state, stats)
        saved.append(state.step)
        if len(saved) == 2:
            raise _Killed
        return result

    monkeypatch.setattr(classify_mod._Checkpoint, "save", dying_save)
    with pytest.raises(_Killed):
        classify(stores["sparse"], **kw)
    assert saved == [2, 4]
    saved.clear()
    monkeypatch.setattr(
        classify_mod._Checkpoint,
        "save",
        lambda self, s, st: (saved.append(s.step), real_save(self, s, st))[1],
    )
    out = classify(stores["sparse"], resume=True, **kw)
    assert saved == [6]  # steps 1-4 came from the sparse checkpoint
    for name in ("label", "density", "confidence"):
        np.testing.assert_array_equal(densify(out[name]), densify(ref[name]))
    assert (
        out.attrs["gridflow_stages"]["classify"]["history"]
        == ref.attrs["gridflow_stages"]["classify"]["history"]
    )


@pytest.mark.parametrize("support", ["reachable", "occupied"])
def test_estimator_layouts_agree(points4, support):
    X, y = points4
    kw = {"bins": 12, "boundary": "periodic", "bounds": (0, 1), "periodic": True, "levels": 2}
    dense = GridClassifier(layout="dense", support=support, **kw).fit(X, y)
    sparse = GridClassifier(layout="sparse", support=support, **kw).fit(X, y)
    assert (dense.layout_, sparse.layout_) == ("dense", "sparse")
    assert dense.support_ == sparse.support_ == support
    assert dense.levels_ == sparse.levels_ == 2
    queries = np.random.default_rng(0).random((2000, 4))
    np.testing.assert_array_equal(dense.predict(queries), sparse.predict(queries))
    np.testing.assert_array_equal(dense.predict_proba(queries), sparse.predict_proba(queries))


def test_ten_features_fit_without_a_dense_grid():
    # The check scikit-learn's check_dtype_object makes: 10 features, few points.
    rng = np.random.default_rng(0)
    X, y = rng.random((200, 10)), rng.integers(0, 3, 200)
    clf = GridClassifier().fit(X, y)
    assert clf.bins_ == (4,) * 10 and clf.window_ == 1
    assert clf.predict(X).shape == (200,)


def test_cli_support_levels_and_min_votes(points4, tmp_path):
    stores = _stores(points4, tmp_path)
    result = run_cli(
        "classify", str(stores["sparse"]), "--window", "1", "--iterations", "2",
        "--support", "occupied", "--levels", "2", "--min-votes", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = open_grid(stores["sparse"]).attrs["gridflow_stages"]["classify"]
    assert (record["support"], record["levels"], record["min_votes"]) == ("occupied", 2, 2.0)
    bad = run_cli("classify", str(stores["sparse"]), "--support", "everywhere")
    assert bad.exit_code == 2 and "everywhere" in bad.output
    bad = run_cli("classify", str(stores["sparse"]), "--window", "1", "--levels", "9")
    assert bad.exit_code == 2 and "levels" in bad.output and "Traceback" not in bad.output
