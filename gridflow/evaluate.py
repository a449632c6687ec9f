"""Evaluation: how well a classified grid labels held-out points.

:func:`evaluate` predicts labeled test points with :func:`gridflow.predict`
and compares the predictions with the points' own labels: accuracy,
per-class precision / recall / F1, and the confusion matrix. True labels are
matched to the store's ``class`` coordinate by value, with the rules of
binning (``1`` and ``1.0`` are the same class, ``"1"`` is not); a true label
that is not one of the grid's classes (or is missing) can never be predicted,
so it counts as an error and is listed in the report. A point with no
prediction (no cell, or an unlabeled cell) counts as an error too.

When the points carry the Bayes-optimal class (the ``bayes`` column written
by :mod:`gridflow.synth`), the report gives the Bayes rate, the accuracy
ceiling, and gridflow's gap to it.

With ``baseline="knn"`` a scikit-learn ``KNeighborsClassifier`` is fitted on
the training points the grid was built from (the store does not hold them:
pass ``train=``) and scored on the same test points, with fit and predict
times. scikit-learn is optional (``pip install 'gridflow[bench]'``) and is
imported only then.

Memory is O(n) integers for n test points, never the grid: the labels are
read block by block into class indices, and the confusion matrix is a
``bincount`` of (true, predicted) pairs.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import pandas as pd

from gridflow._types import BASELINES
from gridflow.errors import InputDataError, ParameterError, StoreError
from gridflow.grid import GridSpec
from gridflow.points import Block, PointSource, open_points
from gridflow.predict import parse_columns, predict
from gridflow.store import as_grid, grid_spec

__all__ = ["Baseline", "Evaluation", "Scores", "evaluate"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'gridflow[bench]'"

#: Distinct unknown true labels kept in the report (the most frequent).
MAX_UNKNOWN_SHOWN = 20

NO_PREDICTION = "(none)"
NOT_A_CLASS = "(not a class)"
CORNER = "true \\ predicted"


# --- results ---------------------------------------------------------------------------


@dataclass
class Scores:
    """Counts of (true class, predicted class) pairs and the metrics they give.

    Attributes
    ----------
    classes : tuple
        Class names (the store's ``class`` coordinate), in class-index order.
    confusion : ndarray of int64, shape (K, K + 1)
        ``confusion[i, j]``: points of true class i predicted as class j; the
        last column counts points of class i with no prediction.
    unknown : ndarray of int64, shape (K + 1,)
        The same row for points whose true label is not one of the classes
        (always errors). ``confusion.sum() + unknown.sum() == n``.
    """

    classes: tuple
    confusion: np.ndarray
    unknown: np.ndarray

    @property
    def n(self) -> int:
        return int(self.confusion.sum() + self.unknown.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        """Correct predictions over all points (no prediction and unknown labels are errors)."""
        return self.correct / self.n if self.n else float("nan")

    @property
    def no_prediction(self) -> int:
        return int(self.confusion[:, -1].sum() + self.unknown[-1])

    @property
    def accuracy_predicted(self) -> float:
        """Accuracy over the points that got a prediction."""
        predicted = self.n - self.no_prediction
        return self.correct / predicted if predicted else float("nan")

    @property
    def support(self) -> np.ndarray:
        """Points per true class."""
        return self.confusion.sum(axis=1)

    @property
    def predicted_per_class(self) -> np.ndarray:
        """Points predicted as each class (unknown true labels included)."""
        return self.confusion[:, :-1].sum(axis=0) + self.unknown[:-1]

    @property
    def precision(self) -> np.ndarray:
        """Per class; 0 for a class never predicted (scikit-learn's ``zero_division=0``)."""
        return _ratio(np.diag(self.confusion), self.predicted_per_class)

    @property
    def recall(self) -> np.ndarray:
        """Per class; 0 for a class with no test points."""
        return _ratio(np.diag(self.confusion), self.support)

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)

    def macro(self) -> dict[str, float]:
        """Unweighted means of precision, recall and F1 over the classes."""
        return {
            "precision": float(self.precision.mean()),
            "recall": float(self.recall.mean()),
            "f1": float(self.f1.mean()),
        }

    def to_dict(self) -> dict[str, Any]:
        names = [_json_value(c) for c in self.classes]
        p, r, f, s = self.precision, self.recall, self.f1, self.support
        return {
            "n": self.n,
            "correct": self.correct,
            "accuracy": _json_float(self.accuracy),
            "accuracy_predicted": _json_float(self.accuracy_predicted),
            "no_prediction": self.no_prediction,
            "unknown_label": int(self.unknown.sum()),
            "per_class": [
                {
                    "class": names[k],
                    "precision": float(p[k]),
                    "recall": float(r[k]),
                    "f1": float(f[k]),
                    "support": int(s[k]),
                }
                for k in range(len(names))
            ],
            "macro": self.macro(),
            "confusion": {
                "rows": names,
                "columns": [*names, None],
                "matrix": self.confusion.tolist(),
                "unknown_label_row": self.unknown.tolist(),
            },
        }


@dataclass
class Baseline:
    """A baseline classifier scored on the same test points.

    ``train_rows`` rows were used to fit it, out of ``train_available``
    usable training rows (in the grid, with a known class); it was fitted on
    a random subsample (``seed``) when ``subsampled``.
    """

    name: str
    params: dict[str, Any]
    scores: Scores
    fit_seconds: float
    predict_seconds: float
    train_rows: int
    train_available: int
    subsampled: bool
    seed: int

    @property
    def accuracy(self) -> float:
        return self.scores.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": dict(self.params),
            "train_rows": self.train_rows,
            "train_available": self.train_available,
            "subsampled": self.subsampled,
            "seed": self.seed,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            **self.scores.to_dict(),
        }


