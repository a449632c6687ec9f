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

Existing cells (docs/design.md §3.5). With ``exists`` (a boolean mask) only
those cells are in the grid: a cell off the mask is in no level set, the
root (level 0) holds the existing cells only, and :meth:`LevelSetTree.label`
gives the others -1. A sparse level array (dask array of pydata-sparse
``COO`` chunks, as :func:`gridflow.engine.equalize.equalize` makes it) says
which cells exist by its stored coordinates, and is labelled without ever
building a dense block: each block sorts its cells by row-major key, finds
each cell's neighbours by ``np.searchsorted`` on ``key + offset`` (the
offsets of the connectivity; a periodic dim the block spans whole wraps
inside it), labels its pieces with :func:`scipy.sparse.csgraph.connected_components`,
and reports the cells on its faces along the split dims and the cells
beyond them it would touch; the client join is the dense one, where a
touched cell that no block reports (absent, or below the level) joins
nothing. The work follows the existing cells, never the grid's volume, and
the components, their numbering and the tree equal the dense ones on a
grid where exactly those cells exist.
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

from gridflow.backend import ops
from gridflow.engine.equalize import existing_cells, values_at
from gridflow.errors import ParameterError

__all__ = ["LevelComponents", "LevelSetTree", "level_set_tree", "parse_connectivity"]

#: A cell beyond an open edge: below every level.
_NO_CELL = -1
#: Most neighbours a cell of a sparse grid looks up: connectivity ``c`` in
#: ``d`` dims gives each cell ``sum_{k <= c} C(d, k) 2**k`` of them, each a
#: search among the block's cells.
MAX_SPARSE_NEIGHBOURS = 1024
#: Sparse cells are named by int64 row-major keys.
_MAX_KEYS = 2**63 - 1


