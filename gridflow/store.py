"""Zarr stores of gridflow grids: schema, provenance, atomic writes.

A store is one Zarr v3 group readable with ``xr.open_zarr`` holding the
variables of docs/design.md §2 (``counts`` first, then what later stages add),
one bin-centre coordinate per dim and a ``class`` coordinate with the
original class names. Global attributes:

``gridflow_format``
    format version of the store (:data:`FORMAT_VERSION`);
``gridflow_version``
    the gridflow release that last wrote it;
``gridflow_grid``
    the :class:`~gridflow.grid.GridSpec` as a dict;
``gridflow_stages``
    per-stage parameters and reports (``{"bin": {...}, ...}``);
``history``
    one line per command that wrote the store (CF convention, newest last).

Data safety (docs/design.md §4.2) lives here, once, for every command:

- **one writer**: :func:`writer_lock` takes ``<store>/_gridflow_lock/`` (pid,
  host, command) for the whole of a writing command; a second writer is
  refused with the holder named (:class:`~gridflow.errors.StoreBusyError`),
  a stale lock (dead pid on this host) is taken over with a warning;
- **whole stages**: :func:`write_stage` writes a stage's variables into
  ``_gridflow_staging/`` inside the store, then invalidates the stage's
  marker, moves the variables into place and writes the marker (the stage's
  entry of ``gridflow_stages``) and the consolidated metadata in one atomic
  replacement of the root ``zarr.json``. A failure before the swap leaves
  the previous state valid; a kill during it leaves the stage listed in
  ``gridflow_incomplete``, which :func:`open_grid` drops and ``info``
  reports;
- a new store (``bin``) is written into a temporary sibling directory and
  renamed into place when complete.

Sparse variables (dask arrays of ``sparse.COO`` chunks, docs/design.md §3.5)
are stored as a group per variable of sorted linear keys, values and a
per-chunk offsets index (:mod:`gridflow.sparse_store`), written by the same
two writers in the same staging folders, so every rule above holds for them
too; a stage may replace a dense variable by a sparse one of the same name
or the reverse. :func:`open_grid` returns them as dask arrays of COO chunks
beside the dense ones.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from gridflow import sparse_store
from gridflow._staging import TEMPORARY, check_output, remove_when_idle, staged_directory
from gridflow.errors import (
    EmptyGridWarning,
    GridflowError,
    ParameterError,
    StaleLockWarning,
    StoreBusyError,
    StoreError,
    storage_error,
)
from gridflow.grid import GridSpec
from gridflow.sparse_grid import is_sparse

__all__ = [
    "FORMAT_VERSION",
    "as_grid",
    "check_writable",
    "counts_dataset",
    "grid_spec",
    "history_line",
    "incomplete_stages",
    "is_gridflow_store",
    "open_grid",
    "refuse_incomplete",
    "require_stage",
    "stage_attrs",
    "stage_of",
    "stage_variables",
    "summary",
    "update_attrs",
    "write_new_store",
    "write_stage",
    "writer_lock",
    "writes_store",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

#: Variables each stage writes, in the order ``info`` lists them.
STAGE_VARIABLES = {
    "bin": ("counts",),
    "classify": ("label", "confidence", "density", "votes", "probability"),
    "cluster": (
        "cluster_density",
        "level",
        "cluster",
        "node_level",
        "node_parent",
        "node_cells",
        "node_mass",
        "node_cluster",
        "node",
    ),
    "fractal": ("fractal", "fractal_frames", "fractal_iteration"),
}

#: Stages that also write their variables per pyramid level ``l >= 1`` as
#: ``NAME_l{l}`` (docs/design.md §3.5), the level's counts included.
LEVEL_VARIABLES = {"classify": ("counts", *STAGE_VARIABLES["classify"])}
_LEVEL = re.compile(r"^(.+)_l[1-9][0-9]*$")


def stage_of(variable: str) -> str | None:
    """The stage that writes ``variable`` (a pyramid level's too), or None."""
    match = _LEVEL.match(variable)
    if match is not None:
        stage = next((s for s, v in LEVEL_VARIABLES.items() if match.group(1) in v), None)
        if stage is not None:
            return stage
    return next((s for s, names in STAGE_VARIABLES.items() if variable in names), None)


def stage_variables(stage: str, names: Any) -> list[str]:
    """The names among ``names`` that ``stage`` writes (pyramid levels included)."""
    own = STAGE_VARIABLES.get(stage, ())
    levelled = LEVEL_VARIABLES.get(stage, ())
    out = []
    for name in map(str, names):
        match = _LEVEL.match(name)
        if name in own or (match is not None and match.group(1) in levelled):
            out.append(name)
    return out


#: The writer's lock: a folder in the store's root.
LOCK = "_gridflow_lock"
#: Seconds between a writer's touches of its lock, and the silence after which
#: the lock of a writer on another host counts as stale.
HEARTBEAT = 30.0
STALE_AFTER = 600.0
#: Folders of the store that are gridflow's own bookkeeping, not variables.
STAGING = "_gridflow_staging"
_INTERNAL = ("_gridflow_checkpoint", STAGING, LOCK)
#: Root attribute listing the stages whose write began and did not finish.
INCOMPLETE = "gridflow_incomplete"


def _version() -> str:
    from gridflow import __version__

    return __version__


def history_line(command: str, params: dict[str, Any]) -> str:
    """``<UTC time> gridflow <version> <command> <params as JSON>``."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{now} gridflow {_version()} {command} {json.dumps(params, default=str)}"


def counts_dataset(
    counts: Any,
    spec: GridSpec,
    classes: tuple,
    report: dict[str, Any],
    *,
    layout: str = "dense",
    occupied: int | None = None,
) -> Any:
    """Wrap a ``(class, *dims)`` count array in the store schema.

    The bin stage's record holds the ``layout`` ("dense" or "sparse") and,
    when given, the ``occupied`` cells (cells holding at least one point).
    """
    import xarray as xr

    coords: dict[str, Any] = {}
    for i, dim in enumerate(spec.dims):
        lo, hi = spec.bounds[i]
        coords[dim] = xr.Variable(
            dim,
            spec.centers(i),
            attrs={
                "bounds": [lo, hi],
                "bins": spec.bins[i],
                "periodic": int(spec.periodic[i]),
                "long_name": dim,
            },
        )
    coords["class"] = xr.Variable("class", _class_coordinate(classes))
    counts_var = xr.Variable(
        ("class", *spec.dims),
        counts,
        attrs={"long_name": "points per class per cell"},
    )
    # The grid itself is in gridflow_grid; the stage records what is its own.
    params: dict[str, Any] = {
        "chunks": [c[0] for c in counts.chunks[1:]],
        "report": report,
        "layout": layout,
    }
    if occupied is not None:
        params["occupied"] = int(occupied)
    attrs = {
        "gridflow_format": FORMAT_VERSION,
        "gridflow_version": _version(),
        "gridflow_grid": spec.to_dict(),
        "gridflow_stages": {"bin": params},
        "history": history_line("bin", {"grid": spec.to_dict(), "rows": report.get("rows")}),
    }
    return xr.Dataset({"counts": counts_var}, coords=coords, attrs=attrs)


def _class_coordinate(classes: tuple) -> np.ndarray:
    values = list(classes)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([str(v) for v in values], dtype=object)


def is_gridflow_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a Zarr group carrying gridflow's format attribute."""
    meta = os.path.join(os.fspath(path), "zarr.json")
    try:
        with open(meta) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return "gridflow_format" in (doc.get("attributes") or {})


def check_writable(
    path: str | os.PathLike, *, overwrite: bool, inputs: Mapping[str, Any] | None = None
) -> None:
    """Refuse a new store's path that would lose data (see :func:`check_output`).

    An existing path is replaced only with ``overwrite`` and only when
    gridflow wrote it; the store is never one of ``inputs`` (``{"the
    points": path}``), nor inside or around one. Raises :class:`StoreError`.
    """
    try:
        check_output(path, overwrite=overwrite, inputs=inputs, option="store")
    except ParameterError as exc:
        raise StoreError(str(exc)) from None


# --- the writer's lock ----------------------------------------------------------------

_held: dict[str, int] = {}  # real path -> depth, for this process
_held_guard = threading.Lock()


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid apart), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _lock_doc(command: str | None) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "process_start": _process_start(pid),
        "since": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command
        or " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)),
    }