@dataclass
class Evaluation:
    """The result of :func:`evaluate`.

    Attributes
    ----------
    scores : Scores
        Confusion matrix and metrics of the grid's predictions.
    label : str
        The label column of the test points.
    predict_report : dict
        :attr:`gridflow.PredictResult.report`: rows, predicted, no_cell,
        unlabeled_cell.
    predict_seconds : float
        Wall time of :func:`gridflow.predict` (reading the points included).
    unknown_labels : list of (value, count)
        The most frequent true labels that are not classes of the grid
        (None for a missing label), most frequent first.
    bayes_rate : float or None
        Accuracy of the points' Bayes-optimal class column, when present.
    baseline : Baseline or None
    """

    scores: Scores
    label: str
    predict_report: dict[str, int]
    predict_seconds: float
    unknown_labels: list[tuple[Any, int]] = field(default_factory=list)
    bayes_rate: float | None = None
    bayes_column: str | None = None
    baseline: Baseline | None = None
    store: str = ""
    points: str = ""

    # Shortcuts to the scores.
    @property
    def n(self) -> int:
        return self.scores.n

    @property
    def classes(self) -> tuple:
        return self.scores.classes

    @property
    def accuracy(self) -> float:
        return self.scores.accuracy

    @property
    def confusion(self) -> np.ndarray:
        return self.scores.confusion

    @property
    def gap_to_bayes(self) -> float | None:
        """Bayes rate minus accuracy (in fraction of points), when the rate is known."""
        return None if self.bayes_rate is None else self.bayes_rate - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        """The evaluation as plain JSON-safe values (NaN becomes None)."""
        return {
            "store": self.store,
            "points": self.points,
            "label": self.label,
            "classes": [_json_value(c) for c in self.classes],
            **self.scores.to_dict(),
            "unknown_labels": [
                {"value": _json_value(v), "count": int(c)} for v, c in self.unknown_labels
            ],
            "bayes_column": self.bayes_column,
            "bayes_rate": _json_float(self.bayes_rate),
            "gap_to_bayes": _json_float(self.gap_to_bayes),
            "predict": {"seconds": self.predict_seconds, **self.predict_report},
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
        }

    def format(self) -> str:
        """A readable multi-line report."""
        s = self.scores
        rep = self.predict_report
        lines = [
            f"evaluation of {self.store or 'the grid'} on {s.n:,} points of "
            f"{self.points or 'the test set'} (label column {self.label!r}, "
            f"{len(self.classes)} classes)",
            f"  accuracy          {_pct(s.accuracy)}  ({s.correct:,} correct)",
        ]
        if self.bayes_rate is not None:
            lines.append(
                f"  Bayes rate        {_pct(self.bayes_rate)}  "
                f"({_below(self.gap_to_bayes, 'gridflow')})"
            )
        lines += [
            f"  no prediction     {s.no_prediction:,}  ({rep.get('no_cell', 0):,} outside the "
            f"grid, {rep.get('unlabeled_cell', 0):,} in unlabeled cells)",
            f"  where predicted   {_pct(s.accuracy_predicted)}",
            f"  unknown labels    {int(s.unknown.sum()):,}{_unknown_summary(self.unknown_labels)}",
            f"  macro F1          {s.macro()['f1']:.4f}",
            f"  predict time      {self.predict_seconds:.2f} s",
            "",
            *_class_table(s),
            "",
            *_confusion_table(s),
        ]
        if self.baseline is not None:
            lines += ["", *_baseline_block(self.baseline, self)]
        return "\n".join(lines)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _json_float(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _json_value(v: Any) -> Any:
    """A class name or label value as a JSON scalar."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


# --- text report -----------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def _below(gap: float | None, who: str) -> str:
    """``gap`` (a fraction of points) as '<who> is 1.23 points below/above'."""
    if gap is None or not np.isfinite(gap):
        return "n/a"
    return f"{who} is {100 * abs(gap):.2f} points {'below' if gap >= 0 else 'above'}"


def _unknown_summary(values: list[tuple[Any, int]]) -> str:
    if not values:
        return ""
    shown = ", ".join(f"{'(missing)' if v is None else v!s}: {c:,}" for v, c in values[:5])
    more = ", ..." if len(values) > 5 else ""
    return f"  ({shown}{more})"


def _name(v: Any) -> str:
    return str(_json_value(v))


def _class_table(s: Scores) -> list[str]:
    names = [_name(c) for c in s.classes]
    w = max(5, *(len(n) for n in names))
    lines = [f"  {'class':<{w}}  precision    recall        f1     support"]
    p, r, f, sup = s.precision, s.recall, s.f1, s.support
    for k, name in enumerate(names):
        lines.append(f"  {name:<{w}}  {p[k]:9.4f} {r[k]:9.4f} {f[k]:9.4f} {sup[k]:11,}")
    m = s.macro()
    lines.append(
        f"  {'macro':<{w}}  {m['precision']:9.4f} {m['recall']:9.4f} {m['f1']:9.4f} "
        f"{int(sup.sum()):11,}"
    )
    return lines


def _confusion_table(s: Scores) -> list[str]:
    names = [_name(c) for c in s.classes]
    rows = [*names, NOT_A_CLASS] if s.unknown.any() else names
    matrix = np.vstack([s.confusion, s.unknown[None, :]]) if s.unknown.any() else s.confusion
    cols = [*names, NO_PREDICTION]
    first = max(len(CORNER), *(len(r) for r in rows))
    w = max(max(len(c) for c in cols), len(f"{int(matrix.max(initial=0)):,}")) + 2
    lines = [
        "  confusion matrix (rows: true class, columns: predicted class):",
        f"  {CORNER:<{first}}" + "".join(f"{c:>{w}}" for c in cols),
    ]
    for name, row in zip(rows, matrix, strict=True):
        lines.append(f"  {name:<{first}}" + "".join(f"{int(v):>{w},}" for v in row))
    return lines


def _baseline_block(b: Baseline, ev: Evaluation) -> list[str]:
    params = ", ".join(f"{k}={v}" for k, v in b.params.items())
    sample = (
        f"a random subsample (seed {b.seed}) of {b.train_rows:,} of {b.train_available:,}"
        if b.subsampled
        else f"all {b.train_rows:,}"
    )
    s = b.scores
    lines = [
        f"baseline {b.name} ({params}), fitted on {sample} training points in the grid",
        f"  accuracy          {_pct(s.accuracy)}  ({s.correct:,} correct; "
        f"{_below(s.accuracy - ev.accuracy, 'gridflow')})",
    ]
    if ev.bayes_rate is not None:
        lines.append(
            f"  Bayes rate        {_pct(ev.bayes_rate)}  "
            f"({_below(ev.bayes_rate - s.accuracy, b.name)})"
        )
    lines += [
        f"  macro F1          {s.macro()['f1']:.4f}",
        f"  fit time          {b.fit_seconds:.2f} s",
        f"  predict time      {b.predict_seconds:.2f} s  (gridflow predict "
        f"{ev.predict_seconds:.2f} s, reading the points included)",
        "",
        *_class_table(s),
        "",
        *_confusion_table(s),
    ]
    return lines


# --- true labels -> class indices --------------------------------------------------------


@dataclass(frozen=True)
class _LabelMap:
    """Maps a block's label column onto the grid's class indices, by value.

    The rules of binning: numeric labels match numeric class names by
    numeric value, strings match strings exactly, category codes go through
    their categories; anything else (missing, other values, numbers against
    string classes) is -1.
    """

    names: tuple
    kind: str  # "int", "float", "str", "category" (labels arrive as codes)
    categories: tuple | None = None

    def codes(self, labels: np.ndarray) -> np.ndarray:
        if self.kind == "category":
            index = {n: i for i, n in enumerate(self.names)}
            cats = self.categories or ()
            table = np.array([index.get(c, -1) for c in cats] + [-1], dtype=np.int64)
            return table[np.asarray(labels, dtype=np.int64)]  # code -1 reads the trailing -1
        if self.kind in ("int", "float"):
            if not _numeric(self.names):
                return np.full(len(labels), -1, dtype=np.int64)  # 3 is never "3"
            return _numeric_codes(np.asarray(labels), np.asarray(self.names, dtype=np.float64))
        # Hash lookup by value; missing values and other labels give -1.
        index = pd.Index(list(self.names), dtype=object)
        return index.get_indexer(np.asarray(labels, dtype=object)).astype(np.int64)

    def values(self, labels: np.ndarray) -> np.ndarray:
        """The label values themselves (category codes resolved), as objects."""
        if self.kind == "category":
            cats = np.array([*(self.categories or ()), None], dtype=object)
            return cats[np.asarray(labels, dtype=np.int64)]
        return np.asarray(labels, dtype=object)


def _numeric(names: tuple) -> bool:
    return all(
        isinstance(n, (int, float, np.integer, np.floating)) and not isinstance(n, bool)
        for n in names
    )


def _numeric_codes(labels: np.ndarray, names: np.ndarray) -> np.ndarray:
    if labels.dtype.kind == "b":
        labels = labels.view(np.int8)
    order = np.argsort(names, kind="stable")
    ordered = names[order]
    with np.errstate(invalid="ignore"):
        values = labels.astype(np.float64)
    i = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return np.where(ordered[i] == values, order[i], -1).astype(np.int64)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v is pd.NA


def _truth_block(
    block: Block, bayes: Block | None, lmap: _LabelMap, bmap: _LabelMap | None
) -> tuple:
    """True class indices of a block, its unknown labels, and its Bayes hits."""
    codes = lmap.codes(block.labels)
    bad = codes < 0
    unknown: Counter = Counter()
    if bad.any():
        for v, c in pd.Series(lmap.values(block.labels[bad])).value_counts(dropna=False).items():
            unknown[None if _missing(v) else _json_value(v)] += int(c)
    hits = None
    if bayes is not None and bmap is not None:
        truth = lmap.values(block.labels)
        best = bmap.values(bayes.labels)
        if len(best) != len(truth):
            raise RuntimeError("gridflow.evaluate: the label and bayes blocks differ in length")
        # Compared by value: 1 == 1.0, "1" != 1; a missing label never matches.
        hits = int(((truth == best) & ~pd.isna(truth)).sum())
    return codes, unknown, hits


# --- inputs ------------------------------------------------------------------------------


def _check_classified(ds: Any) -> None:
    from gridflow.store import refuse_incomplete

    refuse_incomplete(ds, "label", needed_by="evaluate")
    if "label" not in ds.data_vars:
        have = ", ".join(map(str, ds.data_vars)) or "none"
        raise StoreError(
            f"store: the grid has no 'label' variable (it has: {have}); it is not classified: "
            "run `gridflow classify` on it first"
        )


def _parse_baseline(baseline: str | None, train: Any, neighbors: int, max_train: int) -> None:
    if baseline is None:
        return
    if baseline not in BASELINES:
        raise ParameterError(
            f"baseline: expected None or one of {', '.join(map(repr, BASELINES))}, got {baseline!r}"
        )
    if train is None:
        raise ParameterError(
            f"train: baseline={baseline!r} is fitted on the training points the grid was "
            "built from, which the store does not hold; pass them with train= (--train POINTS)"
        )
    for name, value in (("neighbors", neighbors), ("max_train", max_train)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ParameterError(f"{name}: expected a positive integer, got {value!r}")


def _knn_class() -> Any:
    try:
        from sklearn.neighbors import KNeighborsClassifier
    except ImportError:
        raise ParameterError(
            f"baseline: 'knn' needs scikit-learn, which is not installed; {INSTALL_HINT}"
        ) from None
    return KNeighborsClassifier


def _describe(x: Any) -> str:
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    return type(x).__name__


def _class_names(ds: Any) -> tuple:
    if "class" not in ds.coords:
        raise StoreError(
            "store: the grid has no 'class' coordinate; recreate it with `gridflow bin`"
        )
    return tuple(_json_value(v) for v in np.asarray(ds["class"].values).tolist())


# --- scoring --------------------------------------------------------------------------------


def _scores(classes: tuple, truth: np.ndarray, predicted: np.ndarray) -> Scores:
    k = len(classes)
    if len(truth) != len(predicted):
        raise RuntimeError(
            f"gridflow.evaluate: {len(predicted)} predictions for {len(truth)} labeled rows"
        )
    if len(predicted) and predicted.max(initial=-1) >= k:
        raise StoreError(
            f"store: a label ({int(predicted.max())}) is not a class index (there are {k} "
            "classes); the labels variable does not match the class coordinate"
        )
    pred = np.where(predicted < 0, k, predicted).astype(np.int64)
    known = truth >= 0
    confusion = np.bincount(truth[known] * (k + 1) + pred[known], minlength=k * (k + 1))
    unknown = np.bincount(pred[~known], minlength=k + 1)
    return Scores(classes, confusion.reshape(k, k + 1).astype(np.int64), unknown.astype(np.int64))


# --- the kNN baseline -------------------------------------------------------------------------


def _features(cols: Sequence[np.ndarray], spec: GridSpec) -> np.ndarray:
    """``(n, d)`` float64 coordinates, periodic dims reduced into their period box."""
    x = np.column_stack([np.asarray(c, dtype=np.float64) for c in cols])
    for i, (lo, hi) in enumerate(spec.bounds):
        if spec.periodic[i]:
            v = x[:, i]
            outside = (v < lo) | (v >= hi)
            if outside.any():
                with np.errstate(invalid="ignore"):
                    t = np.fmod(v[outside] - lo, hi - lo)
                x[outside, i] = lo + np.where(t < 0, t + (hi - lo), t)
    return x


def _train_rows(block: Block, lmap: _LabelMap, spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a training block that binning counts: in the grid, with a known class."""
    x = np.column_stack([np.asarray(c, dtype=np.float64) for c in block.columns])
    codes = lmap.codes(block.labels)
    keep = (codes >= 0) & (spec.cell_index(x)[:, 0] >= 0)
    return np.flatnonzero(keep), codes


def _count_train(block: Block, lmap: _LabelMap, spec: GridSpec) -> int:
    return len(_train_rows(block, lmap, spec)[0])


def _take_train(
    block: Block, lmap: _LabelMap, spec: GridSpec, take: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    rows, codes = _train_rows(block, lmap, spec)
    if take is not None:
        rows = rows[take]
    return _features([np.asarray(c)[rows] for c in block.columns], spec), codes[rows]


def _training_set(
    train: Any,
    columns: tuple[str, ...],
    label: str,
    names: tuple,
    spec: GridSpec,
    *,
    max_train: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    src = open_points(train, columns=columns, label=label)
    lmap = _LabelMap(names, src.label_kind or "str", src.categories)
    counts = dask.compute(*[dask.delayed(_count_train)(b, lmap, spec) for b in src.blocks])
    available = int(sum(counts))
    if available == 0:
        raise InputDataError(
            f"train: none of the rows of {src.description} lies in the grid with one of its "
            "classes; pass the points the grid was built from"
        )
    takes: list[np.ndarray | None] = [None] * len(counts)
    if available > max_train:
        chosen = np.sort(np.random.default_rng(seed).choice(available, max_train, replace=False))
        starts = np.cumsum([0, *counts])
        takes = [chosen[(chosen >= a) & (chosen < b)] - a for a, b in itertools.pairwise(starts)]
    parts = dask.compute(
        *[
            dask.delayed(_take_train)(b, lmap, spec, t)
            for b, t in zip(src.blocks, takes, strict=True)
        ]
    )
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return x, y, available


def _knn(
    test: PointSource,
    spec: GridSpec,
    names: tuple,
    truth: np.ndarray,
    *,
    train: Any,
    label: str,
    neighbors: int,
    max_train: int,
    seed: int,
) -> Baseline:
    knn_class = _knn_class()
    x, y, available = _training_set(
        train, test.columns, label, names, spec, max_train=max_train, seed=seed
    )
    if neighbors > len(x):
        raise ParameterError(
            f"neighbors: {neighbors} neighbours need at least as many training rows, got {len(x)}"
        )
    model = knn_class(n_neighbors=neighbors, n_jobs=-1)
    t0 = time.perf_counter()
    model.fit(x, y)
    fit_seconds = time.perf_counter() - t0
    log.info("fitted %s-NN on %s rows in %.2f s", neighbors, f"{len(x):,}", fit_seconds)

    predict_seconds = 0.0
    out = []
    for blk in test.blocks:  # one block in memory at a time
        (block,) = dask.compute(blk)
        feats = _features(block.columns, spec)
        codes = np.full(len(feats), -1, dtype=np.int64)
        finite = np.isfinite(feats).all(axis=1)
        if finite.any():
            t0 = time.perf_counter()
            codes[finite] = model.predict(feats[finite])
            predict_seconds += time.perf_counter() - t0
        out.append(codes)
    predicted = np.concatenate(out) if out else np.empty(0, dtype=np.int64)
    return Baseline(
        name="knn",
        params={"n_neighbors": neighbors},
        scores=_scores(names, truth, predicted),
        fit_seconds=fit_seconds,
        predict_seconds=predict_seconds,
        train_rows=len(x),
        train_available=available,
        subsampled=available > max_train,
        seed=seed,
    )


# --- the public function ----------------------------------------------------------------------


def evaluate(
    grid: Any,
    points: Any,
    *,
    label: str = "label",
    columns: Sequence[str] | str | None = None,
    bayes: str | None = "bayes",
    baseline: str | None = None,
    train: Any = None,
    neighbors: int = 15,
    max_train: int = 1_000_000,
    seed: int = 0,
) -> Evaluation:
    """Score a classified grid on labeled test points.

    Parameters
    ----------
    grid : xarray.Dataset or path
        A classified grid (it holds ``label``: run :func:`gridflow.classify`).
    points : path, DataFrame or mapping
        Labeled test points: any source :func:`gridflow.open_points` accepts
        that carries the ``label`` column.
    label : str, default "label"
        Label column of the test (and training) points.
    columns : sequence of str or str, optional
        Point columns for the grid's dims, in dim order; default the dim names.
    bayes : str or None, default "bayes"
        Column holding the Bayes-optimal class (written by
        :func:`gridflow.synth.write_points` with ``bayes=True``); the Bayes
        rate is reported when the points have it. None: ignore it.
    baseline : {None, "knn"}
        Also score a scikit-learn ``KNeighborsClassifier(n_neighbors=neighbors)``
        fitted on ``train`` (needs scikit-learn: ``pip install 'gridflow[bench]'``).
    train : path, DataFrame or mapping
        The training points the grid was built from; required with ``baseline``.
        Rows binning would drop (outside the grid, label not a class) are left
        out, as they are from the grid.
    neighbors : int, default 15
        ``n_neighbors`` of the kNN baseline.
    max_train : int, default 1_000_000
        Fit the baseline on at most this many training rows, a uniform random
        subsample drawn with ``seed`` (the report says when it is one).
    seed : int, default 0

    Returns
    -------
    Evaluation
        Accuracy, per-class precision / recall / F1 / support, the confusion
        matrix (rows: true class; columns: predicted class, then no
        prediction), the unknown true labels, the Bayes rate, the baseline.
        ``format()`` gives a text report, ``to_dict()`` JSON-safe values.

    Raises
    ------
    StoreError
        The grid is not classified (no ``label``: run ``gridflow classify``).
    InputDataError
        The points lack the label or a coordinate column.
    ParameterError
        An unknown baseline, or a baseline without ``train``.

    Examples
    --------
    >>> ev = evaluate("grid.zarr", "test.parquet")  # doctest: +SKIP
    >>> print(f"{ev.accuracy:.3f} (Bayes {ev.bayes_rate:.3f})")  # doctest: +SKIP
    0.871 (Bayes 0.880)
    """
    _parse_baseline(baseline, train, neighbors, max_train)
    if baseline is not None:
        _knn_class()  # fail before any work when scikit-learn is missing
    ds = as_grid(grid)
    _check_classified(ds)
    spec = grid_spec(ds)
    names = _class_names(ds)
    cols = parse_columns(columns, spec)

    src = open_points(points, columns=cols, label=label, require_label=True)
    lmap = _LabelMap(names, src.label_kind or "str", src.categories)
    bsrc = bmap = None
    if bayes is not None and bayes != label:
        bsrc = open_points(points, columns=cols, label=bayes, require_label=False)
        if bsrc.label is None or bsrc.npartitions != src.npartitions:
            bsrc = None
        else:
            bmap = _LabelMap(names, bsrc.label_kind or "str", bsrc.categories)
    pairs = zip(src.blocks, bsrc.blocks if bsrc else [None] * src.npartitions, strict=True)
    parts = dask.compute(*[dask.delayed(_truth_block)(b, bb, lmap, bmap) for b, bb in pairs])
    truth = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, dtype=np.int64)
    unknown: Counter = Counter()
    for p in parts:
        unknown.update(p[1])

    t0 = time.perf_counter()
    result = predict(ds, points, columns=cols)
    predict_seconds = time.perf_counter() - t0
    scores = _scores(names, truth, result.codes)
    if scores.n == 0:
        raise InputDataError(f"points: {src.description} holds no rows; nothing to evaluate")

    bayes_rate = None
    if bsrc is not None:
        bayes_rate = sum(p[2] for p in parts) / scores.n

    ev = Evaluation(
        scores=scores,
        label=label,
        predict_report=dict(result.report),
        predict_seconds=predict_seconds,
        unknown_labels=unknown.most_common(MAX_UNKNOWN_SHOWN),
        bayes_rate=bayes_rate,
        bayes_column=bayes if bsrc is not None else None,
        store=_describe(grid),
        points=_describe(points),
    )
    if unknown:
        log.warning(
            "%s test points have a label that is not a class of the grid (counted as errors)",
            f"{sum(unknown.values()):,}",
        )
    if baseline is not None:
        ev.baseline = _knn(
            src,
            spec,
            names,
            truth,
            train=train,
            label=label,
            neighbors=neighbors,
            max_train=max_train,
            seed=seed,
        )
    log.info("accuracy %.4f on %s points", ev.accuracy, f"{ev.n:,}")
    return ev
