import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageSequence

from gridflow import bin_points, open_grid
from gridflow.classify import classify
from gridflow.cli import main
from gridflow.errors import ParameterError, StoreError
from gridflow.fractal import fractal
from gridflow.render import TAB10, animate, image, palette, render, render_all

WHITE = [255, 255, 255]


@pytest.fixture(scope="module")
def store2d(tmp_path_factory):
    rng = np.random.default_rng(7)
    pts = rng.random((3000, 2))
    labels = (pts[:, 0] * 3).astype(int)
    path = tmp_path_factory.mktemp("r2") / "g.zarr"
    bin_points(pts, path, labels=labels, bins=(30, 20), bounds=(0, 1), periodic=True, chunks=10)
    classify(path, window=1, iterations=1)
    fractal(path, iterations=12, burn_in=4, seed=1, record=4)
    return path


@pytest.fixture(scope="module")
def grid3d():
    rng = np.random.default_rng(8)
    pts = rng.random((4000, 3))
    labels = (pts[:, 2] * 4).astype(int)
    ds = bin_points(pts, labels=labels, bins=(12, 10, 8), bounds=(0, 1), periodic=True, chunks=6)
    return classify(ds, window=1, iterations=1)


def _cell_colour(rgb, i, j, ny, scale):
    """Pixel colour of cell (i, j): i across, j upwards."""
    return rgb[(ny - 1 - j) * scale, i * scale].tolist()


def test_palette_starts_with_tab10_and_stays_distinct():
    pal = palette(40)
    assert pal.shape == (40, 3) and pal.dtype == np.uint8
    assert ["#" + bytes(c).hex() for c in pal[:10]] == list(TAB10)
    assert len({tuple(c) for c in pal}) == 40
    np.testing.assert_array_equal(palette(12), pal[:12])  # a colour never depends on n


def test_label_image_size_orientation_and_palette(store2d):
    ds = open_grid(store2d)
    label = ds["label"].values
    rgb = image(store2d, "label", scale=3)
    assert rgb.shape == (20 * 3, 30 * 3, 3) and rgb.dtype == np.uint8
    pal = palette(3)
    for i, j in [(0, 0), (29, 0), (0, 19), (17, 11)]:
        expect = WHITE if label[i, j] < 0 else pal[label[i, j]].tolist()
        assert _cell_colour(rgb, i, j, 20, 3) == expect
    # Every pixel is a palette colour or white; a 3x3 block per cell.
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in pal} | {tuple(WHITE)}
    assert (rgb[::3, ::3] == rgb[2::3, 2::3]).all()
    # Default scale: the longer side reaches 512 pixels (30 cells -> 17 px each).
    assert image(store2d, "fractal").shape == (20 * 17, 30 * 17, 3)


def test_grey_levels(store2d):
    ds = open_grid(store2d)
    density = ds["density"].values
    rgb = image(ds, "density", scale=1)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    lo, hi = (
        np.unravel_index(density.argmin(), density.shape),
        np.unravel_index(density.argmax(), density.shape),
    )
    assert _cell_colour(rgb, *lo, 20, 1) == [0, 0, 0]
    assert _cell_colour(rgb, *hi, 20, 1) == WHITE
    level = np.arange(30 * 20).reshape(30, 20) % 8
    grey = image(ds.assign(level=(("x0", "x1"), level.astype(np.uint8))), "level", scale=1)
    assert _cell_colour(grey, 0, 0, 20, 1) == [0, 0, 0]
    assert _cell_colour(grey, 0, 7, 20, 1) == WHITE
    assert _cell_colour(grey, 0, 2, 20, 1) == [73, 73, 73]  # round(255 * 2 / 7)
    conf = image(ds.assign(confidence=ds["confidence"] * 0 + 0.5), "confidence", scale=1)
    assert (conf == 128).all()


