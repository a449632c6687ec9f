"""Sparse variables in a gridflow store: occupied cells as sorted keys (docs/design.md §3.5).

A variable whose dask chunks are ``sparse.COO`` (:mod:`gridflow.sparse_grid`)
is stored as a Zarr group of the variable's name beside the dense arrays:

``NAME/zarr.json``
    a group whose attribute ``gridflow_sparse`` holds ``format`` (1),
    ``dims``, ``shape`` (the variable's full shape, class axis included),
    ``chunks`` (the dask chunks, one list per axis), ``dtype``,
    ``fill_value`` (what every cell not stored holds: the chunks' own, one
    for all of them), ``attrs`` (the variable's attributes), ``nnz`` (cells
    stored) and ``id`` (a token of this write, so a rewritten variable never
    reuses a cached read);
``NAME/keys``
    uint64 ``(nnz,)``: the row-major linear key over ``shape`` of each cell
    stored (:func:`gridflow.sparse_grid.linear_keys`), chunk after chunk in
    C order of the dask block grid, sorted within each chunk;
``NAME/values``
    ``dtype`` ``(nnz,)``: the cells' values, in the order of ``keys``;
``NAME/offsets``
    uint64 ``(nchunks + 1,)``: dask chunk ``c`` holds
    ``keys[offsets[c]:offsets[c + 1]]``, so any chunk is read alone.

The root's consolidated metadata lists the group and its three arrays as
Zarr lists nested nodes (``NAME``, ``NAME/keys``, ...); ``xr.open_zarr``
opens the dense variables and skips the group, and :func:`read_variable`
makes the sparse one a dask array of COO chunks, one task per chunk reading
only its slice of ``keys`` and ``values``.

Why a spool: the offsets are known only once every chunk is computed, and
Zarr chunks of ``keys`` written by several tasks at once would race.
Writing goes chunk by chunk in two passes, inside the staging folder of the
store's all-or-nothing writers (:func:`gridflow.store.write_new_store`,
:func:`gridflow.store.write_stage`): :func:`spool` computes every chunk
once (in the same ``dask.compute`` as the stage's dense variables) and
spools its keys and values to ``NAME/_spool/``, returning the cells per
chunk; :func:`finish` then knows the offsets and copies the spool into
``keys`` and ``values`` one Zarr chunk per task (so no two tasks write the
same Zarr chunk), writes ``offsets`` and the group, and removes the spool.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from gridflow.sparse_grid import coo, is_sparse, linear_keys, unravel_keys

__all__ = [
    "ATTR",
    "consolidated_entries",
    "finish",
    "is_sparse_group",
    "read_variable",
    "sparse_names",
    "spool",
    "spooled_cells",
    "stored_cells",
    "write",
]

#: The group attribute that marks and describes a sparse variable.
ATTR = "gridflow_sparse"
FORMAT = 1
#: Elements per Zarr chunk of ``keys`` and ``values`` (8 MiB of keys).
ZARR_CHUNK = 2**20
ARRAYS = ("keys", "values", "offsets")
_SPOOL = "_spool"


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def is_sparse_group(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a sparse variable's group."""
    try:
        doc = _read_json(os.path.join(os.fspath(folder), "zarr.json"))
    except (OSError, ValueError):
        return False
    return doc.get("node_type") == "group" and ATTR in (doc.get("attributes") or {})


def sparse_names(store: str | os.PathLike) -> list[str]:
    """The sparse variables of a store (folders holding a sparse group), sorted."""
    store = os.fspath(store)
    try:
        names = sorted(os.listdir(store))
    except OSError:
        return []
    return [
        n for n in names if not n.startswith((".", "_")) and is_sparse_group(os.path.join(store, n))
    ]


