import json
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from gridflow import bin_points, predict
from gridflow.classify import classify
from gridflow.cli import main
from gridflow.errors import InputDataError, ParameterError, StoreError
from gridflow.evaluate import evaluate
from gridflow.synth import read_synth_metadata, write_points

metrics = pytest.importorskip("sklearn.metrics")
neighbors = pytest.importorskip("sklearn.neighbors")

CLASSES = 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A classified store from 20k synthetic points, and held-out test points
    (same process, other draws) with the Bayes-optimal class."""
    d = tmp_path_factory.mktemp("evaluate")
    train, test, store = d / "train.parquet", d / "test.parquet", d / "grid.zarr"
    kwargs = {"classes": CLASSES, "scale": 0.08}
    write_points(train, 20_000, seed=1, **kwargs)
    shifts = read_synth_metadata(train)["process"]["shifts"]
    write_points(test, 5_000, seed=2, bayes=True, shifts=shifts, npartitions=3, **kwargs)
    bin_points(train, store, bins=64, chunks=32)
    classify(store, window=3, iterations=3)
    return {"train": train, "test": test, "store": store, "dir": d}


def _truth_and_prediction(store, test):
    df = pd.read_parquet(test)
    pred = predict(store, test)
    return df, pred


def test_accuracy_confusion_and_metrics_match_hand_computation(synth):
    ev = evaluate(synth["store"], synth["test"])
    df, pred = _truth_and_prediction(synth["store"], synth["test"])
    y = df["label"].to_numpy()
    p = pred.codes  # the class coordinate is 0..K-1: codes are the labels
    assert ev.n == len(df) == 5_000
    assert ev.accuracy == pytest.approx(np.mean(p == y), abs=0)
    assert 0.4 < ev.accuracy < 1  # a real classifier, not a constant

    cm = ev.confusion
    assert cm.shape == (CLASSES, CLASSES + 1)
    assert cm.sum() == ev.n
    assert np.trace(cm) / ev.n == ev.accuracy
    expected = metrics.confusion_matrix(y, p, labels=[*range(CLASSES), -1])[:CLASSES]
    np.testing.assert_array_equal(cm, expected)

    prec, rec, f1, support = metrics.precision_recall_fscore_support(
        y, p, labels=list(range(CLASSES)), zero_division=0
    )
    s = ev.scores
    np.testing.assert_allclose(s.precision, prec, rtol=1e-12)
    np.testing.assert_allclose(s.recall, rec, rtol=1e-12)
    np.testing.assert_allclose(s.f1, f1, rtol=1e-12)
    np.testing.assert_array_equal(s.support, support)
    assert s.macro()["f1"] == pytest.approx(metrics.f1_score(y, p, average="macro"))

    assert ev.bayes_rate == pytest.approx((df["bayes"] == df["label"]).mean(), abs=0)
    assert ev.gap_to_bayes == pytest.approx(ev.bayes_rate - ev.accuracy)
    assert ev.predict_report == pred.report
    assert ev.baseline is None


def test_unknown_test_labels_count_as_errors(synth):
    df = pd.read_parquet(synth["test"])
    df["label"] = df["label"].astype(np.int64)
    df.loc[:99, "label"] = 7  # not a class of the grid
    ev = evaluate(synth["store"], df)
    pred = predict(synth["store"], df)
    y, p = df["label"].to_numpy(), pred.codes
    assert ev.scores.unknown.sum() == 100
    assert ev.unknown_labels == [(7, 100)]
    assert ev.confusion.sum() + ev.scores.unknown.sum() == ev.n == len(df)
    assert ev.accuracy == np.mean(p == y)  # the 100 rows can never be right
    # Predictions for unknown labels are false positives of the predicted class.
    prec, rec, _, _ = metrics.precision_recall_fscore_support(
        y, p, labels=list(range(CLASSES)), zero_division=0
    )
    np.testing.assert_allclose(ev.scores.precision, prec, rtol=1e-12)
    np.testing.assert_allclose(ev.scores.recall, rec, rtol=1e-12)
    text = ev.format()
    assert "unknown labels    100  (7: 100)" in text
    assert "(not a class)" in text


@pytest.fixture(scope="module")
def strings(tmp_path_factory):
    """A grid binned from string labels on a non-periodic [0, 1]^2."""
    d = tmp_path_factory.mktemp("strings")
    rng = np.random.default_rng(3)
    n = 4_000
    xy = rng.random((n, 2))
    label = np.where(xy[:, 0] + 0.1 * rng.standard_normal(n) < 0.5, "cat", "dog")
    label[(xy[:, 1] > 0.8) & (xy[:, 0] > 0.6)] = "emu"
    train = d / "train.parquet"
    pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": label}).to_parquet(train)
    store = d / "grid.zarr"
    bin_points(train, store, bins=16, bounds=(0, 1))
    classify(store, window=2, iterations=2, boundary="open")
    return store


def test_string_class_labels(strings, tmp_path):
    rng = np.random.default_rng(4)
    xy = rng.random((600, 2)) * 1.2 - 0.1  # some points outside the grid
    label = np.where(xy[:, 0] < 0.5, "cat", "dog").astype(object)
    label[:5] = "zebra"
    label[5:8] = None
    test = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": label})
    path = tmp_path / "test.parquet"
    test.to_parquet(path)

    ev = evaluate(strings, path)
    pred = predict(strings, path)
    assert ev.classes == ("cat", "dog", "emu")
    right = (pred.labels == label) & pd.notna(label)  # None == None is no hit
    assert ev.accuracy == np.mean(right)
    assert ev.scores.unknown.sum() == 8
    assert dict(ev.unknown_labels) == {"zebra": 5, None: 3}
    outside = pred.report["no_cell"]
    assert outside > 0 and ev.scores.no_prediction == outside
    assert ev.confusion[:, -1].sum() + ev.scores.unknown[-1] == outside
    assert np.trace(ev.confusion) == np.sum(right)

    # The same labels as a pandas categorical (codes in other order) score the same.
    cat = test.assign(label=pd.Categorical(label, categories=["zebra", "dog", "cat"]))
    ev_cat = evaluate(strings, cat)
    np.testing.assert_array_equal(ev_cat.confusion, ev.confusion)
    np.testing.assert_array_equal(ev_cat.scores.unknown, ev.scores.unknown)
    assert dict(ev_cat.unknown_labels) == {"zebra": 5, None: 3}

    # Numbers are never string classes: every label is unknown.
    ints = test.assign(label=np.arange(len(test)) % 2)
    assert evaluate(strings, ints).scores.unknown.sum() == len(test)

    d = ev.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["classes"] == ["cat", "dog", "emu"]
    assert d["confusion"]["columns"] == ["cat", "dog", "emu", None]
    text = ev.format()
    assert "cat" in text and "emu" in text and "zebra: 5" in text and "(missing): 3" in text


def test_knn_baseline_matches_sklearn(synth):
    ev = evaluate(synth["store"], synth["test"], baseline="knn", train=synth["train"], neighbors=15)
    train = pd.read_parquet(synth["train"])
    test = pd.read_parquet(synth["test"])
    knn = neighbors.KNeighborsClassifier(n_neighbors=15)
    knn.fit(train[["x0", "x1"]].to_numpy(), train["label"].to_numpy())
    mine = knn.predict(test[["x0", "x1"]].to_numpy())
    b = ev.baseline
    assert b.train_rows == b.train_available == len(train) and not b.subsampled
    assert b.scores.correct == np.sum(mine == test["label"].to_numpy())
    assert b.accuracy == np.mean(mine == test["label"].to_numpy())
    np.testing.assert_array_equal(
        b.scores.confusion[:, :-1],
        metrics.confusion_matrix(test["label"], mine, labels=list(range(CLASSES))),
    )
    assert b.fit_seconds >= 0 and b.predict_seconds > 0 and ev.predict_seconds > 0
    text = ev.format()
    assert "baseline knn (n_neighbors=15), fitted on all 20,000 training points" in text


def test_knn_baseline_subsamples_the_training_points(synth):
    ev = evaluate(
        synth["store"],
        synth["test"],
        baseline="knn",
        train=synth["train"],
        neighbors=5,
        max_train=3_000,
        seed=11,
    )
    b = ev.baseline
    assert (b.train_rows, b.train_available, b.subsampled) == (3_000, 20_000, True)
    # The documented draw: a uniform subsample of the usable rows, in file order.
    rows = np.sort(np.random.default_rng(11).choice(20_000, 3_000, replace=False))
    train = pd.read_parquet(synth["train"]).iloc[rows]
    test = pd.read_parquet(synth["test"])
    knn = neighbors.KNeighborsClassifier(n_neighbors=5)
    knn.fit(train[["x0", "x1"]].to_numpy(), train["label"].to_numpy())
    assert b.scores.correct == np.sum(knn.predict(test[["x0", "x1"]].to_numpy()) == test["label"])
    assert "random subsample (seed 11) of 3,000 of 20,000" in ev.format()


def test_baseline_parameters(synth):
    with pytest.raises(ParameterError, match="train="):
        evaluate(synth["store"], synth["test"], baseline="knn")
    with pytest.raises(ParameterError, match="baseline: expected"):
        evaluate(synth["store"], synth["test"], baseline="svm", train=synth["train"])
    with pytest.raises(ParameterError, match="neighbors"):
        evaluate(synth["store"], synth["test"], baseline="knn", train=synth["train"], neighbors=0)


def test_missing_sklearn_gives_an_install_hint(synth, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.neighbors", None)  # import fails
    with pytest.raises(ParameterError, match=r"pip install 'gridflow\[bench\]'"):
        evaluate(synth["store"], synth["test"], baseline="knn", train=synth["train"])


def test_unclassified_store_and_unlabeled_points(synth, tmp_path):
    store = tmp_path / "binned.zarr"
    bin_points(synth["train"], store, bins=8)
    with pytest.raises(StoreError, match="`gridflow classify`"):
        evaluate(store, synth["test"])
    with pytest.raises(InputDataError, match="label column 'nope' not found"):
        evaluate(synth["store"], synth["test"], label="nope")


def test_cli_prints_the_report_and_writes_json(synth):
    out = synth["dir"] / "eval.json"
    args = ["evaluate", synth["store"], synth["test"], "--baseline", "knn"]
    args += ["--train", synth["train"], "--neighbors", 7, "--json", out]
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ev = evaluate(synth["store"], synth["test"])
    assert f"accuracy          {100 * ev.accuracy:.2f}%" in r.output
    assert "Bayes rate" in r.output and "confusion matrix" in r.output
    assert "baseline knn (n_neighbors=7)" in r.output
    doc = json.loads(out.read_text())
    assert doc["accuracy"] == ev.accuracy
    assert doc["n"] == 5_000 and doc["bayes_rate"] == ev.bayes_rate
    assert np.array(doc["confusion"]["matrix"]).sum() == 5_000
    assert doc["baseline"]["params"] == {"n_neighbors": 7}
    assert [c["class"] for c in doc["per_class"]] == [0, 1, 2]


def test_cli_baseline_without_train_fails_in_one_line(synth):
    args = ["evaluate", synth["store"], synth["test"], "--baseline", "knn"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2
    assert r.output.startswith("error: --train:") and "--train" in r.output
    assert r.output.count("\n") == 1
