"""Images and animations of a grid's variables.

One pixel per cell (times an integer ``scale``), the first shown dim
across, the second upwards. Categorical variables (``label``, ``fractal``,
``cluster``) get a fixed palette: value ``k`` has colour ``palette(n)[k]``
for any ``n > k`` (matplotlib's tab10 for the first ten values, then
well-separated hues);
-1 (unlabeled, noise) is white. ``density``, ``level`` and ``confidence``
are grey levels, black for the lowest, white for the highest: ``density``
from its minimum to its maximum, ``level`` over its ``L`` levels,
``confidence`` over [0, 1].

Grids of more than two dims are shown as a slice (``slices={"z": 10}``
picks cell 10 of dim z) and/or a projection of the dims that are neither
sliced nor shown: the maximum for grey variables and ``cluster``, the most
frequent class (ties to the lowest) for ``label`` and ``fractal``.

Animations (GIF with Pillow; MP4 through imageio when imageio-ffmpeg is
installed) show the frames a stage recorded, such as ``fractal_frames``
from ``gridflow fractal --record K``. Every file is written beside its
target and renamed into place, so no half-written image is left behind;
each records gridflow as its writer (PNG ``Software``, GIF and MP4
comment), and an existing file is replaced only when gridflow wrote it,
never over the grid's store.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gridflow._staging import check_output, signature, staged_file
from gridflow.errors import ParameterError, StoreError

__all__ = ["animate", "image", "palette", "plane", "render", "render_all"]

CATEGORICAL = ("label", "fractal", "cluster")
GREY = ("density", "level", "confidence")
#: The stage that writes each variable (for the message when it is missing).
STAGE = {
    "label": "classify",
    "confidence": "classify",
    "density": "classify",
    "level": "cluster",
    "cluster": "cluster",
    "fractal": "fractal",
}
#: matplotlib's tab10, the first ten categorical colours.
TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
UNLABELED = (255, 255, 255)
#: Images are scaled by default until their longer side reaches this.
TARGET_SIDE = 512


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours for categorical values ``0 .. n - 1``.

    tab10 first; beyond it, hues spaced by the golden angle, so consecutive
    values always differ clearly.

    Examples
    --------
    >>> palette(12)[0].tolist()
    [31, 119, 180]
    """
    out = np.empty((max(n, 0), 3), np.uint8)
    for k in range(min(n, len(TAB10))):
        h = TAB10[k]
        out[k] = [int(h[i : i + 2], 16) for i in (1, 3, 5)]
    for k in range(len(TAB10), n):
        hue = (k * 0.6180339887498949) % 1.0
        value = 0.95 if k % 2 else 0.75
        out[k] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.7, value)) * 255)
    return out


# --- parsing ------------------------------------------------------------------------


def parse_slices(slices: Any, sizes: Mapping[str, int]) -> dict[str, int]:
    """``"z=10"``, ``"z=10,t=3"``, a list of those, or a mapping -> ``{dim: index}``."""
    if slices is None:
        return {}
    items: list[tuple[str, Any]] = []
    if isinstance(slices, Mapping):
        items = list(slices.items())
    else:
        texts = [slices] if isinstance(slices, str) else list(slices)
        for text in texts:
            for part in str(text).split(","):
                if part.strip() == "":
                    continue
                name, sep, value = part.partition("=")
                if not sep:
                    raise ParameterError(
                        f"slice: expected DIM=INDEX such as z=10, got {part.strip()!r}"
                    )
                items.append((name.strip(), value.strip()))
    out: dict[str, int] = {}
    for name, value in items:
        if name not in sizes:
            raise ParameterError(
                f"slice: the grid has no dim {name!r}; its dims are {', '.join(sizes)}"
            )
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise ParameterError(
                f"slice: expected a cell index for {name}, got {value!r}"
            ) from None
        if not 0 <= index < sizes[name]:
            raise ParameterError(
                f"slice: {name}={index} is outside the grid; use 0..{sizes[name] - 1}"
            )
        out[name] = index
    return out