def description(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``gridflow_sparse`` attribute of a sparse variable's group."""
    return _read_json(os.path.join(os.fspath(folder), "zarr.json"))["attributes"][ATTR]


def stored_cells(store: str | os.PathLike, name: str) -> int:
    """Cells stored for the sparse variable ``name`` (from its metadata, no data read)."""
    return int(description(os.path.join(os.fspath(store), name))["nnz"])


def consolidated_entries(store: str, name: str) -> dict[str, Any]:
    """The consolidated-metadata entries of sparse variable ``name``: its group
    and arrays, as Zarr lists nested nodes."""
    folder = os.path.join(store, name)
    group = dict(_read_json(os.path.join(folder, "zarr.json")))
    group["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {}}
    out = {name: group}
    for array in ARRAYS:
        meta = os.path.join(folder, array, "zarr.json")
        if os.path.isfile(meta):
            out[f"{name}/{array}"] = _read_json(meta)
    return out


# --- JSON of fill values and attributes ---------------------------------------------------


def _json_fill(value: Any) -> Any:
    value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return value


def _parse_fill(value: Any, dtype: np.dtype) -> Any:
    if isinstance(value, str):
        value = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}[value]
    return dtype.type(value)


def _json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(dict(attrs), default=default))


# --- writing ------------------------------------------------------------------------------


def _as_dask(data: Any) -> Any:
    """A dask array of ``data``: an in-memory COO becomes one chunk, as it is
    (no slicing: a COO's first ``__getitem__`` compiles for seconds)."""
    import dask
    import dask.array as da

    if isinstance(data, da.Array):
        return data
    return da.from_delayed(
        dask.delayed(data, traverse=False),
        shape=data.shape,
        dtype=data.dtype,
        meta=_empty_like(data),
    )


def _empty_like(data: Any) -> Any:
    import sparse

    return sparse.COO(
        np.empty((data.ndim, 0), np.int64),
        np.empty(0, data.dtype),
        shape=(0,) * data.ndim,
        fill_value=getattr(data, "fill_value", 0),
    )


def _origins(chunks: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    return [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64) for c in chunks]


def _spool_chunk(
    block: Any, folder: str, cid: int, origin: tuple[int, ...], shape: tuple[int, ...], dtype: Any
) -> int:
    """Spool one COO chunk's global keys and values; return its cells and fill value."""
    import sparse

    if not isinstance(block, sparse.COO):
        block = block.asformat("coo") if is_sparse(block) else sparse.COO.from_numpy(block)
    coords = block.coords.astype(np.int64, copy=True)
    coords += np.asarray(origin, np.int64)[:, None]
    keys = linear_keys(coords, shape)
    values = np.asarray(block.data, dtype=dtype)
    if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
    spool_dir = os.path.join(folder, _SPOOL)
    os.makedirs(spool_dir, exist_ok=True)
    np.save(os.path.join(spool_dir, f"{cid}.keys.npy"), keys)
    np.save(os.path.join(spool_dir, f"{cid}.values.npy"), values)
    return int(keys.size), np.asarray(block.fill_value, dtype=dtype).item()


def spool(folder: str | os.PathLike, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Lazy spooling of every chunk of each sparse variable into ``folder/NAME``.

    ``variables`` maps names to xarray Variables (or DataArrays) of COO
    chunks. Returns ``{name: dask array}`` with one ``(cells, fill)`` entry
    per chunk (an object array over the block grid). Compute them with the
    stage's other writes (one ``dask.compute``: shared inputs are computed
    once, and as arrays they are optimised with the rest of the graph), pass
    the results through :func:`spooled_cells`, then call :func:`finish`.
    """
    folder = os.fspath(folder)
    out: dict[str, Any] = {}
    for name, var in variables.items():
        data = _as_dask(getattr(var, "variable", var).data)
        target = os.path.join(folder, name)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(os.path.join(target, _SPOOL))
        out[name] = data.map_blocks(
            _spool_block,
            target,
            _origins(data.chunks),
            data.numblocks,
            data.shape,
            data.dtype,
            chunks=tuple((1,) * n for n in data.numblocks),
            dtype=object,
            meta=np.empty((0,) * data.ndim, dtype=object),
        )
    return out


def _spool_block(
    block: Any,
    target: str,
    origins: list[np.ndarray],
    numblocks: tuple[int, ...],
    shape: tuple[int, ...],
    dtype: Any,
    block_id: tuple[int, ...] | None = None,
) -> np.ndarray:
    idx = block_id if block_id is not None else (0,) * len(numblocks)
    cid = int(np.ravel_multi_index(idx, numblocks))
    origin = tuple(int(o[i]) for o, i in zip(origins, idx, strict=True))
    out = np.empty((1,) * len(numblocks), dtype=object)
    out.reshape(-1)[0] = _spool_chunk(block, target, cid, origin, shape, dtype)
    return out


def spooled_cells(computed: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """What :func:`spool`'s arrays computed to, as ``{name: [(cells, fill) per chunk]}``."""
    return {
        name: list(np.asarray(grid, dtype=object).reshape(-1)) for name, grid in computed.items()
    }