def parse_connectivity(connectivity: Any, ndim: int, *, sparse: bool = False) -> int:
    """Neighbours that connect: 1 = cells sharing a face, ``ndim`` = any touching cell.

    ``sparse``: also refuse a connectivity giving a cell more than
    :data:`MAX_SPARSE_NEIGHBOURS` neighbours to look up.
    """
    try:
        c = int(connectivity)
    except (TypeError, ValueError):
        c = None
    if c is None or c != connectivity or not 1 <= c <= ndim or isinstance(connectivity, bool):
        raise ParameterError(
            f"connectivity: expected an integer from 1 (faces) to {ndim} (any touching cell), "
            f"got {connectivity!r}"
        )
    if sparse:
        _sparse_offsets(ndim, c)
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

    Level 0 is the whole grid (its existing cells): one component. ``exists``
    is the mask the tree was built with (dense), ``sparse`` whether it was
    built from ``COO`` chunks.
    """

    shape: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    connectivity: int
    periodic: bool
    levels: list[LevelComponents]
    exists: da.Array | None = field(repr=False, default=None)
    sparse: bool = False

    @property
    def nlevels(self) -> int:
        return len(self.levels)

    def label(self, level: da.Array, at: int, ids: np.ndarray) -> da.Array:
        """int32 ``ids[c]`` on the cells of component ``c`` of level ``at``, -1 elsewhere.

        ``level`` is the level array the tree was built from. Sparse: ``COO``
        chunks (fill -1) storing every existing cell, -1 where it is below
        ``at`` or its component's id is -1.
        """
        ids = np.asarray(ids, dtype=np.int32)
        level = level.rechunk(self.chunks)
        if self.sparse:
            return self._label_sparse(level, at, ids)
        if self.exists is not None:
            level = da.where(self.exists, level, 0)
        if at == 0:
            whole = da.full(self.shape, ids[0], dtype=np.int32, chunks=self.chunks)
            if self.exists is None:
                return whole
            return da.where(self.exists, whole, np.int32(-1)).astype(np.int32)
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

    def _label_sparse(self, level: da.Array, at: int, ids: np.ndarray) -> da.Array:
        import sparse

        ndim = len(self.shape)
        meta = sparse.COO.from_numpy(np.empty((0,) * ndim, np.int32), fill_value=np.int32(-1))
        offsets = _sparse_offsets(ndim, self.connectivity)
        split = tuple(len(c) > 1 for c in self.chunks)
        starts = [np.cumsum((0, *c[:-1])) for c in self.chunks]
        blocks = level.to_delayed()
        out = np.empty(blocks.shape, dtype=object)
        for b, index in enumerate(np.ndindex(blocks.shape)):
            offset = tuple(int(s[i]) for s, i in zip(starts, index, strict=True))
            if at == 0:
                mapping = np.array([-1, ids[0]], np.int32)
            else:
                pieces = self.levels[at].piece_component[b]
                mapping = np.concatenate([[-1], ids[pieces]]).astype(np.int32)
            shape = tuple(c[i] for c, i in zip(self.chunks, index, strict=True))
            task = dask.delayed(_sparse_relabel)(
                blocks[index], at, offset, self.shape, offsets, self.periodic, split, mapping
            )
            out[index] = da.from_delayed(task, shape, dtype=np.int32, meta=meta)
        return da.block(out.tolist())


def level_set_tree(
    level: da.Array,
    mass: da.Array | None = None,
    *,
    nlevels: int,
    connectivity: int = 1,
    periodic: bool = False,
    exists: Any = None,
) -> LevelSetTree:
    """The components of ``{level >= l}`` for ``l = 1 .. nlevels-1``, and how they nest.

    Parameters
    ----------
    level : dask.array.Array
        Integer levels ``0 .. nlevels-1``: NumPy chunks, or pydata-sparse
        ``COO`` chunks whose stored coordinates are the existing cells
        (level-0 cells stored as explicit zeros).
    mass : dask.array.Array, optional
        Non-negative integers per cell (points) summed per component;
        default 1 per cell. ``COO`` chunks: 0 where not stored.
    nlevels : int
        Number of levels (at most 256).
    connectivity : int
        1: cells sharing a face connect; up to ``ndim``: cells sharing an
        edge, a corner, ... (as :func:`scipy.ndimage.generate_binary_structure`).
    periodic : bool
        The grid wraps around in every dim: components continue across the seam.
    exists : dask.array.Array, optional
        Dense levels only: a boolean mask of the cells that exist (default
        all). The others are in no level set and not in the root.

    Examples
    --------
    >>> lev = da.from_array(np.array([[1, 0, 1, 1], [1, 0, 0, 1]]), chunks=2)
    >>> tree = level_set_tree(lev, nlevels=2)
    >>> tree.levels[1].cells.tolist(), tree.levels[1].rep.tolist()
    ([2, 3], [0, 2])
    >>> periodic = level_set_tree(lev, nlevels=2, periodic=True)
    >>> periodic.levels[1].cells.tolist()
    [5]
    >>> exists = da.from_array(np.array([[1, 1, 0, 1], [1, 1, 1, 1]], bool), chunks=2)
    >>> masked = level_set_tree(lev, nlevels=2, exists=exists)
    >>> masked.levels[0].cells.tolist(), masked.levels[1].cells.tolist()
    ([7], [2, 2])
    """
    ndim = level.ndim
    connectivity = parse_connectivity(connectivity, ndim)
    if ops(level).name == "sparse":
        if exists is not None:
            raise ParameterError(
                "exists: a sparse level array says which cells exist by its stored "
                "coordinates; pass no mask"
            )
        return _sparse_tree(level, mass, nlevels, connectivity, periodic)
    structure = ndi.generate_binary_structure(ndim, connectivity)
    shape = tuple(int(s) for s in level.shape)
    chunks = level.chunks
    mask = None
    if exists is not None:
        if tuple(np.shape(exists)) != shape:
            raise ParameterError(
                f"exists: expected a mask of the level's shape {shape}, "
                f"got shape {tuple(np.shape(exists))}"
            )
        mask = exists if isinstance(exists, da.Array) else da.from_array(np.asarray(exists))
        mask = mask.astype(bool).rechunk(chunks)
        level = da.where(mask, level, 0)
        if mass is not None:
            mass = da.where(mask, mass.rechunk(chunks), 0)
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
    ncells = math.prod(shape) if mask is None else int(mask.sum().compute())
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
    return LevelSetTree(shape, chunks, connectivity, periodic, levels, exists=mask)


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
    lv: int, blocks: list[tuple[np.ndarray, ...]], below: LevelComponents, partial: bool = False
) -> LevelComponents:
    """Join the pieces of one level across block faces into components.

    ``partial``: a contacted cell on no block's face (a sparse grid's absent
    cell, or one below the level) joins nothing, instead of being an error.
    """
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
    if partial and len(contact_cell):
        hit = pos < len(shell_cell)
        hit[hit] = shell_cell[pos[hit]] == contact_cell[hit]
        contact_rep, pos = contact_rep[hit], pos[hit]
        contact_cell = contact_cell[hit]
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


# --- sparse grids: the existing cells only ----------------------------------------------


def _sparse_offsets(ndim: int, connectivity: int) -> np.ndarray:
    """Positive neighbour offsets of a sparse grid, refused past :data:`MAX_SPARSE_NEIGHBOURS`."""
    n = sum(math.comb(ndim, k) * 2**k for k in range(1, connectivity + 1))
    if n > MAX_SPARSE_NEIGHBOURS:
        raise ParameterError(
            f"connectivity: {connectivity} in {ndim} dims gives each cell {n} neighbours to look "
            f"up on a sparse grid, more than {MAX_SPARSE_NEIGHBOURS}; use a smaller connectivity "
            "(1 = faces)"
        )
    # The offsets of generate_binary_structure(ndim, c), without building its 3**ndim cube.
    offs = [
        np.array(o, dtype=np.int64)
        for k in range(1, connectivity + 1)
        for dims in itertools.combinations(range(ndim), k)
        for signs in itertools.product((-1, 1), repeat=k)
        for o in [_offset(ndim, dims, signs)]
        if o[dims[0]] > 0
    ]
    return np.array(offs, dtype=np.int64).reshape(-1, ndim)


def _offset(ndim: int, dims: tuple[int, ...], signs: tuple[int, ...]) -> list[int]:
    o = [0] * ndim
    for d, s in zip(dims, signs, strict=True):
        o[d] = s
    return o


def _strides(shape: tuple[int, ...]) -> np.ndarray:
    return np.array([math.prod(shape[d + 1 :]) for d in range(len(shape))], dtype=np.int64)


@dataclass
class _SparseBlock:
    """The existing cells of one block and the neighbour pairs among them.

    Cells are in row-major order (local and global orders agree). Only cells
    of level >= 1 take part in pairs, face cells and contacts.
    """

    level: np.ndarray  # int16 per cell
    gkey: np.ndarray  # int64 global row-major key per cell
    pair_a: np.ndarray  # cell index pairs inside the block
    pair_b: np.ndarray
    pair_level: np.ndarray  # min level of the pair
    face: np.ndarray  # cells another block's cell can touch
    contact_cell: np.ndarray  # per contact: the cell (of this block) touching ...
    contact_beyond: np.ndarray  # ... this global key beyond the block


def _sparse_block(
    block: Any,
    offset: tuple[int, ...],
    shape: tuple[int, ...],
    offsets: np.ndarray,
    periodic: bool,
    split: tuple[bool, ...],
) -> tuple[_SparseBlock, np.ndarray]:
    """Cells and pairs of a ``COO`` level block; also its sorted local keys."""
    ndim = len(shape)
    bshape = tuple(int(s) for s in block.shape)
    keys = existing_cells(block)
    level = values_at(block, keys).astype(np.int16)
    coords = np.stack(np.unravel_index(keys, bshape)).astype(np.int64).reshape(ndim, -1)
    origin = np.array(offset, dtype=np.int64)[:, None]
    gco = coords + origin
    gstr, lstr = _strides(shape), _strides(bshape)
    gkey = gstr @ gco if ndim else np.zeros(len(keys), np.int64)
    up = np.flatnonzero(level >= 1)
    c_up, g_up, k_up = coords[:, up], gco[:, up], keys[up]
    pa, pb, ca, cb = [], [], [], []
    for o in offsets:
        valid = np.ones(len(up), dtype=bool)
        cross = np.zeros(len(up), dtype=bool)
        ldelta = np.zeros(len(up), dtype=np.int64)
        gdelta = np.zeros(len(up), dtype=np.int64)
        for j in np.flatnonzero(o):
            g = g_up[j] + o[j]
            if periodic:
                g = g % shape[j]
            else:
                valid &= (g >= 0) & (g < shape[j])
            gdelta += (g - g_up[j]) * gstr[j]
            if split[j]:
                c = c_up[j] + o[j]
                cross |= (c < 0) | (c >= bshape[j])
                ldelta += o[j] * lstr[j]
            else:  # the block spans the dim: the (wrapped) neighbour is in it
                ldelta += (g - g_up[j]) * lstr[j]
        inside = np.flatnonzero(valid & ~cross)
        if len(inside) and len(keys):
            nb = k_up[inside] + ldelta[inside]
            pos = np.minimum(np.searchsorted(keys, nb), len(keys) - 1)
            found = keys[pos] == nb
            pa.append(up[inside[found]])
            pb.append(pos[found])
        out = np.flatnonzero(valid & cross)
        ca.append(up[out])
        cb.append(gkey[up[out]] + gdelta[out])
    empty = np.empty(0, np.int64)
    pair_a = np.concatenate(pa) if pa else empty
    pair_b = np.concatenate(pb) if pb else empty
    pair_level = np.minimum(level[pair_a], level[pair_b])
    keep = pair_level >= 1
    on_face = np.zeros(len(up), dtype=bool)
    for j in np.flatnonzero(split):
        on_face |= (c_up[j] == 0) | (c_up[j] == bshape[j] - 1)
    return (
        _SparseBlock(
            level,
            gkey,
            pair_a[keep],
            pair_b[keep],
            pair_level[keep],
            up[on_face],
            np.concatenate(ca) if ca else empty,
            np.concatenate(cb) if cb else empty,
        ),
        keys,
    )


def _sparse_pieces(blk: _SparseBlock, lv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces of ``{level >= lv}`` in a block, numbered by their first cell.

    Returns the piece of every cell (-1 below ``lv``), the first cell of
    each piece, and the number of pieces.
    """
    n = len(blk.level)
    idx = np.flatnonzero(blk.level >= lv)
    m = len(idx)
    piece = np.full(n, -1, dtype=np.int64)
    if m == 0:
        return piece, np.empty(0, np.int64), np.empty(0, np.int64)
    pos = np.full(n, -1, dtype=np.int64)
    pos[idx] = np.arange(m)
    sel = blk.pair_level >= lv
    a, b = pos[blk.pair_a[sel]], pos[blk.pair_b[sel]]
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(m, m)).tocsr()
    k, lab = connected_components(graph, directed=False)
    lab = lab.astype(np.int64)
    first = _first_cells(lab + 1, k)
    order = np.argsort(first, kind="stable")
    if not np.array_equal(order, np.arange(k)):  # number the pieces by their first cell
        rank = np.empty(k, dtype=np.int64)
        rank[order] = np.arange(k)
        lab, first = rank[lab], first[order]
    piece[idx] = lab
    return piece, idx[first], np.bincount(lab, minlength=k).astype(np.int64)