def _shown_dims(dims: Any, spatial: Sequence[str], sliced: Mapping[str, int]) -> tuple[str, str]:
    free = [d for d in spatial if d not in sliced]
    if dims is None:
        if len(free) < 2:
            raise ParameterError(
                f"slice: {len(sliced)} of the grid's {len(spatial)} dims are sliced, "
                "leaving fewer than two to show; slice fewer dims"
            )
        return free[0], free[1]
    names = [d.strip() for d in dims.split(",")] if isinstance(dims, str) else list(dims)
    if len(names) != 2 or names[0] == names[1]:
        raise ParameterError(f"dims: expected two different dims such as x,y, got {dims!r}")
    for name in names:
        if name not in free:
            raise ParameterError(
                f"dims: {name!r} is not a dim left to show; choose among {', '.join(free)}"
            )
    return names[0], names[1]


def _variable(grid: Any, var: str) -> Any:
    from gridflow.store import refuse_incomplete

    refuse_incomplete(grid, var, needed_by="render")
    if var not in grid:
        raise StoreError(
            f"render: the grid has no {var!r}; run `gridflow {STAGE[var]} STORE` first"
        )
    return grid[var]


# --- images -------------------------------------------------------------------------


def _plane(
    data: Any, var: str, nclasses: int, sliced: dict, shown: tuple[str, str], project: str
) -> np.ndarray:
    """The 2-D array to show, rows = second shown dim upwards, columns = first."""
    return _projected(data, nclasses, sliced, shown, project).T[::-1]


def _projected(
    data: Any, nclasses: int, sliced: dict, shown: tuple[str, str], project: str
) -> np.ndarray:
    """``data`` cut at ``sliced`` and projected over the dims not ``shown``:
    a NumPy array indexed ``[shown[0], shown[1]]``."""
    import xarray as xr

    from gridflow.sparse_grid import is_sparse

    if is_sparse(data):
        return _sparse_projected(data, nclasses, sliced, shown, project)
    data = data.isel(sliced) if sliced else data
    rest = [d for d in data.dims if d not in shown]
    if rest:
        if project == "max":
            data = data.max(rest)
        elif project == "sum":
            data = data.sum(rest)
        else:
            # The most frequent class along the projected dims (lowest on ties);
            # -1 only where every cell is unlabeled.
            votes = [(data == k).sum(rest) for k in range(nclasses)]
            stack = xr.concat(votes, "k")
            best = stack.argmax("k")
            data = best.where(stack.max("k") > 0, -1)
    return np.asarray(data.transpose(shown[0], shown[1]).values)


# --- sparse grids: planes from the stored cells, chunk by chunk -----------------------