def _read_lock(lock: str) -> dict[str, Any] | None:
    """The writer named by a lock folder, or None (unreadable or being written)."""
    try:
        doc = _read_json(os.path.join(lock, "zarr.json"))["attributes"]["gridflow_lock"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("pid"), int) else None


def _lock_is_live(doc: dict[str, Any], lock: str) -> bool:
    """Whether the lock's writer may still run.

    On this host the pid (and its start time) tells. A writer on another
    host touches its lock every :data:`HEARTBEAT` seconds; one silent for
    :data:`STALE_AFTER` seconds is taken for dead (a batch job requeued on
    another node must not wait for a writer that was killed).
    """
    if doc.get("host") != socket.gethostname():
        try:
            age = _dt.datetime.now().timestamp() - os.stat(os.path.join(lock, "zarr.json")).st_mtime
        except OSError:
            return True
        return age < STALE_AFTER
    pid = doc["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = doc.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def _busy(store: str, lock: str, doc: dict[str, Any] | None) -> StoreBusyError:
    if doc is None:
        who = "another gridflow process"
    else:
        who = f"pid {doc['pid']} on host {doc.get('host')}"
        if doc.get("command"):
            who += f" ({doc['command']}, since {doc.get('since')})"
    return StoreBusyError(
        f"store: {store} is being written by {who}; wait for it or remove the stale lock "
        f"with `rm -r {lock}`"
    )


def _acquire(store: str, command: str | None) -> str:
    # The lock is a folder (made atomically by mkdir) holding a Zarr group
    # document whose attributes name the writer, so Zarr sees a valid group.
    lock = os.path.join(store, LOCK)
    mine = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"gridflow_lock": _lock_doc(command)},
    }
    for _ in range(5):
        try:
            os.mkdir(lock)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder is None:
                # Being written this instant, or garbage: busy unless it is old.
                try:
                    age = _dt.datetime.now().timestamp() - os.stat(lock).st_mtime
                except FileNotFoundError:
                    continue
                if age < 10:
                    raise _busy(store, lock, None) from None
            elif _lock_is_live(holder, lock):
                raise _busy(store, lock, holder) from None
            # Stale: move it aside (only one taker wins the rename), check it is
            # the lock judged stale, and take the store.
            aside = f"{lock}.stale-{uuid.uuid4().hex[:12]}"
            try:
                os.rename(lock, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside)
            if moved is not None and holder is not None and moved != holder:
                with contextlib.suppress(OSError):  # a live writer's, taken meanwhile
                    os.rename(aside, lock)
                continue
            shutil.rmtree(aside, ignore_errors=True)
            what = (
                f"pid {holder['pid']} on host {holder.get('host')} no longer runs"
                if holder is not None
                else "its lock was unreadable"
            )
            warnings.warn(
                f"store: took over the writer lock of {store}: {what}",
                StaleLockWarning,
                stacklevel=4,
            )
            continue
        except OSError as exc:
            raise _os_error(exc, store) from None
        try:
            with open(os.path.join(lock, "zarr.json"), "w") as f:
                json.dump(mine, f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            shutil.rmtree(lock, ignore_errors=True)
            raise _os_error(exc, store) from None
        return lock
    raise _busy(store, lock, _read_lock(lock))


def _os_error(exc: OSError, store: str) -> GridflowError:
    """A write that the filesystem refused, as one line naming the store."""
    found = storage_error(exc, store)
    if found is not None:
        return found
    return StoreError(f"store: cannot write {store}: {exc.strerror or exc}")


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, *, command: str | None = None) -> Iterator[None]:
    """Hold ``path``'s writer lock for the ``with`` block (re-entrant in a process).

    Raises
    ------
    StoreBusyError
        When another live process holds it; the message names the holder.
    StoreError
        When the store cannot be written (read-only filesystem, no space).

    Examples
    --------
    >>> with writer_lock("grid.zarr"):  # doctest: +SKIP
    ...     pass  # no other gridflow process writes grid.zarr here
    """
    store = os.path.realpath(os.fspath(path))
    if not os.path.isdir(store):
        raise StoreError(f"store: {path} does not exist; create it with `gridflow bin`")
    _root_doc(store)  # never lock a folder that is not a gridflow store
    with _held_guard:
        depth = _held.get(store, 0)
        if depth:
            _held[store] = depth + 1
    if not depth:
        lock = _acquire(store, command)
        with _held_guard:
            _held[store] = 1
        stop = threading.Event()
        beat = threading.Thread(
            target=_heartbeat, args=(lock, stop), name="gridflow-lock", daemon=True
        )
        beat.start()
    try:
        yield
    finally:
        if not depth:
            stop.set()
        with _held_guard:
            _held[store] -= 1
            last = _held[store] == 0
            if last:
                del _held[store]
        if not depth and last:
            doc = _read_lock(lock)
            if doc is not None and doc.get("pid") == os.getpid():
                shutil.rmtree(lock, ignore_errors=True)


