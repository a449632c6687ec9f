"""Connected components of nested level sets on chunked grids.

For a level array (levels ``0 .. L-1`` per cell) the sets
``{level >= l}``, ``l = 1 .. L-1``, are nested, so their connected
components form a tree (the level-set hierarchy of docs/design.md §3.2). This module
finds the components of every level at once, across chunk borders and,
on periodic grids, across the seam where the grid wraps around:

1. each block, with a one-cell halo (wrapped around a periodic grid; "no
   cell" beyond an open edge), labels its own cells at every level with
   :func:`scipy.ndimage.label`. A piece is named by its first cell in C
   order (its global flat index), a name that does not depend on the
   chunking. Per piece the block reports its cells, its mass, the piece of
   the level below that contains it, and which cells beyond the block's
   faces it touches;
2. on the client the pieces of a level and their contacts across faces form
   a graph whose connected components (:mod:`scipy.sparse.csgraph`) are the
   components of the level set. Components are numbered in the order of
   their smallest cell index, so the numbering too is the same for every
   chunking;
3. :meth:`LevelSetTree.label` relabels the blocks at one level with an id
   per component.

This is dask-image's label-blocks-then-merge idea, done for all levels in one
pass over the data and extended to the wrap-around. It works on NumPy and
dask arrays and knows nothing of xarray.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gridflow.errors import ParameterError

__all__ = ["LevelComponents", "LevelSetTree", "level_set_tree", "parse_connectivity"]

#: A cell beyond an open edge: below every level.
_NO_CELL = -1


def parse_connectivity(connectivity: Any, ndim: int) -> int:
    """Neighbours that connect: 1 = cells sharing a face, ``ndim`` = any touching cell."""
    try:
        c = int(connectivity)
    except (TypeError, ValueError):
        c = None
    if c is None or c != connectivity or not 1 <= c <= ndim or isinstance(connectivity, bool):
        raise ParameterError(
            f"connectivity: expected an integer from 1 (faces) to {ndim} (any touching cell), "
            f"got {connectivity!r}"
        )
    return c


@dataclass
class LevelComponents:
    """The components of ``{level >= l}`` for one level ``l``.

    Components are numbered ``0 .. n-1`` in the order of ``rep``.

    Attributes
    ----------
    rep : ndarray of int64
        Smallest flat (C order) cell index of each component, increasing.
    cells, mass : ndarray of int64
        Cells of each component, and the sum of the mass array over them.
    parent : ndarray of int64
        Index of the component of level ``l - 1`` containing each one
        (0, the whole grid, for ``l = 1``).
    """

    level: int
    rep: np.ndarray
    cells: np.ndarray
    mass: np.ndarray
    parent: np.ndarray
    # Per block: the component of each of its pieces, in local label order.
    piece_component: list[np.ndarray] = field(repr=False, default_factory=list)
    # All pieces by name (increasing), and the component of each.
    piece_rep: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(1, np.int64))
    piece_comp: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(1, np.int64))

    def __len__(self) -> int:
        return len(self.rep)


@dataclass
class LevelSetTree:
    """Components of every level set ``{level >= l}``; ``levels[l]`` is level ``l``.

    Level 0 is the whole grid: one component.
    """

    shape: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    connectivity: int
    periodic: bool
    levels: list[LevelComponents]

    @property
    def nlevels(self) -> int:
        return len(self.levels)

    def label(self, level: da.Array, at: int, ids: np.ndarray) -> da.Array:
        """int32 ``ids[c]`` on the cells of component ``c`` of level ``at``, -1 elsewhere.

        ``level`` is the level array the tree was built from.
        """
        ids = np.asarray(ids, dtype=np.int32)
        level = level.rechunk(self.chunks)
        if at == 0:
            return da.full(self.shape, ids[0], dtype=np.int32, chunks=self.chunks)
        comp = self.levels[at]
        structure = ndi.generate_binary_structure(len(self.shape), self.connectivity)
        blocks = level.to_delayed()
        out = np.empty(blocks.shape, dtype=object)
        for b, index in enumerate(np.ndindex(blocks.shape)):
            mapping = np.concatenate([[-1], ids[comp.piece_component[b]]]).astype(np.int32)
            shape = tuple(c[i] for c, i in zip(self.chunks, index, strict=True))
            task = dask.delayed(_relabel)(blocks[index], at, structure, mapping)
            out[index] = da.from_delayed(
                task, shape, dtype=np.int32, meta=np.empty((0,) * len(shape), np.int32)
            )
        return da.block(out.tolist())


def level_set_tree(
    level: da.Array,
    mass: da.Array | None = None,
    *,
    nlevels: int,
    connectivity: int = 1,
    periodic: bool = False,
) -> LevelSetTree:
    """The components of ``{level >= l}`` for ``l = 1 .. nlevels-1``, and how they nest.

    Parameters
    ----------
    level : dask.array.Array
        Integer levels ``0 .. nlevels-1``.
    mass : dask.array.Array, optional
        Non-negative integers per cell (points) summed per component;
        default 1 per cell.
    nlevels : int
        Number of levels (at most 256).
    connectivity : int
        1: cells sharing a face connect; up to ``ndim``: cells sharing an
        edge, a corner, ... (as :func:`scipy.ndimage.generate_binary_structure`).
    periodic : bool
        The grid wraps around in every dim: components continue across the seam.

    Examples
    --------
    >>> lev = da.from_array(np.array([[1, 0, 1, 1], [1, 0, 0, 1]]), chunks=2)
    >>> tree = level_set_tree(lev, nlevels=2)
    >>> tree.levels[1].cells.tolist(), tree.levels[1].rep.tolist()
    ([2, 3], [0, 2])
    >>> periodic = level_set_tree(lev, nlevels=2, periodic=True)
    >>> periodic.levels[1].cells.tolist()
    [5]
    """
    ndim = level.ndim
    connectivity = parse_connectivity(connectivity, ndim)
    structure = ndi.generate_binary_structure(ndim, connectivity)
    shape = tuple(int(s) for s in level.shape)
    chunks = level.chunks
    lev16 = level.astype(np.int16)
    halo = da.overlap.overlap(
        lev16,
        depth=dict.fromkeys(range(ndim), 1),
        boundary=dict.fromkeys(range(ndim), "periodic" if periodic else _NO_CELL),
    )
    halo_blocks = halo.to_delayed()
    mass_blocks = None if mass is None else mass.rechunk(chunks).to_delayed()
    starts = [np.cumsum((0, *c[:-1])) for c in chunks]
    tasks = []
    for index in np.ndindex(halo_blocks.shape):
        offset = tuple(int(s[i]) for s, i in zip(starts, index, strict=True))
        tasks.append(
            dask.delayed(_block_pieces)(
                halo_blocks[index],
                None if mass_blocks is None else mass_blocks[index],
                offset,
                shape,
                nlevels,
                structure,
                periodic,
            )
        )
    per_block = dask.compute(*tasks)
    ncells = math.prod(shape)
    total = ncells if mass is None else int(sum(int(b[0]) for b in per_block))
    root = LevelComponents(
        0,
        np.zeros(1, np.int64),
        np.array([ncells], np.int64),
        np.array([total], np.int64),
        np.array([-1], np.int64),
    )
    levels = [root]
    for lv in range(1, nlevels):
        levels.append(_merge_level(lv, [b[1][lv - 1] for b in per_block], levels[-1]))
    return LevelSetTree(shape, chunks, connectivity, periodic, levels)


# --- per block ---------------------------------------------------------------------------


def _positive_offsets(structure: np.ndarray) -> np.ndarray:
    """Neighbour offsets whose first non-zero component is positive (one per pair)."""
    offs = np.argwhere(structure) - np.array(structure.shape) // 2
    keep = [o for o in offs if np.any(o) and o[np.flatnonzero(o)[0]] > 0]
    return np.array(keep, dtype=np.int64).reshape(-1, structure.ndim)


def _first_cells(flat: np.ndarray, n: int) -> np.ndarray:
    """Flat position of the first cell (C order) of each label 1 .. n."""
    nz = np.flatnonzero(flat)
    labs = flat[nz]
    # scipy numbers labels in the order their first cell is met: a new label
    # is where the running maximum grows. Checked; sorted otherwise.
    new = np.empty(len(labs), dtype=bool)
    if len(labs):
        new[0] = True
        new[1:] = labs[1:] > np.maximum.accumulate(labs)[:-1]
    if np.count_nonzero(new) == n and np.array_equal(labs[new], np.arange(1, n + 1)):
        return nz[new]
    _, first = np.unique(labs, return_index=True)
    return nz[first]


def _block_pieces(
    lev_h: np.ndarray,
    mass: np.ndarray | None,
    offset: tuple[int, ...],
    shape: tuple[int, ...],
    nlevels: int,
    structure: np.ndarray,
    periodic: bool,
) -> tuple[int, list[tuple[np.ndarray, ...]]]:
    """Pieces of one block at every level ``1 .. nlevels-1``, and the block's mass.

    Per level: ``(rep, cells, mass, parent_rep, shell_cell, shell_rep,
    contact_rep, contact_cell)``: the pieces (named by their first global
    cell), the piece of each of the block's face cells, and for each contact
    with a cell beyond a face, the piece touching it and that cell.
    """
    ndim = lev_h.ndim
    lev = lev_h[(slice(1, -1),) * ndim]
    bshape = lev.shape
    shape_a = np.array(shape, dtype=np.int64)
    strides = np.array([math.prod(shape[d + 1 :]) for d in range(ndim)], dtype=np.int64)
    gidx = np.zeros(bshape, dtype=np.int64)
    for d in range(ndim):
        axis = (np.arange(bshape[d], dtype=np.int64) + offset[d]) * strides[d]
        gidx += axis.reshape((-1,) + (1,) * (ndim - d - 1))
    gidx = gidx.ravel()

    face = np.zeros(bshape, dtype=bool)
    for d in range(ndim):
        idx = [slice(None)] * ndim
        idx[d] = [0, bshape[d] - 1]
        face[tuple(idx)] = True
    shell = np.flatnonzero(face)
    coords = np.stack(np.unravel_index(shell, bshape), axis=1)
    xs, hpos, cells_beyond = [], [], []
    for o in _positive_offsets(structure):
        nb = coords + o
        out = ((nb < 0) | (nb >= np.array(bshape))).any(axis=1)
        g = nb[out] + np.array(offset)
        if periodic:
            g %= shape_a
        inside = ((g >= 0) & (g < shape_a)).all(axis=1)
        xs.append(shell[out][inside])
        hpos.append(np.ravel_multi_index(tuple((nb[out][inside] + 1).T), lev_h.shape))
        cells_beyond.append(g[inside] @ strides)
    xs_a = np.concatenate(xs) if xs else np.empty(0, np.int64)
    hpos_a = np.concatenate(hpos) if hpos else np.empty(0, np.int64)
    beyond = np.concatenate(cells_beyond) if cells_beyond else np.empty(0, np.int64)
    lev_h_flat = lev_h.ravel()
    weights = None if mass is None else np.asarray(mass).ravel().astype(np.float64)
    block_mass = len(gidx) if weights is None else int(np.rint(weights.sum()))

    out_levels = []
    prev_flat = prev_rep = None
    empty = np.empty(0, np.int64)
    for lv in range(1, nlevels):
        lab, n = ndi.label(lev >= lv, structure)
        flat = lab.ravel()
        if n == 0:
            out_levels.append((empty,) * 8)
            prev_flat, prev_rep = flat, empty
            continue
        first = _first_cells(flat, n)
        rep = gidx[first]
        cells = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
        if weights is None:
            pmass = cells
        else:
            pmass = np.rint(np.bincount(flat, weights=weights, minlength=n + 1)[1:]).astype(
                np.int64
            )
        parent = np.full(n, -1, dtype=np.int64) if lv == 1 else prev_rep[prev_flat[first] - 1]
        s = flat[shell]
        keep = s > 0
        a = flat[xs_a]
        touch = (a > 0) & (lev_h_flat[hpos_a] >= lv)
        out_levels.append(
            (
                rep,
                cells,
                pmass,
                parent,
                gidx[shell[keep]],
                rep[s[keep] - 1],
                rep[a[touch] - 1],
                beyond[touch],
            )
        )
        prev_flat, prev_rep = flat, rep
    return block_mass, out_levels


def _relabel(block: np.ndarray, at: int, structure: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    # The same call as in _block_pieces, so the same local labels.
    lab, _ = ndi.label(np.asarray(block) >= at, structure)
    return mapping[lab]


# --- on the client -----------------------------------------------------------------------


def _merge_level(
    lv: int, blocks: list[tuple[np.ndarray, ...]], below: LevelComponents
) -> LevelComponents:
    """Join the pieces of one level across block faces into components."""
    sizes = [len(b[0]) for b in blocks]
    rep, cells, mass, parent, shell_cell, shell_rep, contact_rep, contact_cell = (
        np.concatenate([b[i] for b in blocks]) if blocks else np.empty(0, np.int64)
        for i in range(8)
    )
    n = len(rep)
    if n == 0:
        z = np.empty(0, np.int64)
        return LevelComponents(lv, z, z, z, z, [z for _ in blocks], z, z)
    order = np.argsort(rep, kind="stable")
    rep_s = rep[order]
    # The piece holding each contacted cell, from the face cells of all blocks.
    by_cell = np.argsort(shell_cell, kind="stable")
    shell_cell, shell_rep = shell_cell[by_cell], shell_rep[by_cell]
    pos = np.searchsorted(shell_cell, contact_cell)
    if len(contact_cell) and (
        pos.max() >= len(shell_cell) or not np.array_equal(shell_cell[pos], contact_cell)
    ):
        raise RuntimeError("gridflow.engine.components: a contacted cell is on no block's face")
    ia = np.searchsorted(rep_s, contact_rep)
    ib = np.searchsorted(rep_s, shell_rep[pos])
    graph = coo_matrix((np.ones(len(ia), np.int8), (ia, ib)), shape=(n, n)).tocsr()
    ncomp, comp = connected_components(graph, directed=False)
    # Name components by their smallest cell: the first of their pieces in rep order.
    _, first = np.unique(comp, return_index=True)
    by_rep = np.argsort(first, kind="stable")
    renumber = np.empty(ncomp, dtype=np.int64)
    renumber[by_rep] = np.arange(ncomp)
    comp = renumber[comp]
    firsts = first[by_rep]
    comp_cells = np.bincount(comp, weights=cells[order], minlength=ncomp)
    comp_mass = np.bincount(comp, weights=mass[order], minlength=ncomp)
    if lv == 1:
        comp_parent = np.zeros(ncomp, dtype=np.int64)
    else:
        # Every piece of a component lies in one component of the level below:
        # the one holding the piece below its first piece.
        held_by = parent[order][firsts]
        comp_parent = below.piece_comp[np.searchsorted(below.piece_rep, held_by)]
    piece_comp = np.empty(n, dtype=np.int64)
    piece_comp[order] = comp
    bounds = np.cumsum([0, *sizes])
    per_block = [piece_comp[a:b] for a, b in itertools.pairwise(bounds)]
    return LevelComponents(
        lv,
        rep_s[firsts],
        np.rint(comp_cells).astype(np.int64),
        np.rint(comp_mass).astype(np.int64),
        comp_parent,
        per_block,
        rep_s,
        comp,
    )
