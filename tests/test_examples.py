"""The runnable examples in examples/, in their fast modes."""

import importlib.util
import os

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_color_quantization_small(tmp_path, capsys):
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    example = _load("color_quantization")
    out = tmp_path / "cq.png"
    result = example.main(["--small", "--out", str(out)])
    assert out.stat().st_size > 10_000
    pixels, ids, colours = result["pixels"], result["ids"], result["colours"]
    assert len(pixels) == 128 * 128 and (ids >= 0).all()  # filled: every pixel has a colour
    (name, k, sse, _), (km_name, k2, km_sse, _) = result["rows"]
    assert (name, km_name) == ("gridflow.cluster", "sklearn KMeans")
    assert k == k2 == len(colours) >= 2
    for c in range(k):  # each colour is the mean of its pixels
        np.testing.assert_allclose(colours[c], pixels[ids == c].mean(axis=0))
    assert sse == pytest.approx(((pixels - colours[ids]) ** 2).sum())
    assert sse > 0 and km_sse > 0
    printed = capsys.readouterr().out
    assert "gridflow.cluster" in printed and "sklearn KMeans" in printed


def test_window_filter(capsys):
    example = _load("window_filter")
    result = example.main([])
    contrast, counts = result["contrast"], result["counts"].astype(np.int64)
    d = counts[0] ** 2 - counts[1] ** 2
    # the corner's window (radius 2, open boundary) covers the grid's first 3 x 3 cells
    assert contrast[0, 0] == d[:3, :3].sum() and contrast[-1, -1] == d[-3:, -3:].sum()
    assert (contrast > 0).any() and (contrast < 0).any()
    assert result["outputs"] == ["contrast", "total", "zeros"]
    assert result["total"].sum() > counts.sum()  # every point counted in several windows
    printed = capsys.readouterr().out
    assert "corner values:" in printed and "+" in printed and "-" in printed