def abandon_writes() -> None:
    """Give back this process's locks and drop its staging folders, for a
    process about to end at once (SIGTERM): checkpoints and markers are
    valid at every moment, so nothing else needs undoing."""
    with _held_guard:
        stores = list(_held)
        _held.clear()
    for store in stores:
        shutil.rmtree(os.path.join(store, STAGING), ignore_errors=True)
        lock = os.path.join(store, LOCK)
        doc = _read_lock(lock)
        if doc is not None and doc.get("pid") == os.getpid():
            shutil.rmtree(lock, ignore_errors=True)


def _heartbeat(lock: str, stop: threading.Event) -> None:
    meta = os.path.join(lock, "zarr.json")
    while not stop.wait(HEARTBEAT):
        with contextlib.suppress(OSError):
            os.utime(meta)


# --- the root metadata: attributes, markers, consolidated metadata ---------------------


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_root(store: str, attrs: Mapping[str, Any]) -> None:
    """Replace the root ``zarr.json`` in one atomic step: ``attrs`` and the
    consolidated metadata of the store's arrays as they are on disk now."""
    root = os.path.join(store, "zarr.json")
    doc = _read_json(root)
    members = {}
    for name in sorted(os.listdir(store)):
        meta = os.path.join(store, name, "zarr.json")
        if name.startswith((".", *_INTERNAL)) or not os.path.isfile(meta):
            continue
        child = _read_json(meta)
        if child.get("node_type") == "array":
            members[name] = child
        elif sparse_store.ATTR in (child.get("attributes") or {}):
            members.update(sparse_store.consolidated_entries(store, name))
    doc["attributes"] = json.loads(json.dumps(dict(attrs), default=str))
    doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": members}
    tmp = f"{root}.{uuid.uuid4().hex}.partial"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _root_attrs(store: str) -> dict[str, Any]:
    return dict(_read_json(os.path.join(store, "zarr.json")).get("attributes") or {})