def test_3d_slices_projections_and_dims(grid3d):
    label = grid3d["label"].values
    rgb = image(grid3d, "label", slices="x2=5", scale=2)
    assert rgb.shape == (10 * 2, 12 * 2, 3)
    pal = palette(4)
    assert _cell_colour(rgb, 3, 4, 10, 2) == pal[label[3, 4, 5]].tolist()
    # Projection of x2: the most frequent class of each column (lowest on ties).
    proj = image(grid3d, "label", scale=1)
    counts = np.stack([(label == k).sum(axis=2) for k in range(4)])
    mode = np.where(counts.max(0) > 0, counts.argmax(0), -1)
    for i, j in [(0, 0), (11, 9), (5, 3)]:
        assert _cell_colour(proj, i, j, 10, 1) == pal[mode[i, j]].tolist()
    # Max projection of the density; dims chosen and ordered by the caller.
    density = grid3d["density"].values
    rgb = image(grid3d, "density", dims="x2,x0", slices={"x1": 0}, scale=1)
    assert rgb.shape == (12, 8, 3)
    plane = density[:, 0, :]  # (x0, x2): x2 across, x0 upwards
    top = np.unravel_index(plane.argmax(), plane.shape)
    assert _cell_colour(rgb, top[1], top[0], 12, 1) == WHITE
    rgb = image(grid3d, "density", dims=("x0", "x1"), project="max", scale=1)
    flat = density.max(axis=2)
    top = np.unravel_index(flat.argmax(), flat.shape)
    assert _cell_colour(rgb, *top, 10, 1) == WHITE


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"var": "cluster"}, StoreError, "run `gridflow cluster STORE` first"),
        ({"var": "counts"}, ParameterError, "var: expected one of"),
        ({"slices": "x2"}, ParameterError, "DIM=INDEX"),
        ({"slices": "x2=8"}, ParameterError, "outside the grid; use 0..7"),
        ({"slices": "z=1"}, ParameterError, "no dim 'z'"),
        ({"slices": "x0=1,x1=1"}, ParameterError, "fewer than two"),
        ({"dims": "x0"}, ParameterError, "two different dims"),
        ({"dims": "x0,x0"}, ParameterError, "two different dims"),
        ({"project": "mean"}, ParameterError, "'max' or 'mode'"),
        ({"var": "density", "project": "mode"}, ParameterError, "'mode' is for label"),
        ({"scale": 0}, ParameterError, "scale"),
    ],
)
def test_bad_input(grid3d, kwargs, error, match):
    with pytest.raises(error, match=match):
        image(grid3d, **({"var": "label"} | kwargs))


def test_animation_gif_from_recorded_frames(store2d, tmp_path):
    ds = open_grid(store2d)
    assert ds["fractal_iteration"].values.tolist() == [0, 4, 8, 12]
    out = animate(store2d, "fractal", tmp_path / "f.gif", scale=2, fps=5)
    assert out == str(tmp_path / "f.gif")
    gif = Image.open(out)
    frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert 1 < len(frames) <= 4  # identical consecutive frames are merged
    assert gif.info["duration"] >= 200 and gif.info["loop"] == 0
    first = image(ds.assign(fractal=ds["fractal_frames"][0]), "fractal", scale=2)
    last = image(ds, "fractal", scale=2)
    np.testing.assert_array_equal(frames[0], first)
    np.testing.assert_array_equal(frames[-1], last)
    with pytest.raises(StoreError, match="--record K"):
        animate(store2d, "label", tmp_path / "l.gif")
    with pytest.raises(ParameterError, match=r"\.gif or \.mp4"):
        animate(store2d, "fractal", tmp_path / "f.avi")


def test_animation_mp4(store2d, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v3 as iio

    out = animate(store2d, "fractal", tmp_path / "f.mp4", scale=1)
    frames = iio.imread(out)
    assert frames.shape[0] == 4 and frames.shape[1:3] == (20, 30)


def test_render_writes_files_atomically(store2d, tmp_path, monkeypatch):
    paths = render(store2d, "fractal", tmp_path / "f.png", animation=tmp_path / "f.gif")
    assert paths == [str(tmp_path / "f.png"), str(tmp_path / "f.gif")]
    assert Image.open(paths[0]).size == (30 * 17, 20 * 17)
    with pytest.raises(ParameterError, match="nothing to write"):
        render(store2d, "label")
    with pytest.raises(ParameterError, match=r"\.png"):
        render(store2d, "label", tmp_path / "l.jpg")
    with pytest.raises(ParameterError, match="does not exist"):
        render(store2d, "label", tmp_path / "missing" / "l.png")

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        render(store2d, "label", tmp_path / "l.png")
    assert sorted(os.listdir(tmp_path)) == ["f.gif", "f.png"]  # no l.png, no temporary


def test_render_all(store2d, tmp_path):
    written = render_all(store2d, tmp_path / "imgs", scale=1)
    assert set(written) == {"label", "fractal", "density", "confidence", "fractal.gif"}
    assert sorted(os.listdir(tmp_path / "imgs")) == sorted(
        ["label.png", "fractal.png", "density.png", "confidence.png", "fractal.gif"]
    )
    assert Image.open(written["label"]).size == (30, 20)


def test_cli_render(store2d, tmp_path):
    out = tmp_path / "l.png"
    r = CliRunner().invoke(main, ["render", str(store2d), "--var", "label", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    np.testing.assert_array_equal(np.asarray(Image.open(out)), image(store2d, "label"))
    r = CliRunner().invoke(main, ["render", str(store2d), "--var", "cluster", "--out", str(out)])
    assert r.exit_code == 2 and r.output == (
        "error: render: the grid has no 'cluster'; run `gridflow cluster STORE` first\n"
    )
    r = CliRunner().invoke(main, ["render", str(store2d), "--slice", "x0=99", "--out", str(out)])
    assert r.exit_code == 2 and "outside the grid" in r.output
    r = CliRunner().invoke(main, ["render", str(store2d), "--all", str(tmp_path / "all")])
    assert r.exit_code == 0 and (tmp_path / "all" / "fractal.gif").exists()
    r = CliRunner().invoke(
        main, ["render", str(store2d), "--var", "fractal", "--animate", str(tmp_path / "a.gif")]
    )
    assert r.exit_code == 0 and (tmp_path / "a.gif").exists()