def _copy_range(folder: str, offsets: np.ndarray, start: int, stop: int) -> None:
    """Write ``keys`` and ``values`` ``[start:stop)`` (one Zarr chunk) from the spool."""
    import zarr

    first = int(np.searchsorted(offsets, start, side="right")) - 1
    last = int(np.searchsorted(offsets, stop, side="left"))
    parts: dict[str, list[np.ndarray]] = {"keys": [], "values": []}
    for c in range(first, last):
        a, b = max(start, int(offsets[c])), min(stop, int(offsets[c + 1]))
        if b <= a:
            continue
        for what in parts:
            piece = np.load(os.path.join(folder, _SPOOL, f"{c}.{what}.npy"), mmap_mode="r")
            parts[what].append(np.asarray(piece[a - int(offsets[c]) : b - int(offsets[c])]))
    for what, pieces in parts.items():
        zarr.open_array(os.path.join(folder, what), mode="r+")[start:stop] = np.concatenate(pieces)


def finish(
    folder: str | os.PathLike, variables: Mapping[str, Any], spooled: Mapping[str, list[tuple]]
) -> None:
    """Write the groups of the spooled ``variables`` (``spooled``: what :func:`spool`
    computed). The fill value is the chunks' own (a dask ``meta`` may not carry it);
    chunks that disagree on it are refused."""
    import dask
    import zarr

    folder = os.fspath(folder)
    tasks = []
    for name, var in variables.items():
        var = getattr(var, "variable", var)
        data = _as_dask(var.data)
        target = os.path.join(folder, name)
        cells = [c for c, _ in spooled[name]]
        offsets = np.concatenate([[0], np.cumsum(np.asarray(cells, np.int64))]).astype(np.uint64)
        nnz = int(offsets[-1])
        dtype = np.dtype(data.dtype)
        fill = _chunks_fill(name, [f for _, f in spooled[name]], _fill_value(data), dtype)
        doc = {
            "format": FORMAT,
            "dims": [str(d) for d in var.dims],
            "shape": [int(s) for s in data.shape],
            "chunks": [[int(c) for c in axis] for axis in data.chunks],
            "dtype": dtype.str,
            "fill_value": _json_fill(fill),
            "attrs": _json_attrs(var.attrs),
            "nnz": nnz,
            "id": uuid.uuid4().hex,
        }
        group = zarr.open_group(target, mode="a", zarr_format=3)
        side = max(1, min(ZARR_CHUNK, nnz))
        group.create_array("keys", shape=(nnz,), chunks=(side,), dtype=np.uint64, fill_value=0)
        group.create_array("values", shape=(nnz,), chunks=(side,), dtype=dtype, fill_value=fill)
        index = group.create_array(
            "offsets", shape=offsets.shape, chunks=offsets.shape, dtype=np.uint64, fill_value=0
        )
        index[:] = offsets
        group.attrs[ATTR] = doc
        for start in range(0, nnz, side):
            tasks.append(
                dask.delayed(_copy_range, pure=False)(
                    target, offsets, start, min(nnz, start + side)
                )
            )
    dask.compute(*tasks)
    for name in variables:
        shutil.rmtree(os.path.join(folder, name, _SPOOL), ignore_errors=True)