def _chunk_plane(
    block: Any,
    origin: tuple[int, ...],
    cut: dict[int, int],
    axes: tuple[int, int],
    size: tuple[int, int],
    how: str,
    nclasses: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One COO chunk's part of a plane: the cells stored per plane cell, and
    their max, sum or per-class counts (``how``). ``cut``: the cell kept of
    each sliced axis."""
    n0, n1 = size
    coords, values = block.coords.astype(np.int64), np.asarray(block.data)
    if cut:
        keep = np.ones(values.size, dtype=bool)
        for axis, index in cut.items():
            keep &= coords[axis] == index - origin[axis]
        coords, values = coords[:, keep], values[keep]
    flat = (coords[axes[0]] + origin[axes[0]]) * n1 + (coords[axes[1]] + origin[axes[1]])
    stored = np.bincount(flat, minlength=n0 * n1)
    if how == "max":
        agg = np.full(n0 * n1, -np.inf)
        np.maximum.at(agg, flat, values.astype(np.float64))
    elif how == "sum":
        agg = np.zeros(n0 * n1, _sum_dtype(values.dtype))
        np.add.at(agg, flat, values.astype(agg.dtype))
    else:
        ok = (values >= 0) & (values < nclasses)
        agg = np.bincount(
            flat[ok] * nclasses + values[ok].astype(np.int64), minlength=n0 * n1 * nclasses
        )
    return stored, agg


def _sum_dtype(dtype: Any) -> np.dtype:
    """What a sum accumulates in: exact 64-bit integers for integers (as NumPy sums them)."""
    kind = np.dtype(dtype).kind
    return np.dtype(np.uint64 if kind == "u" else np.int64 if kind in "ib" else np.float64)


def _combine_planes(parts: list[tuple[np.ndarray, np.ndarray]], how: str) -> tuple:
    stored = np.sum([p[0] for p in parts], axis=0)
    aggs = [p[1] for p in parts]
    agg = np.maximum.reduce(aggs) if how == "max" else np.sum(aggs, axis=0)
    return stored, agg


def _tree(items: list[Any], combine: Any, how: str, split_every: int = 8) -> Any:
    import dask

    while len(items) > 1:
        items = [
            dask.delayed(combine)(items[i : i + split_every], how)
            for i in range(0, len(items), split_every)
        ]
    return items[0]


def _sparse_projected(
    data: Any, nclasses: int, sliced: dict, shown: tuple[str, str], how: str
) -> np.ndarray:
    """:func:`_projected` of COO chunks, from the stored cells: only the plane is dense.

    Only the chunks holding the ``sliced`` cells are read. A cell not stored
    holds the fill value, so a plane cell whose line over the projected dims
    is not stored whole takes the fill into its max or sum, as the dense
    grid would; ``mode`` never counts it (it is -1).
    """
    import dask

    arr = data.data
    dims = list(data.dims)
    fill = getattr(arr._meta, "fill_value", 0)
    axes = (dims.index(shown[0]), dims.index(shown[1]))
    size = (data.sizes[shown[0]], data.sizes[shown[1]])
    cut = {dims.index(d): int(i) for d, i in sliced.items()}
    line = math.prod(n for d, n in data.sizes.items() if d not in shown and d not in sliced)
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in arr.chunks]
    pieces = arr.to_delayed()
    parts = []
    for idx in np.ndindex(*arr.numblocks):
        origin = tuple(int(starts[a][i]) for a, i in enumerate(idx))
        if any(not starts[a][idx[a]] <= i < starts[a][idx[a] + 1] for a, i in cut.items()):
            continue  # holds none of the sliced cells
        parts.append(
            dask.delayed(_chunk_plane)(pieces[idx], origin, cut, axes, size, how, max(nclasses, 1))
        )
    stored, agg = dask.compute(_tree(parts, _combine_planes, how))[0]
    whole = stored == line
    if how == "mode":
        votes = agg.reshape(-1, max(nclasses, 1))
        out = np.where(votes.max(axis=1) > 0, votes.argmax(axis=1), -1)
    elif how == "sum":
        dtype = _sum_dtype(arr.dtype)
        out = agg.astype(dtype) + dtype.type(fill) * (line - stored).astype(dtype)
    else:
        out = np.where(whole, agg, np.maximum(agg, float(fill))).astype(arr.dtype)
    return out.reshape(size)


def _sparse_range(data: Any) -> tuple[float, float]:
    """Min and max of a sparse variable over every cell (the fill where one is not stored)."""
    import dask

    def extremes(block: Any) -> tuple[float, float, int]:
        values = np.asarray(block.data, dtype=np.float64)
        if not values.size:
            return np.inf, -np.inf, 0
        return float(values.min()), float(values.max()), int(values.size)

    arr = data.data
    found = dask.compute(*[dask.delayed(extremes)(b) for b in arr.to_delayed().ravel()])
    lo = min((f[0] for f in found), default=np.inf)
    hi = max((f[1] for f in found), default=-np.inf)
    if sum(f[2] for f in found) < math.prod(arr.shape):
        fill = float(getattr(arr._meta, "fill_value", 0))
        lo, hi = min(lo, fill), max(hi, fill)
    return lo, hi


def _colour(plane: np.ndarray, var: str, vrange: tuple[float, float]) -> np.ndarray:
    if var in CATEGORICAL:
        values = plane.astype(np.int64)
        top = int(values.max(initial=-1))
        colours = np.vstack([palette(top + 1), np.array([UNLABELED], np.uint8)])
        # -1 -> the last row (white); any other negative is treated alike.
        return colours[np.where(values >= 0, values, top + 1)]
    lo, hi = vrange
    grey = np.zeros(plane.shape, np.float64)
    if hi > lo:
        grey = (np.nan_to_num(plane.astype(np.float64), nan=lo) - lo) / (hi - lo)
    grey = np.clip(np.round(grey * 255), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _range(data: Any, var: str) -> tuple[float, float]:
    """The values mapped to black and white, over the whole variable."""
    if var == "confidence":
        return 0.0, 1.0
    from gridflow.sparse_grid import is_sparse

    if var == "level":
        levels = data.attrs.get("levels")
        if levels:
            top = int(levels) - 1
        else:
            top = int(_sparse_range(data)[1] if is_sparse(data) else data.max().values)
        return 0.0, float(max(top, 1))
    if is_sparse(data):
        return _sparse_range(data)
    return float(data.min().values), float(data.max().values)


def _scale(shape: tuple[int, int], scale: int | None) -> int:
    if scale is None:
        return max(1, TARGET_SIDE // max(shape))
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ParameterError(f"scale: expected a positive integer, got {scale!r}")
    return int(scale)


def _parse_project(project: str | None, var: str) -> str:
    if project is None:
        return "mode" if var in ("label", "fractal") else "max"
    if project not in ("max", "mode"):
        raise ParameterError(f"project: expected 'max' or 'mode', got {project!r}")
    if project == "mode" and var not in ("label", "fractal"):
        raise ParameterError(f"project: 'mode' is for label and fractal, not {var}; use 'max'")
    return project


class _View:
    """What to show of a grid's variable: checked once, drawn per frame."""

    def __init__(self, grid: Any, var: str, slices: Any, dims: Any, project: str | None) -> None:
        from gridflow import store as store_mod

        self.grid = store_mod.as_grid(grid)
        spec = store_mod.grid_spec(self.grid)
        if var not in CATEGORICAL + GREY:
            raise ParameterError(
                f"var: expected one of {', '.join(CATEGORICAL + GREY)}, got {var!r}"
            )
        if spec.ndim < 2:
            raise ParameterError("render: the grid has one dim; images need at least two")
        self.var = var
        sizes = dict(zip(spec.dims, spec.shape, strict=True))
        self.sliced = parse_slices(slices, sizes)
        self.shown = _shown_dims(dims, spec.dims, self.sliced)
        self.project = _parse_project(project, var)
        self.nclasses = self.grid.sizes.get("class", 0)

    def draw(self, data: Any, vrange: tuple[float, float], scale: int | None) -> np.ndarray:
        plane = _plane(data, self.var, self.nclasses, self.sliced, self.shown, self.project)
        rgb = _colour(plane, self.var, vrange)
        k = _scale(plane.shape, scale)
        return np.repeat(np.repeat(rgb, k, axis=0), k, axis=1) if k > 1 else rgb


def image(
    grid: Any,
    var: str = "label",
    *,
    slices: Any = None,
    dims: Any = None,
    project: str | None = None,
    scale: int | None = None,
) -> np.ndarray:
    """The RGB image of one variable, ``(height, width, 3)`` uint8.

    Parameters
    ----------
    grid : xarray.Dataset or path
        A grid or the path of its store.
    var : {"label", "fractal", "cluster", "density", "level", "confidence"}
        The variable to show.
    slices : str or mapping, optional
        Cells to cut N-D grids at: ``"z=10"``, ``"z=10,t=0"`` or ``{"z": 10}``.
    dims : str or pair of str, optional
        The two dims shown, across then upwards (default: the first two
        not sliced). Dims neither sliced nor shown are projected.
    project : {"max", "mode"}, optional
        Projection of the other dims (default: "mode" for label and
        fractal, "max" otherwise).
    scale : int, optional
        Pixels per cell side (default: until the longer side reaches 512).

    Examples
    --------
    >>> rgb = image("grid.zarr", "label")  # doctest: +SKIP
    >>> rgb.shape  # doctest: +SKIP
    (400, 400, 3)
    """
    view = _View(grid, var, slices, dims, project)
    data = _variable(view.grid, var)
    return view.draw(data, _range(data, var), scale)


def plane(
    grid: Any,
    var: str = "label",
    *,
    slices: Any = None,
    dims: Any = None,
    project: str | None = None,
) -> np.ndarray:
    """The 2-D values :func:`image` colours, indexed ``[dims[0], dims[1]]``.

    ``slices`` cut the grid at cells of some dims, and the dims neither
    sliced nor shown are projected: ``project="max"``, ``"sum"`` (any
    variable, ``counts`` included, whose class axis is then summed too
    unless sliced with ``class=K``) or ``"mode"`` (label, fractal; the
    default for them, else "max"). On a sparse grid the plane is computed
    from the stored cells chunk by chunk: only the plane is dense.

    Examples
    --------
    >>> counts = plane("grid.zarr", "counts", slices="z=3", project="sum")  # doctest: +SKIP
    >>> counts.shape  # doctest: +SKIP
    (40, 30)
    """
    from gridflow import store as store_mod

    grid = store_mod.as_grid(grid)
    spec = store_mod.grid_spec(grid)
    if var in STAGE:
        data = _variable(grid, var)  # names the stage to run when it is missing
    elif var in grid.data_vars:
        data = grid[var]
    else:
        raise ParameterError(
            f"var: the grid has no variable {var!r}; it has {', '.join(map(str, grid.data_vars))}"
        )
    sizes = dict(zip(spec.dims, spec.shape, strict=True))
    if "class" in data.dims:
        sizes["class"] = grid.sizes["class"]
    sliced = parse_slices(slices, sizes)
    shown = _shown_dims(dims, spec.dims, sliced)
    if project is None:
        project = "mode" if var in ("label", "fractal") else "max"
    if project not in ("max", "sum", "mode"):
        raise ParameterError(f"project: expected 'max', 'sum' or 'mode', got {project!r}")
    return _projected(data, grid.sizes.get("class", 0), sliced, shown, project)


# --- files ------------------------------------------------------------------------------


def _image_path(
    path: str | os.PathLike,
    grid: Any,
    option: str,
    suffixes: tuple[str, ...],
    *,
    parents: bool = False,
) -> str:
    """``path``, checked before any drawing: its suffix, and that writing it
    replaces at most an image gridflow wrote and never touches the grid's store."""
    path = os.fspath(path)
    if not path.lower().endswith(suffixes):
        raise ParameterError(f"{option}: expected a {' or '.join(suffixes)} path, got {path!r}")
    check_output(path, overwrite=True, inputs={"the grid": grid}, option=option, parents=parents)
    return path


def _save_png(rgb: np.ndarray, path: str) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", signature())
    with staged_file(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", pnginfo=info)


def render(
    grid: Any,
    var: str = "label",
    out: str | os.PathLike | None = None,
    *,
    slices: Any = None,
    dims: Any = None,
    project: str | None = None,
    scale: int | None = None,
    animation: str | os.PathLike | None = None,
    fps: float = 10.0,
) -> list[str]:
    """Write the PNG image of ``var`` to ``out`` and/or its animation to ``animation``.

    The parameters are those of :func:`image` and :func:`animate`. Returns
    the paths written.

    Examples
    --------
    >>> render("grid.zarr", "fractal", "fractal.png", animation="fractal.gif")  # doctest: +SKIP
    ['fractal.png', 'fractal.gif']
    """
    if out is None and animation is None:
        raise ParameterError("render: nothing to write; give out (a .png) and/or an animation")
    if animation is not None:
        _image_path(animation, grid, "animation", (".gif", ".mp4"))
    written = []
    if out is not None:
        out = _image_path(out, grid, "out", (".png",))
        rgb = image(grid, var, slices=slices, dims=dims, project=project, scale=scale)
        _save_png(rgb, out)
        written.append(out)
    if animation is not None:
        kwargs = {"slices": slices, "dims": dims, "project": project, "scale": scale, "fps": fps}
        written.append(animate(grid, var, animation, **kwargs))
    return written


def animate(
    grid: Any,
    var: str,
    out: str | os.PathLike,
    *,
    slices: Any = None,
    dims: Any = None,
    project: str | None = None,
    scale: int | None = None,
    fps: float = 10.0,
) -> str:
    """Write the recorded frames of ``var`` as a GIF, or MP4 (needs imageio-ffmpeg).

    Frames come from ``<var>_frames`` (``gridflow fractal --record K``);
    the colours of grey variables span all frames. Returns ``out``.
    """
    view = _View(grid, var, slices, dims, project)
    name = f"{var}_frames"
    if name not in view.grid:
        raise StoreError(
            f"render: the grid has no recorded frames of {var!r}; record them with "
            "`gridflow fractal STORE --record K` (only the fractal stage records frames)"
        )
    if not fps > 0:
        raise ParameterError(f"fps: expected frames per second > 0, got {fps!r}")
    out = _image_path(out, grid, "animation", (".gif", ".mp4"))
    frames_var = view.grid[name]
    vrange = _range(frames_var, var)
    axis = frames_var.dims[0]
    frames = [
        view.draw(frames_var.isel({axis: i}), vrange, scale) for i in range(frames_var.sizes[axis])
    ]
    if out.lower().endswith(".gif"):
        _save_gif(frames, out, fps)
    else:
        _save_mp4(frames, out, fps)
    return out


def _save_gif(frames: list[np.ndarray], path: str, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    with staged_file(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=max(1, round(1000 / fps)),
            loop=0,
            comment=signature(),
        )


def _save_mp4(frames: list[np.ndarray], path: str, fps: float) -> None:
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401  (the encoder imageio uses)
    except ImportError:
        raise ParameterError(
            "animation: MP4 needs imageio and imageio-ffmpeg (pip install 'gridflow[viz]'); "
            "or write a .gif"
        ) from None
    # H.264 in yuv420p needs even sides: repeat the last row / column.
    h, w = frames[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    stack = np.stack([np.pad(f, pad, mode="edge") for f in frames])
    with staged_file(path) as tmp:
        iio.imwrite(
            tmp,
            stack,
            fps=fps,
            codec="libx264",
            macro_block_size=2,
            output_params=["-metadata", f"comment={signature()}"],
        )


def render_all(
    grid: Any,
    out_dir: str | os.PathLike,
    *,
    scale: int | None = None,
    animation: bool = True,
    fps: float = 10.0,
) -> dict[str, str]:
    """Write ``<var>.png`` for every variable of the grid that has an image.

    Also ``fractal.gif`` when the grid holds recorded fractal frames and
    ``animation`` is true. N-D grids show their first two dims, the others
    projected. ``out_dir`` may hold other files; of those, only images
    gridflow wrote are replaced, and all are checked before any drawing.
    Returns ``{name: path}``.

    Examples
    --------
    >>> render_all("grid.zarr", "demo-output")  # doctest: +SKIP
    {'label': 'demo-output/label.png', ...}
    """
    from gridflow import store as store_mod

    source, grid = grid, store_mod.as_grid(grid)
    out_dir = os.fspath(out_dir)
    names = [var for var in CATEGORICAL + GREY if var in grid]
    files = {var: f"{var}.png" for var in names}
    if animation and "fractal_frames" in grid:
        files["fractal.gif"] = "fractal.gif"
    paths = {
        name: _image_path(os.path.join(out_dir, file), source, "all", (file[-4:],), parents=True)
        for name, file in files.items()
    }
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for var in names:
        _save_png(image(grid, var, scale=scale), paths[var])
        written[var] = paths[var]
    if "fractal.gif" in paths:
        written["fractal.gif"] = animate(
            grid, "fractal", paths["fractal.gif"], scale=scale, fps=fps
        )
    return written