def _sparse_block_pieces(
    block: Any,
    mass: Any,
    offset: tuple[int, ...],
    shape: tuple[int, ...],
    nlevels: int,
    offsets: np.ndarray,
    periodic: bool,
    split: tuple[bool, ...],
) -> tuple[int, list[tuple[np.ndarray, ...]], int]:
    """:func:`_block_pieces` for a ``COO`` block; also its number of existing cells."""
    blk, keys = _sparse_block(block, offset, shape, offsets, periodic, split)
    if mass is None:
        weights = np.ones(len(keys), dtype=np.int64)
    else:
        weights = np.asarray(values_at(mass, keys)).astype(np.int64)
    block_mass = int(weights.sum())
    out_levels = []
    prev_piece = prev_rep = None
    empty = np.empty(0, np.int64)
    for lv in range(1, nlevels):
        piece, first, cells = _sparse_pieces(blk, lv)
        if len(first) == 0:
            out_levels.append((empty,) * 8)
            prev_piece, prev_rep = piece, empty
            continue
        rep = blk.gkey[first]
        sel = piece >= 0
        pmass = np.rint(
            np.bincount(piece[sel], weights=weights[sel].astype(np.float64), minlength=len(first))
        ).astype(np.int64)
        parent = np.full(len(first), -1, np.int64) if lv == 1 else prev_rep[prev_piece[first]]
        face = blk.face[piece[blk.face] >= 0]
        touch = blk.contact_cell[piece[blk.contact_cell] >= 0]
        beyond = blk.contact_beyond[piece[blk.contact_cell] >= 0]
        out_levels.append(
            (
                rep,
                cells,
                pmass,
                parent,
                blk.gkey[face],
                rep[piece[face]],
                rep[piece[touch]],
                beyond,
            )
        )
        prev_piece, prev_rep = piece, rep
    return block_mass, out_levels, len(keys)


