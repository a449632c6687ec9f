"""gridflow.filters: window_filter against a pure-Python loop, on every border cell."""

import doctest
import json
import os
import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gridflow
from gridflow import bin_points, filters, open_grid, window_filter
from gridflow.errors import BoundaryWarning, ParameterError
from gridflow.grid import GridSpec
from gridflow.kernels import parse_kernel

# Two class layers of a 5 x 6 grid, and D = A**2 - B**2 written out by hand:
A = np.array(
    [
        [1, 0, 2, 0, 1, 3],
        [0, 1, 0, 2, 0, 0],
        [2, 0, 1, 0, 3, 1],
        [0, 3, 0, 1, 0, 2],
        [1, 0, 2, 0, 1, 0],
    ]
)
B = np.array(
    [
        [0, 2, 0, 1, 0, 1],
        [1, 0, 3, 0, 1, 0],
        [0, 1, 0, 2, 0, 1],
        [2, 0, 1, 0, 1, 0],
        [0, 1, 0, 3, 0, 2],
    ]
)
D = np.array(
    [
        [1, -4, 4, -1, 1, 8],
        [-1, 1, -9, 4, -1, 0],
        [4, -1, 1, -4, 9, 0],
        [-4, 9, -1, 1, -1, 4],
        [1, -1, 4, -9, 1, -4],
    ]
)
SQUARES = "counts[0]**2 - counts[1]**2"


def layered_grid(layers, *, periodic=False, chunks="auto", store=None):
    """A grid whose counts are exactly ``layers`` (class, *dims): one point per
    count at the centre of its cell, bounds (0, n) per dim."""
    layers = np.asarray(layers)
    shape = layers.shape[1:]
    spec = GridSpec(
        tuple(f"x{i}" for i in range(len(shape))),
        bounds=[(0, n) for n in shape],
        bins=shape,
        periodic=periodic,
    )
    points, labels = [], []
    for k, layer in enumerate(layers):
        for cell in np.ndindex(layer.shape):
            points += [np.add(cell, 0.5)] * int(layer[cell])
            labels += [k] * int(layer[cell])
    return bin_points(
        np.array(points),
        store,
        labels=np.array(labels),
        spec=spec,
        classes=list(range(len(layers))),
        chunks=chunks,
    )


