"""Unsupervised clustering: density, equalized levels, level-set components (docs/design.md §3.2).

:func:`cluster` runs four steps, each exact and independent of the chunking:

1. **density** — the filter of :mod:`gridflow.engine.vote` on the class-free
   occupancy: every cell holding points (of any class) is labeled, and the
   damped sum over the steps of the total vote is the density, exactly as
   the classification's density (docs/design.md §3.1; with one class and the
   occupancy as its labels, bit for bit the density ``classify`` computes on
   the same grid). ``seed="counts"`` lets the first step vote with the
   number of points in each cell instead (a kernel density estimate, which
   keeps telling dense from denser when every cell holds points);
2. **levels** — histogram equalization of the density into ``L`` levels
   (:mod:`gridflow.engine.equalize`): ``method="cells"`` ranks among cells,
   ``"distinct"`` among distinct densities (the reference's rule);
3. **components** — the connected components of ``{level >= l}`` for every
   level (:mod:`gridflow.engine.components`), across chunk borders and, with
   ``boundary="periodic"``, across the seam. They nest into a tree, kept
   as the hierarchy table; components of fewer than ``min_cells`` cells are
   noise. The clusters are the components of one level, chosen or
   ``"auto"``;
4. **fill** (optional) — the supervised filter seeded with the cluster ids
   (cluster cells held fixed) gives every cell a cluster.

Written into the store: ``cluster_density`` (float32, the density the
levels were cut from), ``level`` (uint8), ``cluster`` (int32, -1 = noise)
and the hierarchy table along a ``node`` dim: ``node_level``,
``node_parent`` (-1 for the root), ``node_cells``, ``node_mass`` (points)
and ``node_cluster`` (the cluster id of the nodes of the chosen level, -1
for the others). The store's ``density`` (a classify output) is left as it
is; the stage attributes record the density where each level starts.

Which cells exist (docs/design.md §3.5). With ``support="reachable"`` on a
dense grid every cell exists, as above. With ``support="occupied"`` only
the cells holding points exist: the density filter treats the others as
:data:`~gridflow.engine.vote.OUTSIDE`, and the levels, the components and
the hierarchy are those of the occupied cells alone (the root holds them,
the others are -1 and level 0). A sparse grid (``COO`` chunks) clusters its
occupied cells the same way with either support (the support only says
where the density filter is evaluated), so a sparse grid and the dense grid
with ``support="occupied"`` give the same clusters. On a sparse grid
``level`` and ``cluster`` store exactly the occupied cells (level 0 and
noise as explicit entries: the stored coordinates say which cells exist),
``cluster_density`` the cells the filter reached.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from gridflow import store as store_mod
from gridflow._types import SEEDS, Boundary, EqualizeMethod, Seed, Support, choices
from gridflow.backend import move, ops
from gridflow.checkpoint import resume_point
from gridflow.classify import filter_record, parse_boundary, parse_iterations, parse_support
from gridflow.engine.components import LevelSetTree, level_set_tree, parse_connectivity
from gridflow.engine.equalize import DEFAULT_CUTS, equalize, parse_levels, parse_method
from gridflow.engine.vote import OUTSIDE, UNLABELED, run_dask
from gridflow.errors import ParameterError
from gridflow.kernels import Kernel, parse_kernel

__all__ = ["Hierarchy", "choose_level", "cluster", "hierarchy"]

log = logging.getLogger(__name__)

#: Variables the cluster stage writes (the hierarchy along the ``node`` dim).
NODE_VARIABLES = ("node_level", "node_parent", "node_cells", "node_mass", "node_cluster")
VARIABLES = ("cluster_density", "level", "cluster", *NODE_VARIABLES)


@dataclass
class Hierarchy:
    """The level-set tree as a table: one row per component of at least ``min_cells`` cells.

    Nodes are numbered level by level (the root, level 0, first), and within
    a level in the order of their smallest cell index (C order).
    """

    level: np.ndarray  # uint8
    parent: np.ndarray  # int32, -1 for the root
    cells: np.ndarray  # int64
    mass: np.ndarray  # int64: points
    # Per level: the node of each component (-1 when it is noise).
    node_of: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.level)

    def counts(self, nlevels: int) -> np.ndarray:
        """Nodes per level."""
        return np.bincount(self.level, minlength=nlevels)


def hierarchy(tree: LevelSetTree, min_cells: int) -> Hierarchy:
    """The nodes of ``tree``: its components of at least ``min_cells`` cells."""
    levels, parents, cells, mass, node_of = [], [], [], [], []
    start = 0
    for comp in tree.levels:
        keep = comp.cells >= min_cells
        ids = np.full(len(comp), -1, dtype=np.int64)
        ids[keep] = np.arange(start, start + int(keep.sum()))
        if comp.level == 0:
            parent = np.full(int(keep.sum()), -1, dtype=np.int64)
        else:
            # A parent holds all its child's cells, so it is a node too.
            parent = node_of[-1][comp.parent[keep]]
        levels.append(np.full(int(keep.sum()), comp.level, dtype=np.uint8))
        parents.append(parent)
        cells.append(comp.cells[keep])
        mass.append(comp.mass[keep])
        node_of.append(ids)
        start += int(keep.sum())
    return Hierarchy(
        np.concatenate(levels),
        np.concatenate(parents).astype(np.int32),
        np.concatenate(cells).astype(np.int64),
        np.concatenate(mass).astype(np.int64),
        node_of,
    )


def choose_level(h: Hierarchy, nlevels: int) -> int:
    """The cut whose clusters persist the most.

    Going up the levels a cluster persists as long as it neither vanishes
    nor splits; where it splits, the child holding the most points carries
    it on (the elder rule of persistent homology) and the other children
    are new clusters. A cluster's persistence is the number of points it
    holds summed over the levels it lives (HDBSCAN's excess of mass,
    counted in levels): a component that lives over many levels scores
    high, a fragment of background that lives over one level with a few
    points scores little. The cluster that starts at the root (the whole
    grid, level 0) scores 0, so one cluster alone is never preferred to
    several. The cut is the level whose clusters have the largest total
    persistence; on a tie the lowest such level, where its clusters are
    largest. With nothing but the root's cluster the answer is 1.
    """
    n = len(h)
    if n == 0:
        return 1
    # The child carrying each node's cluster on: its largest (then first) child.
    heir = np.full(n, -1, dtype=np.int64)
    for v in range(n - 1, -1, -1):  # later nodes first, so the first child wins ties
        p = h.parent[v]
        if p >= 0 and (heir[p] < 0 or h.mass[v] >= h.mass[heir[p]]):
            heir[p] = v
    chain = np.arange(n)
    for v in range(n):  # parents come before their children
        p = h.parent[v]
        if p >= 0 and heir[p] == v:
            chain[v] = chain[p]
    stability = np.bincount(chain, weights=h.mass.astype(np.float64), minlength=n)
    stability[chain[h.level == 0]] = 0.0
    score = np.bincount(h.level, weights=stability[chain], minlength=nlevels)
    score[0] = -1.0
    best = int(np.argmax(score))
    return best if score[best] > 0 else 1


def parse_level(level: int | str, nlevels: int) -> int | None:
    """A level index ``0 .. nlevels-1``, or None for ``"auto"``."""
    if level == "auto":
        return None
    try:
        n = int(level)
    except (TypeError, ValueError):
        n = None
    if n is None or isinstance(level, bool) or str(n) != str(level).strip() or not 0 <= n < nlevels:
        raise ParameterError(
            f"level: expected 'auto' or a level from 0 to {nlevels - 1}, got {level!r}"
        )
    return n


def resolve_support(support: Any, sparse: bool) -> str:
    """The support a run uses: ``"auto"`` is ``"occupied"`` on a sparse grid, else ``"reachable"``."""
    support = parse_support(support)
    if support == "auto":
        return "occupied" if sparse else "reachable"
    return support


def parse_min_cells(min_cells: Any) -> int:
    try:
        n = int(min_cells)
    except (TypeError, ValueError):
        n = None
    if n is None or isinstance(min_cells, bool) or n != min_cells or n < 1:
        raise ParameterError(
            f"min_cells: expected a positive integer (smaller components are noise), "
            f"got {min_cells!r}"
        )
    return n


@store_mod.writes_store
def cluster(
    grid: Any,
    *,
    kernel: str | np.ndarray | Kernel = "inverse_distance",
    window: int | None = 10,
    iterations: int | Literal["auto"] = 3,
    levels: int | Sequence[float] | str = DEFAULT_CUTS,
    method: EqualizeMethod = "cells",
    level: int | Literal["auto"] = "auto",
    min_cells: int = 20,
    connectivity: int = 1,
    fill: bool = False,
    fill_window: int | None = None,
    boundary: Boundary | None = None,
    seed: Seed = "labels",
    sigma: float | None = None,
    max_iter: int | None = None,
    support: Support = "auto",
    resume: bool = False,
    backend: str | None = None,
) -> Any:
    """Cluster a grid by the connected components of its equalized density levels.

    Parameters
    ----------
    grid : xarray.Dataset or path
        A grid from :func:`gridflow.bin_points` / :func:`gridflow.open_grid`,
        or the path of its store (results are then written into it). Classes
        are merged: only where the points are matters.
    kernel, window, sigma, iterations, boundary
        The density filter, as in :func:`gridflow.classify`.
        ``boundary="periodic"`` also joins components across the seam.
    levels : int or sequence of float
        Number of levels ``L`` (cuts at quantiles ``i / L``), or the cut
        quantiles; default the reference's 8 levels (cuts at 0.08, 0.18,
        0.28, 0.42, 0.62, 0.80, 0.95).
    method : {"cells", "distinct"}
        Equalize over cells (true histogram equalization) or over distinct
        density values (the reference implementation's rule).
    level : int or "auto"
        The level whose components are the clusters; "auto": the cut whose
        clusters persist the most (:func:`choose_level`).
    min_cells : int
        Components with fewer cells are noise (-1), and not in the hierarchy.
    connectivity : int
        1: cells sharing a face connect; up to the number of dims: also
        cells sharing an edge, a corner.
    fill : bool
        Give every cell a cluster: the vote filter seeded with the cluster
        ids (which stay fixed) runs until a step labels no new cell, that
        is until every cell has a cluster (at most ``max_iter`` steps,
        default enough to cross the grid).
    fill_window : int, optional
        Window radius of the fill filter; default ``window``. The fill
        needs about (distance to the nearest cluster) / ``fill_window``
        steps, and with an FFT a step costs the same for any window: a
        wider one fills a large empty grid in fewer steps, but lets a large
        cluster outvote a nearer small one.
    seed : {"labels", "counts"}
        The first density step votes with the occupancy (the reference
        method) or with the number of points per cell.
    support : {"auto", "reachable", "occupied"}
        ``"reachable"``: every cell exists and the filter is evaluated
        wherever a vote reaches (the dense §3.1 filter). ``"occupied"``:
        only cells holding points exist; the others never vote, have no
        level and are in no cluster, and the fill reaches occupied cells
        only. ``"auto"``: occupied on a sparse grid, else reachable (the
        choice is recorded as ``support``). A sparse grid always clusters
        its occupied cells.
    resume : bool
        With a store: do nothing when its cluster stage was finished with
        the same parameters, else run (the stage keeps no checkpoint, so
        an interrupted run starts again from the beginning).
    backend : {"numpy", "cupy"}, optional
        Where the dense chunks are computed: host memory, or the CUDA device
        (CuPy; gridflow[gpu]). Default: as the grid's chunks are. The density
        filter runs there; its levels and components are computed on the host.

    Returns
    -------
    xarray.Dataset
        The grid with ``level``, ``cluster`` and the hierarchy (``node_*``
        along ``node``); ``attrs["gridflow_stages"]["cluster"]`` holds the
        parameters, the chosen level, the number of clusters, the density
        where each level starts and the clusters per level.

    Examples
    --------
    >>> ds = cluster("grid.zarr", window=5, min_cells=20, fill=True)  # doctest: +SKIP
    >>> ds["cluster"].plot()  # doctest: +SKIP
    >>> gridflow.predict(ds, points, variable="cluster").codes  # doctest: +SKIP
    """
    path, grid, spec, counts = store_mod.stage_input(grid, backend)
    k = parse_kernel(kernel, window=window, ndim=spec.ndim, sigma=sigma)
    n_steps = parse_iterations(iterations)
    boundary = parse_boundary(boundary, spec)
    cuts = parse_levels(levels)
    nlevels = len(cuts) + 1
    method = parse_method(method)
    wanted = parse_level(level, nlevels)
    min_cells = parse_min_cells(min_cells)
    is_sparse = ops(counts).name == "sparse"
    support = resolve_support(support, is_sparse)
    params = {
        **filter_record(kernel, k, sigma, iterations, boundary, seed),
        "levels": list(cuts),
        "method": method,
        "level": level,
        "min_cells": min_cells,
        "connectivity": connectivity,
        "fill": bool(fill),
        "fill_window": fill_window,
        "support": support,
    }
    if path is not None:
        if resume_point(path, "cluster", params, resume=resume) == "finished":
            return grid
    elif resume:
        raise ParameterError("resume: needs a store path; pass the store instead of a Dataset")
    store_mod.warn_if_empty(grid, "cluster")
    connectivity = parse_connectivity(connectivity, spec.ndim, sparse=is_sparse)
    if seed not in SEEDS:
        raise ParameterError(f"seed: expected {choices(SEEDS)}, got {seed!r}")
    if max_iter is not None and (int(max_iter) != max_iter or max_iter < 1):
        raise ParameterError(f"max_iter: expected a positive integer, got {max_iter!r}")

    # 1. Density of the occupancy.
    # Persisted once: the density and the components' mass both read it.
    if is_sparse:
        points, occupied, exists, seed_counts = _sparse_occupancy(counts, seed)
        engine_support = support
    else:
        (points,) = dask.persist(counts.sum(axis=0, dtype=np.int64))
        # support="occupied": the empty cells are OUTSIDE, given here (not by the
        # engine's support) so that the fill below can keep noise cells existing.
        exists = points > 0 if support == "occupied" else None
        empty = UNLABELED if exists is None else OUTSIDE
        occupied = da.where(points > 0, 0, empty).astype(np.int32)
        seed_counts = points[None].astype(np.float64) if seed == "counts" else None
        engine_support = "reachable"
    final = run_dask(
        occupied,
        nclasses=1,
        kernel=k,
        iterations=n_steps,
        boundary=boundary,
        seed_counts=seed_counts,
        support=engine_support,
    )
    density = final.density
    if exists is not None and not is_sparse:
        density = da.where(exists.rechunk(density.chunks), density, 0.0)
    # The filter ran where the chunks are; the levels and components run on the
    # host (their labelling and cross-chunk merge are host code), from one copy.
    density, points = move(density, "numpy"), move(points, "numpy")
    exists = None if exists is None else move(exists, "numpy")
    (density,) = dask.persist(density)
    # 2. Levels (over the existing cells).
    eq = equalize(density, levels=cuts, method=method, exists=exists)
    (lev,) = dask.persist(eq.level)
    # 3. Components of every level, and the clusters of one.
    tree = level_set_tree(
        lev,
        points.rechunk(lev.chunks),
        nlevels=nlevels,
        connectivity=connectivity,
        periodic=boundary == "periodic",
        exists=None if is_sparse or exists is None else exists.rechunk(lev.chunks),
    )
    h = hierarchy(tree, min_cells)
    cut = choose_level(h, nlevels) if wanted is None else wanted
    nodes = h.node_of[cut]
    kept = nodes >= 0
    ids = np.full(len(nodes), -1, dtype=np.int32)
    ids[kept] = np.arange(int(kept.sum()), dtype=np.int32)
    nclusters = int(kept.sum())
    node_cluster = np.full(len(h), -1, dtype=np.int32)
    node_cluster[nodes[kept]] = ids[kept]
    labels = tree.label(lev, cut, ids)
    # 4. Fill.
    fill_steps = 0
    if fill and nclusters > 0:
        kf = (
            k
            if fill_window is None
            else parse_kernel(kernel, window=fill_window, ndim=spec.ndim, sigma=sigma)
        )
        limit = max_iter if max_iter is not None else _crossing_steps(spec.shape, kf)
        seeds = labels
        if not is_sparse and exists is not None:
            seeds = da.where(exists.rechunk(labels.chunks), labels, OUTSIDE).astype(np.int32)
        # A sparse grid's labels store every occupied cell (noise as explicit -1):
        # with support="occupied" those are the cells that exist.
        extra = {"support": support} if is_sparse else {}
        filled = run_dask(
            seeds,
            nclasses=nclusters,
            kernel=kf,
            iterations=None,
            boundary=boundary,
            clamp=True,
            tol=1.0,  # stop at the first step that labels no new cell
            max_iter=limit,
            **extra,
        )
        labels, fill_steps = filled.labels, filled.step
        if not is_sparse and exists is not None:
            labels = da.where(labels >= 0, labels, np.int32(UNLABELED)).astype(np.int32)

    chunks = counts.chunks[1:]
    if is_sparse:
        # No astype: it would drop the explicit level-0 and noise entries.
        outs = lev.rechunk(chunks), labels.rechunk(chunks), _sparse_float32(density, chunks)
        (lev_out, labels, dens_out) = dask.persist(*outs)
        noise = _sparse_noise(labels, points)
    else:
        outs = (
            lev.rechunk(chunks),
            labels.rechunk(chunks).astype(np.int32),
            density.rechunk(chunks).astype(np.float32),
        )
        (lev_out, labels, dens_out) = dask.persist(*outs)
        if exists is None:
            noise = float((labels < 0).sum().compute()) / labels.size
        else:
            n_exist, n_noise = dask.compute(exists.sum(), ((labels < 0) & exists).sum())
            noise = float(n_noise) / max(int(n_exist), 1)
    stage = {
        **params,
        "steps": final.step,
        "cut_level": cut,
        "clusters": nclusters,
        "noise": noise,
        "fill_steps": fill_steps,
        "level_densities": eq.threshold_densities,
        "clusters_per_level": h.counts(nlevels).tolist(),
    }
    log.info(
        "cluster: %d clusters at level %d of %d (%.2f%% of cells noise, support %s)",
        nclusters,
        cut,
        nlevels,
        100 * noise,
        support,
    )
    outputs = _outputs(grid, spec, dens_out, lev_out, labels, h, node_cluster)
    node = np.arange(len(h), dtype=np.int32)
    return store_mod.apply_stage(grid, path, "cluster", outputs, stage, coords={"node": node})


# --- sparse grids ------------------------------------------------------------------------


def _sparse_occupancy(counts: da.Array, seed: str) -> tuple[da.Array, ...]:
    """Points per occupied cell, the occupancy labels, the existing cells, the seed.

    ``points`` stores exactly the occupied cells (int64), ``occupied`` is 0
    on them (int32, fill -1); both say which cells exist by their coordinates.
    """
    import sparse

    ndim = counts.ndim - 1
    total = counts.sum(axis=0, dtype=np.int64)
    meta = sparse.COO.from_numpy(np.zeros((0,) * ndim, np.int64))
    (points,) = dask.persist(total.map_blocks(_stored_positive, dtype=np.int64, meta=meta))
    label_meta = sparse.COO.from_numpy(np.zeros((0,) * ndim, np.int32), fill_value=np.int32(-1))
    occupied = points.map_blocks(_occupancy_block, dtype=np.int32, meta=label_meta)
    seed_counts = None
    if seed == "counts":
        seed_meta = sparse.COO.from_numpy(np.zeros((0,) * (ndim + 1), np.float64))
        seed_counts = points.map_blocks(
            _seed_block, new_axis=0, chunks=((1,), *points.chunks), dtype=np.float64,
            meta=seed_meta,
        )  # fmt: skip
    return points, occupied, points, seed_counts


def _stored_positive(block: Any) -> Any:
    import sparse

    keep = np.asarray(block.data) > 0
    return sparse.COO(
        block.coords[:, keep], np.asarray(block.data)[keep].astype(np.int64), shape=block.shape,
        fill_value=0, has_duplicates=False, sorted=True,
    )  # fmt: skip


def _occupancy_block(block: Any) -> Any:
    import sparse

    return sparse.COO(
        block.coords, np.zeros(block.nnz, np.int32), shape=block.shape,
        fill_value=np.int32(UNLABELED), has_duplicates=False, sorted=True, prune=False,
    )  # fmt: skip


def _seed_block(block: Any) -> Any:
    import sparse

    coords = np.concatenate([np.zeros((1, block.nnz), np.int64), block.coords])
    return sparse.COO(
        coords, np.asarray(block.data, np.float64), shape=(1, *block.shape), fill_value=0.0,
        has_duplicates=False, sorted=True,
    )  # fmt: skip


def _sparse_float32(density: da.Array, chunks: tuple[tuple[int, ...], ...]) -> da.Array:
    import sparse

    meta = sparse.COO.from_numpy(np.zeros((0,) * density.ndim, np.float32))
    return density.rechunk(chunks).map_blocks(_float32_block, dtype=np.float32, meta=meta)


def _float32_block(block: Any) -> Any:
    import sparse

    return sparse.COO(
        block.coords, np.asarray(block.data).astype(np.float32), shape=block.shape,
        fill_value=np.float32(block.fill_value), has_duplicates=False, sorted=True, prune=False,
    )  # fmt: skip


def _sparse_noise(labels: da.Array, points: da.Array) -> float:
    """Fraction of the occupied cells without a cluster."""
    from gridflow.engine.equalize import existing_cells, values_at

    def count(lab: Any, pts: Any) -> tuple[int, int]:
        cells = existing_cells(pts)
        return len(cells), int(np.count_nonzero(values_at(lab, cells) < 0))

    pts = points.rechunk(labels.chunks)
    pairs = zip(labels.to_delayed().ravel(), pts.to_delayed().ravel(), strict=True)
    sizes = dask.compute(*[dask.delayed(count)(a, b) for a, b in pairs])
    cells = sum(c for c, _ in sizes)
    return sum(n for _, n in sizes) / max(cells, 1)


def _crossing_steps(shape: tuple[int, ...], k: Kernel) -> int:
    """Steps that let a label reach across the whole grid."""
    return max(100, max(math.ceil(n / max(r, 1)) for n, r in zip(shape, k.radius, strict=True)) + 1)


def _outputs(
    grid, spec, density, lev, labels, h: Hierarchy, node_cluster: np.ndarray
) -> dict[str, Any]:
    import xarray as xr

    dims = spec.dims
    return {
        "cluster_density": xr.Variable(
            dims, density, attrs={"long_name": "occupancy density the levels were cut from"}
        ),
        "level": xr.Variable(dims, lev, attrs={"long_name": "equalized density level"}),
        "cluster": xr.Variable(dims, labels, attrs={"long_name": "cluster id, -1 = noise"}),
        "node_level": xr.Variable("node", h.level, attrs={"long_name": "level of the component"}),
        "node_parent": xr.Variable(
            "node", h.parent, attrs={"long_name": "node of the enclosing component, -1 = root"}
        ),
        "node_cells": xr.Variable("node", h.cells, attrs={"long_name": "cells of the component"}),
        "node_mass": xr.Variable("node", h.mass, attrs={"long_name": "points in the component"}),
        "node_cluster": xr.Variable(
            "node", node_cluster, attrs={"long_name": "cluster id of the node, -1 = none"}
        ),
    }