def _sparse_tree(
    level: da.Array, mass: da.Array | None, nlevels: int, connectivity: int, periodic: bool
) -> LevelSetTree:
    ndim = level.ndim
    shape = tuple(int(s) for s in level.shape)
    if math.prod(shape) > _MAX_KEYS:
        raise ParameterError(
            f"level: a sparse grid of shape {shape} has more than 2**63 - 1 cells, more than "
            "int64 cell keys can name; use fewer bins"
        )
    offsets = _sparse_offsets(ndim, connectivity)
    chunks = level.chunks
    split = tuple(len(c) > 1 for c in chunks)
    blocks = level.to_delayed()
    mass_blocks = None if mass is None else mass.rechunk(chunks).to_delayed()
    starts = [np.cumsum((0, *c[:-1])) for c in chunks]
    tasks = []
    for index in np.ndindex(blocks.shape):
        offset = tuple(int(s[i]) for s, i in zip(starts, index, strict=True))
        tasks.append(
            dask.delayed(_sparse_block_pieces)(
                blocks[index],
                None if mass_blocks is None else mass_blocks[index],
                offset,
                shape,
                nlevels,
                offsets,
                periodic,
                split,
            )
        )
    per_block = dask.compute(*tasks)
    ncells = int(sum(b[2] for b in per_block))
    root = LevelComponents(
        0,
        np.zeros(1, np.int64),
        np.array([ncells], np.int64),
        np.array([int(sum(b[0] for b in per_block))], np.int64),
        np.array([-1], np.int64),
    )
    levels = [root]
    for lv in range(1, nlevels):
        parts = [b[1][lv - 1] for b in per_block]
        levels.append(_merge_level(lv, parts, levels[-1], partial=True))
    return LevelSetTree(shape, chunks, connectivity, periodic, levels, sparse=True)


def _sparse_relabel(
    block: Any,
    at: int,
    offset: tuple[int, ...],
    shape: tuple[int, ...],
    offsets: np.ndarray,
    periodic: bool,
    split: tuple[bool, ...],
    mapping: np.ndarray,
) -> Any:
    import sparse

    if at == 0:
        keys = existing_cells(block)
        piece = np.zeros(len(keys), dtype=np.int64)
    else:
        # The same pieces as in _sparse_block_pieces, so the same piece order.
        blk, keys = _sparse_block(block, offset, shape, offsets, periodic, split)
        piece, _, _ = _sparse_pieces(blk, at)
    coords = np.stack(np.unravel_index(keys, block.shape)).astype(np.int64)
    return sparse.COO(
        coords.reshape(len(shape), -1),
        mapping[piece + 1],
        shape=tuple(block.shape),
        fill_value=np.int32(-1),
        has_duplicates=False,
        sorted=True,
        prune=False,
    )