def reference(values, weights, boundary, cval=0.0):
    """The windowed sum cell by cell and offset by offset, in plain Python."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    radius = [s // 2 for s in weights.shape]
    out = np.zeros(values.shape)
    for cell in np.ndindex(values.shape):
        total = 0.0
        for off in np.ndindex(weights.shape):
            j = [c + o - r for c, o, r in zip(cell, off, radius, strict=True)]
            if boundary == "periodic":
                v = values[tuple(i % n for i, n in zip(j, values.shape, strict=True))]
            elif all(0 <= i < n for i, n in zip(j, values.shape, strict=True)):
                v = values[tuple(j)]
            else:
                v = 0.0 if boundary == "open" else cval
            total += float(weights[off]) * float(v)
        out[cell] = total
    return out


def border(shape):
    mask = np.ones(shape, bool)
    mask[tuple(slice(1, -1) for _ in shape)] = False
    return mask


BOX3 = np.ones((3, 3))


# --- the hand-computed case ------------------------------------------------------------


def test_hand_computed_layers():
    assert np.array_equal(A**2 - B**2, D)
    ds = layered_grid([A, B])
    assert np.array_equal(ds["counts"].values, [A, B])


@pytest.mark.parametrize(
    ("boundary", "cval", "periodic", "corners"),
    [
        # corners (0,0), (0,5), (4,0), (4,5), summed by hand from D
        ("open", 0.0, False, {(0, 0): -3, (0, 5): 8, (4, 0): 5, (4, 5): 0}),
        # outside cells hold 2: five of a corner's nine are outside
        ("constant", 2.0, False, {(0, 0): 7, (0, 5): 18, (4, 0): 15, (4, 5): 10}),
        # rows 4,0,1 and columns 5,0,1 around (0, 0): -4 + 5 + 0
        ("periodic", 0.0, True, {(0, 0): 1}),
    ],
)
def test_squares_difference_every_border_cell(boundary, cval, periodic, corners):
    ds = layered_grid([A, B], periodic=periodic, chunks=(2, 3))
    out = window_filter(ds, SQUARES, boundary=boundary, cval=cval, name="d")["d"]
    assert out.dims == ("x0", "x1") and out.dtype == np.float64
    got = out.values
    expect = reference(D, BOX3, boundary, cval)
    for cell, value in corners.items():
        assert expect[cell] == value, cell  # the reference agrees with the hand sums
    for cell in zip(*np.nonzero(border(D.shape)), strict=True):
        assert got[cell] == expect[cell], (boundary, cell)
    np.testing.assert_array_equal(got, expect)  # and the interior


def test_open_is_constant_zero_and_windows_shrink():
    ds = layered_grid([A, B])
    a = window_filter(ds, SQUARES, boundary="open", name="a")["a"].values
    b = window_filter(ds, SQUARES, boundary="constant", cval=0, name="b")["b"].values
    assert a.tobytes() == b.tobytes()
    cells = window_filter(ds, "1", boundary="open", name="n")["n"].values
    expect = np.full(D.shape, 9.0)
    expect[[0, -1], :] = 6
    expect[:, [0, -1]] = 6
    expect[[0, 0, -1, -1], [0, -1, 0, -1]] = 4
    np.testing.assert_array_equal(cells, expect)


def test_default_boundary_follows_the_grid():
    flat = layered_grid([A, B])
    torus = layered_grid([A, B], periodic=True)
    got = window_filter(flat, SQUARES, name="d")
    assert got["d"].values.tobytes() == reference(D, BOX3, "open").tobytes()
    assert got.attrs["gridflow_stages"]["filter"]["boundary"] == "open"
    got = window_filter(torus, SQUARES, name="d")
    assert got["d"].values.tobytes() == reference(D, BOX3, "periodic").tobytes()


def test_periodic_on_a_flat_grid_warns_at_the_caller():
    ds = layered_grid([A, B])
    with pytest.warns(BoundaryWarning, match=r"do not wrap") as caught:
        out = window_filter(ds, SQUARES, boundary="periodic", name="d")
    assert caught[0].filename == __file__
    np.testing.assert_array_equal(out["d"].values, reference(D, BOX3, "periodic"))


# --- chunking, dims, kernels ------------------------------------------------------------

CHUNKINGS = [(1, 1), (1, 6), (2, 3), (3, 2), (4, 5), (5, 6)]


@pytest.mark.parametrize("boundary", ["periodic", "open", "constant"])
@pytest.mark.parametrize(
    ("expression", "kernel", "sigma"),
    [
        (SQUARES, "box", None),
        (SQUARES, "inverse_distance", None),
        ("counts[0] / 3 - 0.1 * counts[1]", "gaussian", 0.7),  # not dyadic: not exact
        ("counts[0] / 3 - 0.1 * counts[1]", "inverse_distance", None),
    ],
)
def test_bit_identical_for_every_chunking(boundary, expression, kernel, sigma):
    # window 2: a halo of 2, deeper than chunks of 1
    cval = 1.5 if boundary == "constant" else 0.0
    results = []
    for chunks in CHUNKINGS:
        ds = layered_grid([A, B], periodic=boundary == "periodic", chunks=chunks)
        out = window_filter(
            ds, expression, kernel=kernel, window=2, sigma=sigma, boundary=boundary, cval=cval
        )["filtered"]
        assert out.data.chunks == ds["counts"].data.chunks[1:]
        results.append(out.values.tobytes())
    assert len(set(results)) == 1
    k = parse_kernel(kernel, window=2, ndim=2, sigma=sigma)
    values = A / 3 - 0.1 * B if "/" in expression else D
    expect = reference(values, k.weights, boundary, cval)
    got = np.frombuffer(results[0]).reshape(D.shape)
    if "/" in expression:
        np.testing.assert_allclose(got, expect, rtol=1e-13, atol=1e-13)
    else:
        assert got.tobytes() == expect.tobytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    window=st.integers(1, 3),
    boundary=st.sampled_from(["periodic", "open", "constant"]),
)
def test_chunking_never_changes_a_bit(data, window, boundary):
    c0 = data.draw(st.integers(1, 5), label="c0")
    c1 = data.draw(st.integers(1, 6), label="c1")
    periodic = boundary == "periodic"
    whole = layered_grid([A, B], periodic=periodic, chunks=(5, 6))
    split = whole.chunk({"x0": c0, "x1": c1})
    kw = {"kernel": "gaussian", "window": window, "boundary": boundary}
    kw["cval"] = 0.75 if boundary == "constant" else 0.0
    for expression in (SQUARES, "counts[0] / 3 + counts[1] ** 0.5"):
        a = window_filter(whole, expression, **kw)["filtered"].values
        b = window_filter(split, expression, **kw)["filtered"].values
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("boundary", ["periodic", "open", "constant"])
def test_three_dims(boundary):
    rng = np.random.default_rng(3)
    layers = rng.integers(0, 4, size=(2, 4, 5, 3))
    values = layers[0] - 2 * layers[1]
    k = parse_kernel("inverse_distance", window=1, ndim=3)
    expect = reference(values, k.weights, boundary, cval=-1.0)
    seen = set()
    for chunks in [(1, 2, 1), (2, 2, 3), (4, 5, 3)]:
        ds = layered_grid(layers, periodic=boundary == "periodic", chunks=chunks)
        out = window_filter(
            ds,
            "counts[0] - 2 * counts[-1]",
            kernel="inverse_distance",
            boundary=boundary,
            cval=-1.0 if boundary == "constant" else 0.0,
            name="v",
        )["v"]
        assert out.dims == ("x0", "x1", "x2")
        seen.add(out.values.tobytes())
    assert seen == {expect.tobytes()}


@pytest.mark.parametrize("kernel", ["box", "inverse_distance", "gaussian"])
@pytest.mark.parametrize("window", [1, 2])
def test_named_kernels_exact(kernel, window):
    ds = layered_grid([A, B], chunks=(2, 2))
    k = parse_kernel(kernel, window=window, ndim=2)
    got = window_filter(ds, SQUARES, kernel=kernel, window=window, boundary="open")
    expect = reference(D, k.weights, "open")
    assert got["filtered"].values.tobytes() == expect.tobytes()
    record = got.attrs["gridflow_stages"]["filter"]
    assert record["kernel"] == kernel and record["window"] == [window, window]


def test_inverse_distance_weights_as_defined():
    ds = layered_grid([A, B])
    got = window_filter(ds, SQUARES, kernel="inverse_distance", boundary="open")["filtered"]
    u = np.arange(-1, 2)
    w = 1 / np.sqrt(1 + u[:, None] ** 2 + u[None, :] ** 2)
    # the corner (0, 0): D[0,0]*1 + (D[0,1] + D[1,0])/sqrt(2) + D[1,1]/sqrt(3)
    hand = 1 + (-4 - 1) / np.sqrt(2) + 1 / np.sqrt(3)
    assert got.values[0, 0] == pytest.approx(hand, abs=1e-6)  # weights are quantized to 2**-24
    np.testing.assert_allclose(got.values, reference(D, w, "open"), atol=1e-6)


def test_user_array_kernel_is_a_correlation():
    # asymmetric, 3 x 5: correlation (not convolution) and per-axis radius
    kernel = np.array([[0, 1, 0, 2, 0], [1, 3, 1, 0, 1], [0, 1, 0, 0, 0.5]])
    for boundary in ("open", "periodic", "constant"):
        ds = layered_grid([A, B], periodic=boundary == "periodic", chunks=(1, 2))
        got = window_filter(
            ds, SQUARES, kernel=kernel, boundary=boundary, cval=3.0 * (boundary == "constant")
        )
        expect = reference(D, kernel, boundary, cval=3.0)
        assert got["filtered"].values.tobytes() == expect.tobytes(), boundary
        assert got.attrs["gridflow_stages"]["filter"]["window"] == [1, 2]


def test_dyadic_values_exact():
    ds = layered_grid([A, B], chunks=(2, 3))
    expression = "0.25 * counts[0] - counts[1] / 8 + 0.5"
    values = 0.25 * A - B / 8 + 0.5
    for kernel in ("box", "inverse_distance", "gaussian"):
        k = parse_kernel(kernel, window=1, ndim=2)
        got = window_filter(ds, expression, kernel=kernel, boundary="open")["filtered"]
        assert got.values.tobytes() == reference(values, k.weights, "open").tobytes(), kernel


def test_fft_is_exact_on_integers():
    rng = np.random.default_rng(7)
    layers = rng.integers(0, 5, size=(2, 24, 24))
    ds = layered_grid(layers, chunks=(12, 12))
    k = parse_kernel("inverse_distance", window=4, ndim=2)
    block = np.ones((12 + 8, 12 + 8))
    assert filters._block_method(k, block, "auto", True) == "lines"  # what auto runs
    expect = reference(layers[0] ** 2 - layers[1] ** 2, k.weights, "open")
    for method in ("auto", "fft", "direct"):
        got = window_filter(
            ds, SQUARES, kernel="inverse_distance", window=4, boundary="open", method=method
        )
        assert got["filtered"].values.tobytes() == expect.tobytes(), method
    # values the FFT's round-off cannot be trusted with fall back to direct sums
    assert filters._block_method(k, block * 2.0**40, "fft", True) == "direct"
    assert filters._block_method(k, block, "auto", False) == "direct"  # never FFT on floats


def test_methods_refused_where_inexact():
    ds = layered_grid([A, B])
    with pytest.raises(ParameterError, match=r"^method: expected 'auto', 'direct' or 'separable'"):
        window_filter(ds, "counts[0] / 2", kernel="inverse_distance", method="fft")
    with pytest.raises(ParameterError, match=r"^method: "):
        window_filter(ds, SQUARES, boundary="constant", cval=0.5, method="box")
    with pytest.raises(ParameterError, match=r"^method: expected 'box' only with kernel='box'"):
        window_filter(ds, SQUARES, kernel="inverse_distance", method="box")
    with pytest.raises(ParameterError, match=r"^method: .*does not factor"):
        window_filter(ds, SQUARES, kernel="inverse_distance", method="separable")
    with pytest.raises(ParameterError, match=r"^method: expected 'auto', 'direct'"):
        window_filter(ds, SQUARES, method="magic")
    box = window_filter(ds, SQUARES, method="box", boundary="open")["filtered"].values
    sep = window_filter(ds, SQUARES, method="separable", boundary="open")["filtered"].values
    assert box.tobytes() == sep.tobytes() == reference(D, BOX3, "open").tobytes()


def test_integer_powers_and_precedence():
    ds = layered_grid([A, B])
    got = window_filter(ds, "-(counts[0] - counts[1]) ** 3 * 2 + counts[1] ** 0", boundary="open")
    values = -((A - B) ** 3) * 2 + 1
    assert got["filtered"].values.tobytes() == reference(values, BOX3, "open").tobytes()
    assert got.attrs["gridflow_stages"]["filter"]["integer"] is True
    frac = window_filter(ds, "counts[0] ** 0.5", boundary="open", name="r")
    assert frac.attrs["gridflow_stages"]["filter"]["integer"] is False
    np.testing.assert_allclose(frac["r"].values, reference(np.sqrt(A), BOX3, "open"), rtol=1e-15)


def test_division_by_zero_is_ieee():
    ds = layered_grid([A, B])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = window_filter(ds, "counts[0] / counts[1]", kernel="box", boundary="open")
        values = got["filtered"].values
    assert np.isinf(values).any() or np.isnan(values).any()


def test_later_expressions_use_earlier_outputs_and_other_layers():
    ds = layered_grid([A, B])
    ds = window_filter(ds, SQUARES, boundary="open", name="d")
    ds = ds.assign(lab=(("x0", "x1"), (A > B).astype(np.int16)))
    out = window_filter(ds, "d - 2 * lab", boundary="open", name="e")
    d = reference(D, BOX3, "open")
    expect = reference(d - 2 * (A > B), BOX3, "open")
    assert out["e"].values.tobytes() == expect.tobytes()
    assert set(out.attrs["gridflow_stages"]["filter"]["outputs"]) == {"d", "e"}


# --- bad input: one line each -----------------------------------------------------------


@pytest.fixture
def small():
    ds = layered_grid([A, B])
    return ds.assign(
        lab=(("x0", "x1"), np.zeros(D.shape, np.int16)),
        table=(("node",), np.arange(3)),
        name_=(("x0", "x1"), np.full(D.shape, "a", dtype=object)),
    )


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("foo + 1", "got unknown name 'foo'"),
        ("counts", "such as counts[0]"),
        ("counts[2]", "class index in 0..1"),
        ("counts[-3]", "class index in 0..1"),
        ("counts[x0]", "integer class index in counts[...]"),
        ("counts[0:1]", "integer class index"),
        ("counts[0][1]", "subscript"),
        ("lab[0]", "subscript only on a variable with a class axis"),
        ("table * 2", "dims (node)"),
        ("name_", "dims"),
        ("sqrt(counts[0])", "a function call 'sqrt(counts[0])'"),
        ("counts.sum()", "a function call"),
        ("counts[0] % 2", "the operator '%'"),
        ("counts[0] // 2", "the operator '//'"),
        ("counts[0] > 1", "a comparison"),
        ("counts[0] if lab else 1", "a conditional"),
        ("+counts[0]", "the unary operator '+'"),
        ("'a' * 2", "the constant 'a'"),
        ("True + counts[0]", "the constant True"),
        ("1j", "the constant 1j"),
        ("counts[0] +", "invalid syntax"),
        ("", "invalid syntax"),
        ("lab.x", "an attribute"),
    ],
)
def test_expression_errors(small, expression, needle):
    with pytest.raises(ParameterError) as info:
        window_filter(small, expression)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("expression: ") and "expected" in message and "got" in message
    assert needle in message
    assert info.value.param == "expression"


def test_unknown_name_lists_the_layers(small):
    with pytest.raises(ParameterError, match=r"\(counts, lab\), got unknown name 'cnts'"):
        window_filter(small, "cnts[0]")


def test_expression_not_a_string(small):
    with pytest.raises(ParameterError, match=r"^expression: expected a string"):
        window_filter(small, 3)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("counts", "gridflow's bin stage"),
        ("label", "gridflow's classify stage"),
        ("density", "gridflow's classify stage"),
        ("node_level", "gridflow's cluster stage"),
        ("fractal", "gridflow's fractal stage"),
        ("x0", "a coordinate or dim"),
        ("class", "not a keyword"),
        ("node", "gridflow's cluster stage"),
        ("a-b", "Python identifier"),
        ("for", "Python identifier"),
        ("gridflow_x", "outside gridflow's own"),
        ("lab", "gridflow's filter did not write"),
    ],
)
def test_name_collisions(small, name, needle):
    with pytest.raises(ParameterError, match=r"^name: ") as info:
        window_filter(small, SQUARES, name=name, overwrite=True)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_replacing_a_filter_output_needs_overwrite():
    ds = window_filter(layered_grid([A, B]), SQUARES, boundary="open", name="d")
    with pytest.raises(ParameterError, match=r"already holds the filter output 'd'.*overwrite"):
        window_filter(ds, "counts[0]", boundary="open", name="d")
    ds = window_filter(ds, "counts[0]", boundary="open", name="d", overwrite=True)
    assert ds["d"].values.tobytes() == reference(A, BOX3, "open").tobytes()
    assert ds.attrs["gridflow_stages"]["filter"]["outputs"]["d"]["expression"] == "counts[0]"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boundary": "reflect"}, "^boundary: expected 'periodic', 'open' or 'constant'"),
        ({"boundary": "open", "cval": 1}, "^cval: expected 0 unless boundary='constant'"),
        ({"boundary": "constant", "cval": float("nan")}, "^cval: expected a finite number"),
        ({"boundary": "constant", "cval": "1"}, "^cval: expected a real number"),
        ({"sigma": 1.0}, "^sigma: expected None unless kernel='gaussian'"),
        ({"kernel": BOX3, "sigma": 1.0}, "^sigma: expected None unless kernel='gaussian'"),
        ({"kernel": "gaussian", "sigma": -1.0}, "^sigma: expected a positive number"),
        ({"window": 6}, "^window: expected a radius of at most the grid's 5 cells along x0"),
        ({"window": 0}, "^window: expected a positive integer"),
        ({"kernel": "tophat"}, "^kernel: expected one of"),
        ({"kernel": np.ones((2, 3))}, "^kernel: expected odd sides"),
        ({"kernel": np.ones(3)}, "^kernel: expected a 2-D array"),
        ({"kernel": np.ones((3, 3)), "window": 2}, "^kernel: shape \\(3, 3\\) does not match"),
        ({"kernel": np.ones((13, 3))}, "^kernel: expected a radius of at most"),
    ],
)
def test_parameter_errors(kwargs, match):
    ds = layered_grid([A, B])
    with pytest.raises(ParameterError, match=match):
        window_filter(ds, SQUARES, **kwargs)


def test_window_as_wide_as_a_periodic_grid():
    # radius 5 on 5 rows: the window wraps onto itself (cells counted twice), as on a torus
    ds = layered_grid([A, B], periodic=True, chunks=(2, 2))
    got = window_filter(ds, SQUARES, window=5)["filtered"].values
    assert got.tobytes() == reference(D, np.ones((11, 11)), "periodic").tobytes()


# --- stores ---------------------------------------------------------------------------


def test_store_round_trip(tmp_path):
    path = tmp_path / "g.zarr"
    layered_grid([A, B], chunks=(2, 3), store=path)
    memory = window_filter(layered_grid([A, B], chunks=(2, 3)), SQUARES, boundary="open", name="d")
    got = window_filter(path, SQUARES, boundary="open", name="d")
    assert got.encoding["source"] == os.fspath(path)
    again = open_grid(path)
    assert again["d"].values.tobytes() == memory["d"].values.tobytes()
    assert again["d"].values.tobytes() == reference(D, BOX3, "open").tobytes()
    assert again["d"].encoding["chunks"] == (2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata: no warning
        plain = xr.open_zarr(path)
    assert plain["d"].dims == ("x0", "x1")
    # a second filter lives beside the first; both are recorded, each in history
    window_filter(path, "d * 2 - counts[1]", kernel="inverse_distance", boundary="open", name="e")
    ds = open_grid(path)
    stage = ds.attrs["gridflow_stages"]["filter"]
    assert stage["name"] == "e" and set(stage["outputs"]) == {"d", "e"}
    assert stage["outputs"]["d"]["expression"] == "counts[0] ** 2 - counts[1] ** 2"
    assert stage["outputs"]["e"]["inputs"] == ["counts", "d"]
    assert json.loads(ds["e"].attrs["gridflow_filter"])["expression"] == "d * 2 - counts[1]"
    lines = ds.attrs["history"].splitlines()
    assert [" filter " in line for line in lines] == [False, True, True]
    k = parse_kernel("inverse_distance", window=1, ndim=2)
    expect = reference(2 * reference(D, BOX3, "open") - B, k.weights, "open")
    assert ds["e"].values.tobytes() == expect.tobytes()
    assert ds["d"].values.tobytes() == memory["d"].values.tobytes()  # untouched
    # replacing one needs overwrite, and leaves the other alone
    with pytest.raises(ParameterError, match=r"already holds the filter output 'd'"):
        window_filter(path, "counts[0]", name="d")
    window_filter(path, "counts[0]", name="d", overwrite=True)
    ds = open_grid(path)
    assert ds["d"].values.tobytes() == reference(A, BOX3, "open").tobytes()
    assert ds["e"].values.tobytes() == expect.tobytes()
    assert set(ds.attrs["gridflow_stages"]["filter"]["outputs"]) == {"d", "e"}
    with pytest.raises(ParameterError, match=r"gridflow's bin stage"):
        window_filter(path, SQUARES, name="counts", overwrite=True)
    assert sorted(os.listdir(path)) == ["class", "counts", "d", "e", "x0", "x1", "zarr.json"]


def test_store_write_is_all_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "g.zarr"
    layered_grid([A, B], chunks=(1, 2), store=path)
    window_filter(path, SQUARES, boundary="open", name="d")
    before = (path / "zarr.json").read_text()
    d_before = open_grid(path)["d"].values.tobytes()
    real = filters._correlate_block
    calls = []

    def failing(block, **kw):
        calls.append(1)
        if len(calls) > 5:  # some chunks were written by then
            raise OSError(5, "Input/output error")
        return real(block, **kw)

    monkeypatch.setattr(filters, "_correlate_block", failing)
    for name, overwrite in (("new", False), ("d", True)):
        calls.clear()
        with pytest.raises(gridflow.GridflowError):
            window_filter(path, "counts[1]", boundary="open", name=name, overwrite=overwrite)
        assert (path / "zarr.json").read_text() == before
        assert sorted(os.listdir(path)) == ["class", "counts", "d", "x0", "x1", "zarr.json"]
    monkeypatch.undo()
    ds = open_grid(path)
    assert ds["d"].values.tobytes() == d_before
    assert "new" not in ds and set(ds.attrs["gridflow_stages"]["filter"]["outputs"]) == {"d"}


def test_lost_stage_record_is_rebuilt_from_the_outputs(tmp_path):
    # a kill during the swap drops the stage's record; the outputs keep their own
    path = tmp_path / "g.zarr"
    layered_grid([A, B], store=path)
    window_filter(path, SQUARES, name="d")
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["gridflow_stages"]["filter"]
    meta["attributes"]["gridflow_incomplete"] = ["filter"]
    (path / "zarr.json").write_text(json.dumps(meta))
    window_filter(path, "counts[0]", name="e")
    outputs = open_grid(path).attrs["gridflow_stages"]["filter"]["outputs"]
    assert set(outputs) == {"d", "e"} and outputs["d"]["expression"].startswith("counts[0] **")
    with pytest.raises(ParameterError, match=r"already holds the filter output 'd'"):
        window_filter(path, "counts[0]", name="d")


def test_cli_filter(tmp_path):
    from click.testing import CliRunner

    from gridflow.cli import main

    path = tmp_path / "g.zarr"
    layered_grid([A, B], chunks=(2, 3), store=path)
    args = ["filter", str(path), SQUARES, "--name", "out", "--kernel", "box", "--window", "1"]
    r = CliRunner().invoke(main, [*args, "--boundary", "open"])
    assert r.exit_code == 0, r.output
    ds = open_grid(path)
    assert ds["out"].values.tobytes() == reference(D, BOX3, "open").tobytes()
    assert ds.attrs["gridflow_stages"]["filter"]["outputs"]["out"]["boundary"] == "open"
    r = CliRunner().invoke(main, [*args, "--boundary", "open"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(main, [*args, "--boundary", "constant", "--cval", "2", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert open_grid(path)["out"].values.tobytes() == reference(D, BOX3, "constant", 2).tobytes()
    r = CliRunner().invoke(main, ["filter", str(path), "nope[0]", "--name", "x"])
    assert r.exit_code == 2 and "unknown name 'nope'" in r.output


def test_docstring_examples():
    failed, attempted = doctest.testmod(filters, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted >= 8 and failed == 0
