"""Tests of gridflow.synth: invariance, laws, exact densities, Parquet output."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal
from scipy import stats
from scipy.special import logsumexp

from gridflow import synth
from gridflow.errors import GridflowError, InputDataError, ParameterError
from gridflow.synth import PointProcess, make_points, read_synth_metadata, write_points

SCIPY_LAW = {"logistic": stats.logistic, "uniform": stats.uniform(-1, 2), "cauchy": stats.cauchy}


def _law_logpdf(distribution: str, v: np.ndarray, gamma: float) -> np.ndarray:
    """log density of gamma * e at v, e from the standard law."""
    return SCIPY_LAW[distribution].logpdf(v / gamma) - math.log(gamma)


# --- brute-force densities ----------------------------------------------------------


def _brute_log_density(process: PointProcess, x: np.ndarray) -> np.ndarray:
    """log(w_c * density_c(x)) by summing over every lattice point (and torus translate).

    The d-dim sum runs over the product set directly (it does not assume the
    factorisation the module uses): point = h + shift + e (mod 1), so the
    torus density at x is the mean over h of sum over m of f(x + m - h - shift).
    """
    d, extent = process.dims, process.extent
    lattice = np.arange(-extent, extent + 1)
    out = np.empty((len(x), process.classes))
    for c in range(process.classes):
        gamma = process.scale * process.stretch_[c]
        if process.modulo:
            reach = max(math.ceil(45 * gamma.max()), 1) + 2
            translates = np.arange(-reach, reach + 1)
            offsets_1d = (translates[:, None] - lattice[None, :]).ravel()
        else:
            offsets_1d = -lattice
        offsets = np.array(list(itertools.product(offsets_1d, repeat=d)), dtype=np.float64)
        for i, point in enumerate(x):
            v = point[None, :] + offsets - process.shifts_[c][None, :]
            logp = sum(_law_logpdf(process.distribution, v[:, j], gamma[j]) for j in range(d))
            out[i, c] = logsumexp(logp) - d * math.log(2 * extent + 1)
        out[:, c] += math.log(process.weights_[c])
    return out


def _brute_wrapped_cauchy_1d(process: PointProcess, x: np.ndarray) -> np.ndarray:
    """1-D torus Cauchy: 2 * 10**5 translates plus the integral of the tails."""
    reach = 100_000
    m = np.arange(-reach, reach + 1)
    out = np.empty((len(x), process.classes))
    for c in range(process.classes):
        gamma, shift = process.scale * process.stretch_[c, 0], process.shifts_[c, 0]
        for i, xi in enumerate(x[:, 0]):
            t = xi - shift - np.rint(xi - shift)
            total = stats.cauchy.pdf((t + m) / gamma).sum() / gamma
            total += (
                math.atan(gamma / (t + reach + 0.5)) + math.atan(gamma / (reach + 0.5 - t))
            ) / (math.pi)
            out[i, c] = math.log(total) + math.log(process.weights_[c])
    return out


def _test_points(process: PointProcess, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if process.modulo:
        x = rng.uniform(0, 1, (n, process.dims))
        anchors = np.mod(process.shifts_, 1.0)  # exactly on a lattice point
    else:
        span = process.extent + 2.5
        x = rng.uniform(-span, span, (n, process.dims))
        anchors = process.shifts_ + process.extent  # on the last lattice point
    sampled = process.sample(0, n).iloc[:, : process.dims].to_numpy()
    return np.concatenate([x, anchors, sampled])


def _assert_log_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert (np.isfinite(got) == np.isfinite(expected)).all()
    finite = np.isfinite(expected)
    # 1e-9 relative on the density is 1e-9 absolute on its log.
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=1e-9)


DENSITY_CASES = [
    # dims, distribution, modulo, scale, stretch: the scales straddle the
    # logistic's series/Fourier switch and the uniform's wrap-around.
    (1, "logistic", True, 0.15, [0.1, 1.0, 1.9, 3.5, 14.0]),
    (1, "uniform", True, 0.3, [0.3, 1.0, 2.4, 5.5, 0.05]),
    (1, "logistic", False, 0.15, [0.1, 1.0, 1.9, 3.5, 14.0]),
    (1, "uniform", False, 0.3, [0.3, 1.0, 2.4, 5.5, 0.05]),
    (1, "cauchy", False, 0.2, [0.1, 1.0, 4.0, 10.0, 0.5]),
    (2, "logistic", True, 0.15, [[1.0, 2.0], [0.4, 1.0], [3.0, 0.2], [1.0, 1.0], [0.5, 0.5]]),
    (2, "uniform", True, 0.3, [[1.0, 2.0], [0.4, 1.0], [3.0, 0.2], [1.0, 1.0], [0.5, 0.5]]),
    (2, "logistic", False, 0.15, [[1.0, 2.0], [0.4, 1.0], [3.0, 0.2], [1.0, 1.0], [0.5, 0.5]]),
    (2, "uniform", False, 0.3, [[1.0, 2.0], [0.4, 1.0], [3.0, 0.2], [1.0, 1.0], [0.5, 0.5]]),
    (2, "cauchy", False, 0.2, [[1.0, 2.0], [0.4, 1.0], [3.0, 0.2], [1.0, 1.0], [0.5, 0.5]]),
]


@pytest.mark.parametrize(("dims", "distribution", "modulo", "scale", "stretch"), DENSITY_CASES)
def test_log_density_equals_brute_force(dims, distribution, modulo, scale, stretch):
    process = PointProcess(
        dims=dims,
        classes=5,
        scale=scale,
        seed=11,
        extent=2,
        distribution=distribution,
        stretch=stretch,
        weights=[1, 2, 3, 4, 5],
        modulo=modulo,
    )
    x = _test_points(process, 12 if dims == 2 else 40)
    got = process.log_density(x)
    expected = _brute_log_density(process, x)
    _assert_log_close(got, expected)
    expected_class = np.argmax(expected, axis=1)
    assert (process.bayes_class(x) == expected_class).all()


def test_wrapped_cauchy_equals_brute_force():
    process = PointProcess(
        dims=1, classes=4, scale=0.1, stretch=[0.05, 1.0, 3.0, 12.0], distribution="cauchy", seed=3
    )
    x = _test_points(process, 15)
    _assert_log_close(process.log_density(x), _brute_wrapped_cauchy_1d(process, x))


def test_torus_density_does_not_depend_on_extent():
    x = _test_points(PointProcess(dims=2), 50)
    reference = PointProcess(dims=2, extent=0).log_density(x)
    for extent in (1, 7, 1000):
        np.testing.assert_array_equal(PointProcess(dims=2, extent=extent).log_density(x), reference)


def test_tiny_scale_keeps_classes_apart():
    # Densities underflow in linear space here; the ranking must survive.
    process = PointProcess(dims=1, classes=3, scale=1e-3, shifts=[0.1, 0.4, 0.8])
    x = np.array([[0.12], [0.30], [0.55], [0.97]])
    assert np.isfinite(process.log_density(x)).all()
    assert process.bayes_class(x).tolist() == [0, 1, 1, 0]


# --- sampling -------------------------------------------------------------------------


def test_partitions_do_not_change_the_data():
    kwargs = {"dims": 2, "classes": 4, "scale": 0.1, "seed": 5, "bayes": True}
    frames = [make_points(3001, npartitions=p, **kwargs).compute() for p in (1, 3, 7)]
    for frame in frames[1:]:
        assert_frame_equal(frame, frames[0])
    assert_frame_equal(
        frames[0], PointProcess(dims=2, classes=4, scale=0.1, seed=5).sample(0, 3001, bayes=True)
    )
    ddf = make_points(3001, npartitions=7, **kwargs)
    assert ddf.known_divisions and ddf.divisions[0] == 0 and ddf.divisions[-1] == 3000


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 600), max_size=6))
def test_sample_pieces_concatenate_to_the_whole(cuts):
    process = PointProcess(dims=3, classes=4, distribution="cauchy", seed=9)
    edges = [0, *sorted(cuts), 600]
    pieces = [process.sample(a, b, bayes=True) for a, b in itertools.pairwise(edges)]
    assert_frame_equal(pd.concat(pieces), process.sample(0, 600, bayes=True))


def test_column_projection_skips_nothing_it_needs():
    ddf = make_points(2000, npartitions=3, bayes=True, columns=["a", "b"], seed=1)
    full = ddf.compute()
    assert list(full.columns) == ["a", "b", "label", "bayes"]
    assert_frame_equal(ddf[["a", "label"]].compute(), full[["a", "label"]])
    pd.testing.assert_series_equal(ddf["bayes"].compute(), full["bayes"])


def test_sample_dtypes_names_and_bayes_column():
    process = PointProcess(dims=3, classes=4, seed=2)
    frame = process.sample(10, 510, columns="u,v,w", bayes=True)
    assert list(frame.columns) == ["u", "v", "w", "label", "bayes"]
    assert frame.index.equals(pd.RangeIndex(10, 510))
    assert (frame.dtypes.iloc[:3] == np.float64).all()
    assert frame["label"].dtype == np.int64 and frame["bayes"].dtype == np.int64
    x = frame[["u", "v", "w"]].to_numpy()
    np.testing.assert_array_equal(frame["bayes"].to_numpy(), process.bayes_class(x))
    empty = process.sample(3, 3, bayes=True)
    assert len(empty) == 0 and empty["label"].dtype == np.int64


def test_labels_follow_the_weights():
    n = 100_000
    process = PointProcess(classes=4, weights=[5, 3, 2, 0], seed=8)
    labels = process.sample(0, n)["label"].to_numpy()
    freq = np.bincount(labels, minlength=4) / n
    expected = np.array([0.5, 0.3, 0.2, 0.0])
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert freq[3] == 0
    assert (np.abs(freq - expected) <= 6 * sigma).all()
    np.testing.assert_allclose(process.weights_, expected)


def test_perturbation_follows_the_logistic():
    # A large lattice and a small scale: folding to the nearest lattice point
    # recovers the perturbation, which must be logistic(scale * stretch).
    scale, stretch = 0.04, [1.0, 2.5]
    process = PointProcess(
        dims=2, classes=2, scale=scale, stretch=stretch, extent=1000, modulo=False, seed=4
    )
    frame = process.sample(0, 20_000)
    for c in range(2):
        rows = frame[frame["label"] == c]
        for j in range(2):
            v = rows[f"x{j}"].to_numpy() - process.shifts_[c, j]
            e = v - np.rint(v)
            law = stats.logistic(scale=scale * stretch[c])
            assert stats.kstest(e, law.cdf).pvalue > 1e-4
            # The lattice points spread over the whole extent.
            assert np.rint(v).min() < -900 and np.rint(v).max() > 900


@pytest.mark.parametrize("distribution", synth.DISTRIBUTIONS)
def test_perturbation_law_on_a_single_lattice_point(distribution):
    # extent=0: x = shift + scale * stretch * e exactly.
    process = PointProcess(
        dims=2, classes=2, scale=0.3, stretch=[[1.0, 2.0], [0.5, 4.0]], extent=0, modulo=False,
        distribution=distribution, seed=6,
    )  # fmt: skip
    frame = process.sample(0, 20_000)
    for c in range(2):
        rows = frame[frame["label"] == c]
        for j in range(2):
            e = (
                (rows[f"x{j}"].to_numpy() - process.shifts_[c, j])
                / process.scale
                / process.stretch_[c, j]
            )
            assert stats.kstest(e, SCIPY_LAW[distribution].cdf).pvalue > 1e-4


def test_lattice_points_are_uniform():
    n, extent = 70_000, 3
    process = PointProcess(
        dims=2, classes=1, scale=0.2, extent=extent, distribution="uniform", modulo=False
    )
    frame = process.sample(0, n)
    for j in range(2):
        h = np.rint(frame[f"x{j}"].to_numpy() - process.shifts_[0, j]).astype(np.int64)
        freq = np.bincount(h + extent, minlength=2 * extent + 1) / n
        p = 1 / (2 * extent + 1)
        assert np.abs(freq - p).max() < 6 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(
    ("distribution", "scale"), [("logistic", 0.15), ("uniform", 0.7), ("cauchy", 5.0)]
)
def test_modulo_is_the_fractional_part(distribution, scale):
    kwargs = {"dims": 2, "classes": 3, "scale": scale, "distribution": distribution, "seed": 12}
    on_torus = PointProcess(**kwargs).sample(0, 50_000)
    plane = PointProcess(**kwargs, modulo=False).sample(0, 50_000)
    x = on_torus[["x0", "x1"]].to_numpy()
    assert (x >= 0).all() and (x < 1).all()
    y = plane[["x0", "x1"]].to_numpy()
    frac = y - np.floor(y)
    frac[frac >= 1] = 0
    np.testing.assert_array_equal(x, frac)
    np.testing.assert_array_equal(on_torus["label"], plane["label"])


def test_modulo_never_returns_one():
    # Tiny negative coordinates round to 1.0 under x - floor(x); 1 is 0 on the torus.
    process = PointProcess(dims=1, classes=1, scale=1e-30, shifts=[0.0], extent=0)
    x = process.sample(0, 1000)["x0"].to_numpy()
    assert (x >= 0).all() and (x < 1).all()
    assert (x == 0).sum() > 300


def test_bounds_and_periodic():
    assert PointProcess(dims=3).bounds == ((0.0, 1.0),) * 3
    assert PointProcess(dims=3).periodic == (True, True, True)
    for distribution, min_inside in [("logistic", 0.999), ("uniform", 1.0)]:
        process = PointProcess(dims=2, extent=4, modulo=False, distribution=distribution, seed=1)
        assert process.periodic == (False, False)
        x = process.sample(0, 20_000)[["x0", "x1"]].to_numpy()
        lo = np.array([b[0] for b in process.bounds])
        hi = np.array([b[1] for b in process.bounds])
        inside = ((x >= lo) & (x <= hi)).all(axis=1).mean()
        assert inside >= min_inside
        # ... and not padded beyond reason: the data reach near the edges.
        assert (x.min(axis=0) - lo < 1.0).all() and (hi - x.max(axis=0) < 1.0).all()


# --- Bayes classifier -------------------------------------------------------------------


def test_bayes_is_near_perfect_for_separated_classes():
    process = PointProcess(dims=2, classes=2, scale=0.02, shifts=[[0, 0], [0.5, 0.5]], seed=3)
    frame = process.sample(0, 20_000, bayes=True)
    assert (frame["bayes"] == frame["label"]).mean() > 0.999


def test_bayes_is_near_chance_for_heavy_overlap():
    n, k = 20_000, 4
    frame = PointProcess(dims=2, classes=k, scale=2.0, seed=3).sample(0, n, bayes=True)
    accuracy = (frame["bayes"] == frame["label"]).mean()
    assert abs(accuracy - 1 / k) < 6 * math.sqrt((1 / k) * (1 - 1 / k) / n)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the reference setting: 5 classes, s = 0.15, logistic, torus
        {"dims": 3, "classes": 3, "distribution": "cauchy", "modulo": False, "extent": 2},
        {"dims": 1, "classes": 4, "distribution": "uniform", "scale": 0.4, "weights": [4, 3, 2, 1]},
        {"dims": 2, "classes": 3, "scale": 0.5, "stretch": [0.5, 1.0, 2.0]},
    ],
)
def test_bayes_accuracy_matches_the_posterior(kwargs):
    # If log_density is the law the points were drawn from, the Bayes rule is
    # right with probability max_c posterior_c(x) at each point.
    n = 40_000
    process = PointProcess(seed=21, **kwargs)
    frame = process.sample(0, n, bayes=True)
    x = frame.iloc[:, : process.dims].to_numpy()
    log_joint = process.log_density(x)
    posterior = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    predicted = posterior.max(axis=1).mean()
    accuracy = (frame["bayes"] == frame["label"]).mean()
    assert abs(accuracy - predicted) < 6 * math.sqrt(predicted * (1 - predicted) / n)
    # The posterior of each class averages to its weight.
    sigma = np.sqrt(process.weights_ * (1 - process.weights_) / n)
    assert (np.abs(posterior.mean(axis=0) - process.weights_) < 6 * sigma).all()


def test_bayes_class_of_non_finite_points():
    process = PointProcess(dims=2)
    out = process.bayes_class([[0.1, 0.2], [np.nan, 0.3], [0.5, np.inf]])
    assert out[1:].tolist() == [-1, -1] and out[0] >= 0
    assert out.dtype == np.int64


# --- Parquet output ---------------------------------------------------------------------


def test_write_points_round_trip(tmp_path):
    path = tmp_path / "points"
    process = write_points(
        path, 2500, npartitions=3, bayes=True, columns=("a", "b"), classes=3, seed=7, scale=0.1
    )
    assert isinstance(process, PointProcess)
    expected = process.sample(0, 2500, columns=("a", "b"), bayes=True).reset_index(drop=True)
    assert_frame_equal(pd.read_parquet(path), expected)
    meta = read_synth_metadata(path)
    assert meta["columns"] == ["a", "b"]
    assert meta["label"] == "label" and meta["bayes"] == "bayes"
    assert meta["n_points"] == 2500
    assert meta["bounds"] == [[0.0, 1.0], [0.0, 1.0]] and meta["periodic"] == [True, True]
    assert meta["process"] == process.to_dict()
    rebuilt = PointProcess.from_dict(meta["process"])
    assert_frame_equal(rebuilt.sample(0, 100), process.sample(0, 100))
    # A single file of the dataset carries the same metadata.
    one_file = sorted(path.glob("*.parquet"))[-1]
    assert read_synth_metadata(one_file) == meta
    # Nothing is left next to the dataset.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points"]


def test_write_points_plane_metadata(tmp_path):
    process = write_points(tmp_path / "p", 100, dims=3, modulo=False, extent=2, seed=1)
    meta = read_synth_metadata(tmp_path / "p")
    assert meta["periodic"] == [False] * 3
    assert meta["bounds"] == [list(b) for b in process.bounds]
    assert meta["bayes"] is None
    json.dumps(meta)  # plain JSON types only


def test_write_points_refuses_an_existing_path(tmp_path):
    path = tmp_path / "points"
    path.mkdir()
    (path / "keep.txt").write_text("precious")
    with pytest.raises(ParameterError, match=r"already exists.*overwrite=True") as info:
        write_points(path, 100)
    assert str(path) in str(info.value)
    assert [p.name for p in path.iterdir()] == ["keep.txt"]
    assert (path / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["points"]
    # Not gridflow's: refused even with overwrite.
    with pytest.raises(ParameterError, match="gridflow did not write it") as info:
        write_points(path, 100, overwrite=True, seed=2)
    assert str(path) in str(info.value)
    assert [p.name for p in path.iterdir()] == ["keep.txt"]
    assert (path / "keep.txt").read_text() == "precious"

    mine = tmp_path / "mine"
    write_points(mine, 50, seed=1)
    write_points(mine, 100, overwrite=True, seed=2)
    assert len(pd.read_parquet(mine)) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "points"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    old = tmp_path / "old"
    write_points(old, 50, seed=1)
    before = pd.read_parquet(old)
    monkeypatch.setattr(synth.process, "_partition", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_points(tmp_path / "new", 50)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_points(old, 50, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert_frame_equal(pd.read_parquet(old), before)


def test_read_synth_metadata_of_other_data(tmp_path):
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(tmp_path / "plain.parquet")
    assert read_synth_metadata(tmp_path / "plain.parquet") is None
    with pytest.raises(InputDataError, match="does not exist"):
        read_synth_metadata(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="no Parquet files"):
        read_synth_metadata(tmp_path / "empty")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputDataError, match="cannot read"):
        read_synth_metadata(tmp_path / "junk.parquet")


# --- parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": 0}, "dims"),
        ({"dims": 2.5}, "dims"),
        ({"dims": True}, "dims"),
        ({"classes": 0}, "classes"),
        ({"scale": 0}, "scale"),
        ({"scale": -0.1}, "scale"),
        ({"scale": math.nan}, "scale"),
        ({"scale": "big"}, "scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 0.5}, "seed"),
        ({"extent": -1}, "extent"),
        ({"extent": 2**31}, "extent"),
        ({"distribution": "normal"}, "distribution: expected one of logistic, uniform, cauchy"),
        ({"shifts": [[0, 0]] * 4}, r"shifts: expected shape \(classes, dims\) = \(5, 2\)"),
        ({"shifts": [[0, math.inf]] * 5}, "shifts: expected finite"),
        ({"stretch": [1, 2]}, "stretch"),
        ({"stretch": -1}, "stretch: expected positive"),
        ({"stretch": [[1, 1, 1]] * 5}, "stretch"),
        ({"weights": [1, 1]}, "weights: expected one weight per class"),
        ({"weights": [1, -1, 1, 1, 1]}, "weights: expected non-negative"),
        ({"weights": [0] * 5}, "positive sum"),
        ({"modulo": "yes"}, "modulo"),
    ],
)
def test_bad_process_parameters(kwargs, match):
    with pytest.raises(ParameterError, match=match) as info:
        PointProcess(**kwargs)
    assert "\n" not in str(info.value) and "expected" in str(info.value)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p.sample(-1, 5), "start"),
        (lambda p: p.sample(5, 4), "stop"),
        (lambda p: p.sample(0, 5, columns=["a"]), "columns: expected 2"),
        (lambda p: p.sample(0, 5, columns=["a", "a"]), "columns: expected unique"),
        (lambda p: p.sample(0, 5, columns=["a", "label"]), "columns: expected unique"),
        (lambda p: p.log_density(np.zeros((3, 3))), r"x: expected an array of shape \(n, 2\)"),
        (lambda p: p.to_dask(0), "n_points"),
        (lambda p: p.to_dask(10, npartitions=11), "npartitions"),
        (lambda p: make_points(10, npartitions=0), "npartitions"),
        (lambda p: make_points(10, shift=[0]), None),
        (lambda p: PointProcess.from_dict({"dims": 2, "size": 3}), "unknown parameters"),
    ],
)
def test_bad_call_arguments(call, match):
    process = PointProcess()
    if match is None:
        with pytest.raises(TypeError):
            call(process)
        return
    with pytest.raises(ParameterError, match=match):
        call(process)


def test_parameters_are_canonical_and_hashable():
    process = PointProcess(
        dims=np.int64(1), classes=2, scale=1, distribution="Cauchy", weights=[1, 3]
    )
    assert process.dims == 1 and isinstance(process.scale, float)
    assert process.distribution == "cauchy"
    assert process.weights == (0.25, 0.75)
    assert process == PointProcess(
        dims=1, classes=2, scale=1.0, distribution="cauchy", weights=[2, 6]
    )
    assert (
        len(
            {
                process,
                PointProcess(dims=1, classes=2, scale=1.0, distribution="cauchy", weights=[1, 3]),
            }
        )
        == 1
    )
    assert not process.shifts_.flags.writeable
    assert isinstance(ParameterError("x"), GridflowError)