def update_attrs(path: str | os.PathLike, attrs: Mapping[str, Any]) -> None:
    """Merge ``attrs`` into a store's root attributes (under its writer lock)."""
    store = os.fspath(path)
    with writer_lock(store):
        _write_root(store, {**_root_attrs(store), **attrs})


def consolidate(path: str | os.PathLike) -> None:
    """Write the consolidated metadata of a store whose arrays were just written."""
    store = os.fspath(path)
    _write_root(store, _root_attrs(store))


def stage_attrs(
    attrs: Mapping[str, Any], stage: str, params: Mapping[str, Any], **record: Any
) -> dict[str, Any]:
    """``attrs`` with ``stage`` marked complete: its parameters (and ``record``,
    e.g. the per-step history) in ``gridflow_stages`` and a ``history`` line."""
    attrs = dict(attrs)
    stages = dict(attrs.get("gridflow_stages", {}))
    stages[stage] = {**params, **record}
    attrs["gridflow_stages"] = stages
    incomplete = [s for s in attrs.get(INCOMPLETE, []) if s != stage]
    if incomplete:
        attrs[INCOMPLETE] = incomplete
    else:
        attrs.pop(INCOMPLETE, None)
    line = history_line(stage, dict(params))
    attrs["history"] = (attrs.get("history", "") + "\n" + line).strip("\n")
    return attrs