def _chunks_fill(name: str, fills: list[Any], meta_fill: Any, dtype: np.dtype) -> Any:
    """The one fill value of a variable's chunks (``meta_fill`` when it has none)."""
    found = {_json_fill(f) for f in fills} or {_json_fill(meta_fill)}
    if len(found) > 1:
        raise ValueError(
            f"sparse: the chunks of {name} have different fill values ({sorted(map(str, found))}); "
            "a sparse variable has one fill value"
        )
    return _parse_fill(found.pop(), dtype)


def _fill_value(data: Any) -> Any:
    meta = getattr(data, "_meta", data)
    return getattr(meta, "fill_value", 0)


def write(folder: str | os.PathLike, variables: Mapping[str, Any]) -> None:
    """:func:`spool` and :func:`finish` in one go (a new store's sparse variables)."""
    import dask

    if not variables:
        return
    (spooled,) = dask.compute(spool(folder, variables))
    spooled = spooled_cells(spooled)
    finish(folder, variables, spooled)


# --- reading ------------------------------------------------------------------------------


def _read_block(
    folder: str,
    offsets: np.ndarray,
    numblocks: tuple[int, ...],
    shape: tuple[int, ...],
    dtype: Any,
    fill: Any,
    block_id: tuple[int, ...] | None = None,
    block_info: Any = None,
) -> Any:
    import zarr

    cid = int(np.ravel_multi_index(block_id, numblocks))
    a, b = int(offsets[cid]), int(offsets[cid + 1])
    location = block_info[None]["array-location"]
    chunk_shape = tuple(hi - lo for lo, hi in location)
    if b > a:
        keys = zarr.open_array(os.path.join(folder, "keys"), mode="r")[a:b]
        values = zarr.open_array(os.path.join(folder, "values"), mode="r")[a:b]
    else:
        keys, values = np.empty(0, np.uint64), np.empty(0, dtype)
    coords = unravel_keys(keys, shape)
    coords -= np.asarray([lo for lo, _ in location], np.int64)[:, None]
    return coo(coords, np.asarray(values, dtype=dtype), chunk_shape, fill_value=fill)


def read_variable(store: str | os.PathLike, name: str) -> Any:
    """The sparse variable ``name`` of a store: an xarray Variable of COO chunks, lazily read."""
    import dask.array as da
    import sparse
    import xarray as xr
    import zarr
    from dask.base import tokenize

    folder = os.path.join(os.fspath(store), name)
    doc = description(folder)
    dtype = np.dtype(doc["dtype"])
    fill = _parse_fill(doc["fill_value"], dtype)
    shape = tuple(int(s) for s in doc["shape"])
    chunks = tuple(tuple(int(c) for c in axis) for axis in doc["chunks"])
    offsets = np.asarray(zarr.open_array(os.path.join(folder, "offsets"), mode="r")[:], np.uint64)
    numblocks = tuple(len(c) for c in chunks)
    if offsets.size != math.prod(numblocks) + 1:
        from gridflow.errors import StoreError

        raise StoreError(
            f"store: the sparse variable {name} of {store} indexes {offsets.size - 1} chunks but "
            f"its chunks make {math.prod(numblocks)}; the store is damaged, write it again"
        )
    meta = sparse.COO(
        np.empty((len(shape), 0), np.int64),
        np.empty(0, dtype),
        shape=(0,) * len(shape),
        fill_value=fill,
    )
    reader = functools.partial(_read_block, folder, offsets, numblocks, shape, dtype, fill)
    data = da.map_blocks(
        reader,
        chunks=chunks,
        dtype=dtype,
        meta=meta,
        name=f"open-sparse-{name}-{tokenize(os.path.abspath(folder), doc['id'])}",
    )
    var = xr.Variable(tuple(doc["dims"]), data, attrs=doc.get("attrs") or {})
    var.encoding = {"chunks": tuple(c[0] for c in chunks), "fill_value": fill, "nnz": doc["nnz"]}
    return var


def split(ds: Any) -> tuple[Any, dict[str, Any]]:
    """``ds`` without its sparse data variables, and those variables by name."""
    names = [n for n in ds.data_vars if is_sparse(ds[n])]
    return (ds.drop_vars(names) if names else ds), {n: ds[n].variable for n in names}
