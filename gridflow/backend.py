"""One dispatch table for chunk kernels, keyed by the chunk type (docs/design.md §4.1).

Every engine operation asks :func:`ops` for the backend of the chunks it
was given and calls the array functions of that backend: its array
namespace (``xp``), ndimage, FFT, a copy to host memory and an empty
``meta`` array for dask. NumPy is registered when this module is imported;
CuPy and pydata-sparse are registered lazily, the first time one of their
arrays is seen, so nothing imports them before a user hands one in.

Adding a chunk type is one :func:`register_lazy` entry below, plus its
kernels: see :class:`Backend` for what a registration provides.

Examples
--------
>>> import numpy as np
>>> from gridflow.backend import ops
>>> b = ops(np.zeros(3))
>>> b.name, b.xp is np
('numpy', True)
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "Backend",
    "backend_of",
    "checked_backend",
    "is_numpy",
    "meta_like",
    "move",
    "namespace",
    "ops",
    "parse_backend",
    "register",
    "register_lazy",
    "require_backend",
    "task_threads",
    "to_host",
]

#: Environment variable naming the cores of one worker process; gridflow's local
#: cluster sets it for each worker it starts (cores / workers).
WORKER_CORES_ENV = "GRIDFLOW_WORKER_CORES"


@dataclass(frozen=True, eq=False)
class Backend:
    """What the engine needs of one chunk type.

    Attributes
    ----------
    name : str
        ``"numpy"``, ``"cupy"`` or ``"sparse"``.
    xp : module
        The array namespace (``numpy``, ``cupy``, ``sparse``).
    ndimage, fft : module or None
        ``scipy.ndimage`` / ``scipy.fft`` or their equivalents
        (``cupyx.scipy.ndimage``, ``cupyx.scipy.fft``); None where the
        chunk type has none (sparse chunks run their own code paths).
    to_host : callable
        A NumPy copy of a chunk, for writing and for host-only code.
    fft_options : dict
        Keyword arguments every FFT call takes.
    fft_threads : bool
        The FFT takes a ``workers=`` thread count: every call gets
        :func:`task_threads` (SciPy; CuPy's FFT runs on the device).
    kernels : dict
        Compiled chunk kernels by engine operation (``"vote"``,
        ``"fractal"``): module paths imported on first use. An operation
        with no entry runs the backend-neutral array code of the engine,
        which equals the kernel bit for bit.
    """

    name: str
    xp: ModuleType
    ndimage: ModuleType | None
    fft: ModuleType | None
    to_host: Callable[[Any], np.ndarray]
    fft_options: dict[str, Any] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)
    fft_threads: bool = False

    def kernel(self, operation: str) -> ModuleType | None:
        """The compiled kernels of ``operation`` on this backend, or None.

        NumPy's kernels are numba's: their parallel loops get the
        :func:`task_threads` of the calling thread first.
        """
        path = self.kernels.get(operation)
        if path is None:
            return None
        if self.name == "numpy":
            limit_numba_threads()
        return importlib.import_module(path)

    def fft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of one FFT call from the calling thread."""
        if self.fft_threads:
            return {**self.fft_options, "workers": task_threads()}
        return self.fft_options

    def meta(self, ndim: int, dtype: Any) -> Any:
        """An empty ``ndim``-dimensional chunk of ``dtype``: dask's ``meta``."""
        return self.xp.empty((0,) * ndim, dtype=dtype)


#: The dense chunk types a stage can be asked to run on (``backend=``, ``--backend``).
BACKENDS = ("numpy", "cupy")
#: The extras that install each backend's packages, by CUDA major version.
GPU_EXTRAS = "gridflow[gpu] (CUDA 13) or gridflow[gpu-cuda12] (CUDA 12)"

_TABLE: dict[type, Backend] = {}
_LAZY: dict[str, Callable[[], None]] = {}


def register(chunk_type: type, backend: Backend) -> None:
    """Use ``backend`` for chunks of ``chunk_type`` (and its subclasses)."""
    _TABLE[chunk_type] = backend
    _lookup.cache_clear()


def register_lazy(toplevel: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Decorator: call the function to register the types of module ``toplevel``
    the first time a chunk from that module is looked up."""

    def wrap(func: Callable[[], None]) -> Callable[[], None]:
        _LAZY[toplevel] = func
        return func

    return wrap


@functools.cache
def _lookup(chunk_type: type) -> Backend | None:
    for cls in chunk_type.__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return None


def _chunk(a: Any) -> Any:
    """The chunk type's representative of ``a``: a dask array's ``_meta``."""
    meta = getattr(a, "_meta", None)
    return a if meta is None else meta


def ops(a: Any) -> Backend:
    """The backend of ``a``: a chunk, or a dask array (by its ``meta``).

    Anything that is not a registered chunk type (lists, scalars) is NumPy.
    """
    chunk_type = type(_chunk(a))
    found = _lookup(chunk_type)
    if found is None:
        toplevel = chunk_type.__module__.split(".")[0]
        loader = _LAZY.pop(toplevel, None)
        if loader is not None:
            loader()
            found = _lookup(chunk_type)
    return found if found is not None else _NUMPY


def backend_of(*arrays: Any) -> Backend:
    """The one backend of ``arrays`` (None entries ignored).

    Raises
    ------
    TypeError
        When the arrays' chunks are of different types, naming both.
    """
    found: Backend | None = None
    first: type | None = None
    for a in arrays:
        if a is None:
            continue
        b = ops(a)
        if found is None:
            found, first = b, type(_chunk(a))
        elif b is not found:
            raise TypeError(
                f"mixed chunk types: {first.__module__}.{first.__name__} and "
                f"{type(_chunk(a)).__module__}.{type(_chunk(a)).__name__}; move every array "
                "to one backend first (e.g. cupy.asarray or .get())"
            )
    return found if found is not None else _NUMPY


def namespace(a: Any) -> ModuleType:
    """The array namespace of ``a`` (``numpy``, ``cupy``, ...)."""
    return ops(a).xp


def is_numpy(a: Any) -> bool:
    """Whether ``a`` (a chunk or a dask array) holds NumPy chunks."""
    return ops(a) is _NUMPY


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy (or view) of a chunk of any backend."""
    return ops(a).to_host(a)


def meta_like(a: Any, ndim: int | None = None, dtype: Any = None) -> Any:
    """A ``meta`` for a dask result computed from ``a``: its chunk type,
    ``ndim`` dims (default ``a``'s) and ``dtype`` (default ``a``'s)."""
    chunk = _chunk(a)
    ndim = chunk.ndim if ndim is None else ndim
    dtype = chunk.dtype if dtype is None else dtype
    return ops(a).meta(ndim, dtype)


def task_threads() -> int:
    """Threads one chunk task's FFT and compiled loops may use, from the calling thread.

    A Dask worker runs one task on each of its ``nthreads`` threads, so a task
    takes the worker's cores over its threads (at least one). A worker's
    cores are :data:`WORKER_CORES_ENV` where set (gridflow's local cluster
    sets it for each worker process, and for its in-process worker), else its
    threads: dask-jobqueue and dask-mpi start a worker with one thread per
    core it owns. Outside a worker (the in-memory reference, a threaded or
    synchronous scheduler) a task takes every core.

    Several worker processes on a node therefore no longer each run FFTs on
    all of its cores (``workers=-1``), nor numba's parallel loops on all of
    them, on top of their own threads.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return os.cpu_count() or 1
    nthreads = max(1, int(getattr(worker.state, "nthreads", 1)))
    cores = int(os.environ.get(WORKER_CORES_ENV) or nthreads)
    return max(1, cores // nthreads)


def limit_numba_threads() -> None:
    """Give numba's parallel loops of the calling thread :func:`task_threads` threads."""
    import numba

    numba.set_num_threads(min(task_threads(), numba.config.NUMBA_NUM_THREADS))


def parse_backend(value: Any) -> str | None:
    """``backend=``: None (the chunks as they come), ``"numpy"`` or ``"cupy"``."""
    from gridflow.errors import ParameterError

    if value is None or value in BACKENDS:
        return value
    raise ParameterError(f"backend: expected {' or '.join(map(repr, BACKENDS))}, got {value!r}")


def checked_backend(value: Any) -> str | None:
    """``backend=`` parsed (:func:`parse_backend`), and, when one is named, its
    packages and device checked (:func:`require_backend`): before any work."""
    name = parse_backend(value)
    if name is not None:
        require_backend(name)
    return name


def require_backend(name: str) -> Backend:
    """The registered backend ``name``, its packages and device checked first.

    Raises
    ------
    MissingDependencyError
        For ``"cupy"`` without CuPy (naming the extras that install it) or
        without a visible CUDA device.
    """
    from gridflow.errors import MissingDependencyError

    if name == "numpy":
        return _NUMPY
    try:
        import cupy
    except ImportError as exc:
        raise MissingDependencyError(
            f"backend cupy: needs CuPy ({exc}); install {GPU_EXTRAS}, or use --backend numpy"
        ) from None
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        devices, why = 0, f" ({exc})"
    else:
        why = ""
    if devices < 1:
        raise MissingDependencyError(
            f"backend cupy: no CUDA device is visible{why}; run on a GPU node "
            "(CUDA_VISIBLE_DEVICES), or use --backend numpy"
        )
    return ops(cupy.empty(0))


def move(a: Any, name: str | None) -> Any:
    """The dask array ``a`` with its dense chunks on backend ``name`` (None: as they are).

    NumPy chunks go to the device with ``cupy.asarray``, device chunks come
    back with the backend's ``to_host``; sparse chunks stay as they are
    (they have no device layout).
    """
    if name is None or ops(a).name in (name, "sparse"):
        return a
    target = require_backend(name)
    source = ops(a)
    convert = source.to_host if name == "numpy" else target.xp.asarray
    return a.map_blocks(convert, dtype=a.dtype, meta=target.meta(a.ndim, a.dtype))


def _numpy() -> Backend:
    import scipy.fft
    import scipy.ndimage

    return Backend(
        name="numpy",
        xp=np,
        ndimage=scipy.ndimage,
        fft=scipy.fft,
        to_host=np.asarray,
        fft_threads=True,
        kernels={"vote": "gridflow._kernels.vote", "fractal": "gridflow._kernels.fractal"},
    )


_NUMPY = _numpy()
register(np.ndarray, _NUMPY)


@register_lazy("cupy")
def _register_cupy() -> None:
    import cupy
    import cupyx.scipy.fft
    import cupyx.scipy.ndimage

    register(
        cupy.ndarray,
        Backend(
            name="cupy",
            xp=cupy,
            ndimage=cupyx.scipy.ndimage,
            fft=cupyx.scipy.fft,
            to_host=cupy.asnumpy,
            kernels={"vote": "gridflow._kernels.cuda_vote"},
        ),
    )


@register_lazy("sparse")
def _register_sparse() -> None:
    import sparse

    register(
        sparse.SparseArray,
        Backend(
            name="sparse",
            xp=sparse,
            ndimage=None,
            fft=None,
            to_host=lambda a: a.todense(),
        ),
    )