def apply_stage(
    grid: Any,
    path: str | os.PathLike | None,
    stage: str,
    variables: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    coords: Mapping[str, Any] | None = None,
    extra: Any = None,
    record: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Any:
    """The one way a stage delivers its results: into its store, or onto ``grid``.

    With a store ``path`` this is :func:`write_stage`. Without one the
    variables are persisted on the workers together with ``extra``, the
    stage's earlier variables (:data:`STAGE_VARIABLES`) and ``coords`` are
    replaced, and the stage is recorded in the attributes exactly as a store
    records it (``params`` and ``record(extra)``).
    """
    if path is not None:
        return write_stage(
            path, stage, variables, params, coords=coords, extra=extra, record=record
        )[0]
    import dask

    names = list(variables)
    *data, extra = dask.persist(*[variables[n].data for n in names], extra)
    if extra is not None and hasattr(extra, "compute"):
        extra = extra.compute()
    out = {n: variables[n].copy(data=d) for n, d in zip(names, data, strict=True)}
    stale = [
        *stage_variables(stage, grid.variables),
        *(c for c in coords or {} if c in grid.variables),
    ]
    ds = grid.drop_vars(stale).assign_coords(dict(coords or {})).assign(out)
    rec = dict(record(extra)) if record is not None else {}
    ds.attrs = stage_attrs(grid.attrs, stage, params, **rec)
    return ds


#: Zarr fill values of the stages' label layers: a chunk never written reads as unlabeled.
FILL_VALUES = {"label": -1, "cluster": -1, "fractal": -1, "fractal_frames": -1}


def write_stage(
    path: str | os.PathLike,
    stage: str,
    variables: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    coords: Mapping[str, Any] | None = None,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    extra: Any = None,
    record: Callable[[Any], Mapping[str, Any]] | None = None,
) -> tuple[Any, Any]:
    """Write a stage's variables into a store, whole or not at all.

    The variables (``xarray.Variable``, dask-backed or not) and the stage's
    own ``coords`` are computed into ``_gridflow_staging/<stage>`` inside the
    store, together with ``extra`` (anything dask computes, e.g. per-step
    statistics). Only then is the stage's old marker removed, the old
    variables of the stage (those of :data:`STAGE_VARIABLES` too, so a
    variable this run does not write is not left stale) moved out, the new
    ones moved in, and the marker (``params`` and ``record(extra)``) written
    with the consolidated metadata in one atomic step. A failure while
    computing leaves the store as it was; a kill during the swap leaves the
    stage incomplete (reported by ``info``, dropped by :func:`open_grid`).
    Variables of ``sparse.COO`` chunks are spooled in the same computation
    and stored as :mod:`gridflow.sparse_store` groups; either layout may
    replace the other under the same name.

    Returns the store opened again and ``extra`` computed.
    """
    import dask
    import xarray as xr

    store = os.fspath(path)
    with writer_lock(store):
        staging_root = os.path.join(store, STAGING)
        shutil.rmtree(staging_root, ignore_errors=True)  # an interrupted write's
        new = os.path.join(staging_root, stage)
        old = os.path.join(staging_root, f"{stage}.old")
        try:
            os.makedirs(old)
            ds = xr.Dataset(dict(variables), coords=dict(coords or {}))
            ds, sparse_vars = sparse_store.split(host_variables(ds))
            enc = _encoding(ds)
            for name, given in (encoding or {}).items():
                if name in ds.variables:
                    enc[name] = {**enc.get(name, {}), **given}
            writes = ds.to_zarr(
                new, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=enc
            )
            # One computation for the dense writes, the sparse chunks and extra:
            # what they share (a round's result) is computed once. Low-level
            # fusion would rename the shared tasks inside extra's chains (the
            # writes' graph is optimised apart, by to_zarr), and every block of
            # the last round would run twice.
            spools = sparse_store.spool(new, sparse_vars)
            with dask.config.set({"optimization.fuse.active": False}):
                _, extra, spooled = dask.compute(writes, extra, spools)
            spooled = sparse_store.spooled_cells(spooled)
            sparse_store.finish(new, sparse_vars, spooled)
            rec = dict(record(extra)) if record is not None else {}
        except BaseException as exc:
            remove_when_idle(staging_root)
            if isinstance(exc, OSError):
                raise _os_error(exc, store) from exc
            raise
        try:
            attrs = _root_attrs(store)
            stages = dict(attrs.get("gridflow_stages", {}))
            stages.pop(stage, None)
            attrs["gridflow_stages"] = stages
            attrs[INCOMPLETE] = sorted({*attrs.get(INCOMPLETE, []), stage})
            _write_root(store, attrs)  # the old marker is gone before any variable moves
            names = [
                n for n in os.listdir(new) if os.path.isfile(os.path.join(new, n, "zarr.json"))
            ]
            for name in {*names, *stage_variables(stage, os.listdir(store))}:
                if os.path.exists(os.path.join(store, name)):
                    os.rename(os.path.join(store, name), os.path.join(old, name))
            for name in names:
                os.rename(os.path.join(new, name), os.path.join(store, name))
            _write_root(store, stage_attrs(attrs, stage, params, **rec))  # the marker, last
        except OSError as exc:
            raise _os_error(exc, store) from exc
        shutil.rmtree(staging_root, ignore_errors=True)
    log.info("%s: written to %s", stage, store)
    return open_grid(store), extra


def writes_store(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a stage whose first argument may be a store path: hold its
    writer lock for the whole call (an in-memory Dataset needs none)."""
    import functools

    @functools.wraps(fn)
    def wrapper(grid: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(grid, (str, os.PathLike)):
            with writer_lock(grid):
                return fn(grid, *args, **kwargs)
        return fn(grid, *args, **kwargs)

    return wrapper


def write_new_store(
    ds: Any,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Mapping[str, Any] | None = None,
) -> None:
    """Write ``ds`` as a new store at ``path``, all or nothing.

    ``path`` is checked with :func:`check_writable`. The dataset is written
    to a temporary sibling directory (computing any dask arrays chunk by
    chunk on the active scheduler; COO-chunked variables as
    :mod:`gridflow.sparse_store` groups) and renamed into place only when
    complete.
    """
    path = os.path.abspath(os.fspath(path))
    check_writable(path, overwrite=overwrite, inputs=inputs)
    # Replacing a store: no other gridflow command may be writing it meanwhile.
    held = writer_lock(path) if is_gridflow_store(path) else contextlib.nullcontext()
    dense, sparse_vars = sparse_store.split(host_variables(ds))
    with held, staged_directory(path, marker=False) as staging:
        dense.to_zarr(
            staging, mode="w-", zarr_format=3, consolidated=False, encoding=_encoding(dense)
        )
        sparse_store.write(staging, sparse_vars)
        consolidate(staging)
    log.info("wrote %s", path)


def _encoding(ds: Any) -> dict[str, dict[str, Any]]:
    return {n: {"fill_value": v} for n, v in FILL_VALUES.items() if n in ds.variables}


def open_grid(path: str | os.PathLike) -> Any:
    """Open a gridflow store as an xarray Dataset of dask arrays.

    Sparse variables (:mod:`gridflow.sparse_store`) are dask arrays of
    ``sparse.COO`` chunks, each chunk read by one task from its slice of the
    stored keys; the Dataset has the same names, dims, coords and attrs as
    a dense one.

    Only complete stages are returned: the variables of a stage whose write
    was interrupted are left out, and the stage is named in
    ``attrs["gridflow_incomplete"]`` (see :func:`require_stage`).

    Raises
    ------
    StoreError
        When ``path`` is missing, is not a gridflow store (or is the
        temporary folder of an interrupted write), was written by a newer
        format version, or its metadata contradicts itself.

    Examples
    --------
    >>> ds = open_grid("grid.zarr")  # doctest: +SKIP
    >>> ds["counts"].dims  # doctest: +SKIP
    ('class', 'x', 'y')
    """
    import xarray as xr

    path = os.fspath(path)
    if not os.path.exists(path):
        raise StoreError(f"store: {path} does not exist; create it with `gridflow bin`")
    parts = os.path.abspath(path).split(os.sep)
    if any(TEMPORARY.match(part) for part in parts):
        raise StoreError(
            f"store: {path} is the temporary folder of an interrupted gridflow write, not a "
            "store; the next write to the same path removes it"
        )
    doc = _root_doc(path)
    attrs = doc.get("attributes") or {}
    _check_attrs(path, attrs)
    consolidated = isinstance(doc.get("consolidated_metadata"), dict)
    try:
        ds = xr.open_zarr(path, consolidated=consolidated)
        sparse_vars = {
            n: sparse_store.read_variable(path, n) for n in sparse_store.sparse_names(path)
        }
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise StoreError(f"store: cannot open {path}: {exc}; the store is damaged") from None
    if sparse_vars:
        # In name order, as Zarr lists a dense store's arrays.
        found = {n: ds[n].variable for n in ds.data_vars if n not in sparse_vars} | sparse_vars
        encoding = ds.encoding
        ds = xr.Dataset({n: found[n] for n in sorted(found)}, coords=ds.coords, attrs=ds.attrs)
        ds.encoding = encoding
    if "counts" not in ds:
        raise StoreError(f"store: {path} lacks counts; recreate it with `gridflow bin`")
    spec = grid_spec(ds)
    if tuple(ds["counts"].shape[1:]) != spec.shape:
        raise StoreError(
            f"store: {path} records bins {list(spec.shape)} but its counts have shape "
            f"{list(ds['counts'].shape[1:])}; the store is damaged, recreate it with `gridflow bin`"
        )
    incomplete = incomplete_stages(ds)
    drop = [v for s in incomplete for v in stage_variables(s, ds.variables)]
    return ds.drop_vars(drop) if drop else ds


def _root_doc(path: str) -> dict[str, Any]:
    meta = os.path.join(path, "zarr.json")
    try:
        doc = _read_json(meta)
    except FileNotFoundError:
        doc = None
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"store: the metadata of {path} ({meta}) cannot be read ({exc}); the store is "
            "damaged, recreate it with `gridflow bin`"
        ) from None
    if not isinstance(doc, dict) or "gridflow_format" not in (doc.get("attributes") or {}):
        raise StoreError(
            f"store: {path} is not a gridflow store (no gridflow_format attribute); "
            "it was written by another program; create one with `gridflow bin`"
        )
    return doc


def _check_attrs(path: str, attrs: Mapping[str, Any]) -> None:
    """The root attributes gridflow relies on, checked against themselves."""
    fmt = attrs.get("gridflow_format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise StoreError(
            f"store: {path} has format version {fmt!r}, expected a positive integer; "
            "the store's metadata is damaged"
        )
    if fmt > FORMAT_VERSION:
        raise StoreError(
            f"store: {path} has format version {fmt}, newer than this gridflow reads "
            f"({FORMAT_VERSION}); upgrade gridflow"
        )
    stages = attrs.get("gridflow_stages", {})
    if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
        raise StoreError(
            f"store: {path} has a gridflow_stages attribute of type {type(stages).__name__}, "
            "expected a mapping of stage records; the store's metadata is damaged"
        )
    incomplete = attrs.get(INCOMPLETE, [])
    if not isinstance(incomplete, list) or not all(isinstance(s, str) for s in incomplete):
        raise StoreError(
            f"store: {path} has a {INCOMPLETE} attribute of type {type(incomplete).__name__}, "
            "expected a list of stage names; the store's metadata is damaged"
        )
    grid = attrs.get("gridflow_grid")
    if not isinstance(grid, dict):
        raise StoreError(f"store: {path} lacks its grid; recreate it with `gridflow bin`")
    try:
        GridSpec.from_dict(grid)
    except (ValueError, TypeError) as exc:
        raise StoreError(
            f"store: {path} records an invalid grid ({exc}); recreate it with `gridflow bin`"
        ) from None


def incomplete_stages(ds: Any) -> list[str]:
    """Stages of a store whose write began and did not finish."""
    return [s for s in ds.attrs.get(INCOMPLETE, []) if s not in ds.attrs.get("gridflow_stages", {})]


def refuse_incomplete(ds: Any, variable: str, *, needed_by: str = "") -> None:
    """Raise when ``variable`` is missing because its stage's write was interrupted."""
    stage = stage_of(variable)
    if variable not in ds.variables and stage in incomplete_stages(ds):
        require_stage(ds, stage, needed_by=needed_by)


def warn_if_empty(ds: Any, stage: str) -> None:
    """Warn (:class:`~gridflow.errors.EmptyGridWarning`) when the grid's bin
    report says it holds no point: ``stage`` would label nothing."""
    report = ds.attrs.get("gridflow_stages", {}).get("bin", {}).get("report", {})
    if isinstance(report, dict) and isinstance(report.get("binned"), int):
        empty = report["binned"] == 0
    elif is_sparse(ds["counts"]):  # a grid made by hand: count its cells
        empty = stored_entries(ds["counts"]) == 0
    else:  # a grid made by hand: count (one pass, small beside any stage)
        empty = not bool(ds["counts"].data.any())
    if empty:
        warnings.warn(
            f"{stage}: the grid holds no point, so every cell stays unlabeled; check the "
            "points, --bounds and --columns it was binned with",
            EmptyGridWarning,
            stacklevel=3,
        )


def require_stage(ds: Any, stage: str, *, store: str | None = None, needed_by: str = "") -> None:
    """Refuse a grid whose ``stage`` is missing or incomplete, saying what to run.

    Examples
    --------
    >>> require_stage(open_grid("grid.zarr"), "classify")  # doctest: +SKIP
    """
    if stage in ds.attrs.get("gridflow_stages", {}):
        return
    where = store or "the grid"
    arg = f" {store}" if store else ""
    who = f"{needed_by} needs it; " if needed_by else ""
    if stage in incomplete_stages(ds):
        raise StoreError(
            f"store: the {stage} stage of {where} is incomplete (its write was interrupted); "
            f"{who}rerun `gridflow {stage}{arg}` (with --resume to continue from its last round)"
        )
    raise StoreError(f"store: {where} has no {stage} stage; {who}run `gridflow {stage}{arg}` first")


def as_grid(grid: Any) -> Any:
    """A store path opened with :func:`open_grid`, or a Dataset as it is."""
    import xarray as xr

    if isinstance(grid, (str, os.PathLike)):
        return open_grid(grid)
    if isinstance(grid, xr.Dataset):
        return grid
    raise ParameterError(
        f"grid: expected a store path or an xarray Dataset from open_grid, got {type(grid).__name__}"
    )


def stage_input(grid: Any, backend: str | None = None) -> tuple[str | None, Any, GridSpec, Any]:
    """What a stage starts from: its store path (None for a Dataset), the grid,
    its GridSpec and the counts as a dask array (an in-memory grid: one chunk),
    with dense chunks on ``backend`` (:func:`gridflow.backend.move`; None: as stored)."""
    import dask.array as da

    from gridflow.backend import checked_backend, move

    backend = checked_backend(backend)  # before any work: a missing CuPy or device is named
    path = os.fspath(grid) if isinstance(grid, (str, os.PathLike)) else None
    grid = as_grid(grid)
    counts = grid["counts"].data
    if not isinstance(counts, da.Array):
        counts = da.from_array(counts, chunks=counts.shape)
    return path, grid, grid_spec(grid), move(counts, backend)


def host_variables(ds: Any) -> Any:
    """``ds`` with every dense variable's chunks in host memory (what Zarr writes)."""
    from gridflow.backend import move, ops

    for name, var in ds.variables.items():
        data = var.data
        if hasattr(data, "dask") and ops(data).name not in ("numpy", "sparse"):
            ds[name] = var.copy(data=move(data, "numpy"))
    return ds


def grid_spec(ds: Any) -> GridSpec:
    """The GridSpec recorded in a store's attributes."""
    try:
        return GridSpec.from_dict(ds.attrs["gridflow_grid"])
    except KeyError:
        raise StoreError("store: no gridflow_grid attribute; not a gridflow dataset") from None


def _fraction(part: int, whole: int) -> str:
    """``part / whole`` as a percentage, with the digits that tell small fractions apart."""
    f = 100.0 * part / whole if whole > 0 else 0.0
    return f"{f:.3g}%" if f >= 0.001 or f == 0 else f"{f:.2e}%"


def _spatial_cells(block: Any) -> np.ndarray:
    """Row-major keys of the spatial cells a ``(class, *dims)`` COO chunk stores."""
    from gridflow.sparse_grid import linear_keys

    return np.unique(linear_keys(block.coords[1:], block.shape[1:]))


def occupied_cells(counts: Any) -> int:
    """Spatial cells holding a point in sparse ``counts`` (class, *dims): one pass over
    the stored cells, chunk by chunk (the class axis is one chunk)."""
    import dask

    data = getattr(counts, "data", counts)
    parts = [
        dask.delayed(lambda b: int(_spatial_cells(b).size))(b) for b in data.to_delayed().ravel()
    ]
    return int(sum(dask.compute(*parts)))


def stored_entries(var: Any) -> int:
    """Cells stored by a sparse variable (the nnz of its COO chunks; a variable
    read from a store knows it from its metadata)."""
    import dask

    known = getattr(var, "encoding", {}).get("nnz")
    if isinstance(known, int):
        return known
    data = getattr(var, "data", var)
    parts = [dask.delayed(lambda b: int(b.nnz))(b) for b in data.to_delayed().ravel()]
    return int(sum(dask.compute(*parts)))


def summary(ds: Any) -> str:
    """A human-readable multi-line summary of a store (``gridflow info``)."""
    spec = grid_spec(ds)
    stages = ds.attrs.get("gridflow_stages", {})
    lines = [
        f"gridflow store (format {ds.attrs.get('gridflow_format')}, "
        f"written by gridflow {ds.attrs.get('gridflow_version')})"
    ]
    lines.append("grid:")
    for i, dim in enumerate(spec.dims):
        lo, hi = spec.bounds[i]
        chunk = ds["counts"].chunks[i + 1][0] if ds["counts"].chunks else spec.bins[i]
        lines.append(
            f"  {dim:<10} {spec.bins[i]:>8} bins  [{lo:g}, {hi:g}]"
            f"{'  periodic' if spec.periodic[i] else ''}  chunk {chunk}"
        )
    counts = ds["counts"]
    bin_record = stages.get("bin", {})
    if is_sparse(counts):
        occupied = bin_record.get("occupied")
        if not isinstance(occupied, int):
            occupied = occupied_cells(counts)
        lines.append(
            f"counts: {counts.dtype}, {stored_entries(counts):,} (class, cell) entries stored"
        )
        lines.append(
            f"layout: sparse, {occupied:,} of {spec.ncells:,} cells occupied "
            f"({_fraction(occupied, spec.ncells)})"
        )
    else:
        lines.append(f"counts: {counts.dtype}, {counts.nbytes / 2**20:.1f} MiB uncompressed")
        lines.append("layout: dense")
    report = bin_record.get("report", {})
    per_class = report.get("per_class") or {}
    lines.append(f"classes ({ds.sizes['class']}):")
    for name in ds["class"].values.tolist():
        n = per_class.get(str(name))
        lines.append(f"  {name!s:<16} {n:>14,} points" if n is not None else f"  {name!s}")
    if report:
        lines.append(
            f"rows: {report['rows']:,} read, {report['binned']:,} binned, "
            f"{report['rows'] - report['binned']:,} dropped "
            f"(non-finite {report['nonfinite']:,}, out of range {report['out_of_range']:,}, "
            f"bad label {report['bad_label']:,})"
        )
    done = ["bin", *(s for s in STAGE_VARIABLES if s != "bin" and s in stages)]
    listed = done + [f"{s} (incomplete: rerun it, with --resume)" for s in incomplete_stages(ds)]
    lines.append("stages: " + ", ".join(listed))
    history = ds.attrs.get("history", "")
    if history:
        lines.append("history:")
        lines.extend(f"  {h}" for h in str(history).splitlines())
    return "\n".join(lines)
