"""User window filters: any arithmetic of stored layers, correlated with any kernel.

:func:`window_filter` evaluates an expression of a grid's variables cell by
cell (``"counts[0]**2 - counts[1]**2"``: the difference of the squares of
two class layers), then correlates it with a window kernel (docs/design.md §3.1's
kernels, or any array with odd sides) on N-D grids, distributed with
``map_overlap`` halos as deep as the kernel's radius. Beyond the grid's
edges the values wrap (``"periodic"``), do not exist (``"open"``: windows
shrink at the border) or hold ``cval`` (``"constant"``).

Exactness. Kernel weights are dyadic (multiples of the kernel's quantum,
:mod:`gridflow.kernels`), so on integer values every product and partial
sum is an exact float64: direct sums, separable passes, running sums and
an FFT rounded back to the quantum all give the same bits, and FFTs are
only used where their round-off provably stays below half a quantum. An
expression is integer-valued when it is built from integer variables and
integer constants with ``+ - *``, unary minus and non-negative integer
powers; anything else (``/``, a fractional constant, a float variable)
is correlated only by direct sums or separable passes, which add each
cell's window in a fixed order whatever the block around it, so the
result does not depend on the chunking either, and is exact whenever the
values are dyadic with few enough bits (as ``0.25`` or ``1.75``).

This module composes the expression (xarray) and the engine's
:func:`gridflow.engine.correlate.correlate` (arrays).
"""

from __future__ import annotations

import ast
import json
import keyword
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from gridflow import store as store_mod
from gridflow._types import (
    CORRELATION_METHODS,
    FILTER_BOUNDARIES,
    CorrelationMethod,
    FilterBoundary,
    choices,
)
from gridflow.backend import meta_like
from gridflow.classify import parse_boundary
from gridflow.errors import ParameterError
from gridflow.kernels import Kernel, parse_kernel

__all__ = ["Expression", "parse_expression", "window_filter"]

log = logging.getLogger(__name__)

#: The stage of every filter output: the last run's parameters, and ``outputs: {name: params}``.
STAGE = "filter"
#: Attribute of a filter output holding its parameters (the record, kept with the data).
ATTR = "gridflow_filter"
#: Name of the output when none is given.
DEFAULT_NAME = "filtered"

_EXPECTED = "stored variables, numbers, + - * / **, unary minus and parentheses"
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_UFUNCS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide, "**": np.power}
_MAX_EXACT_INT = 2**53


# --- the expression -------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A parsed expression: canonical text, evaluation tree, leaves and integrality.

    ``tree`` is nested tuples: ``("leaf", i)`` (the ``i``-th of ``leaves``),
    ``("const", value)``, ``("neg", x)``, ``("ipow", x, n)`` (a non-negative
    integer power, by exact repeated products) and ``(op, x, y)`` for
    ``op`` in ``+ - * / **``. ``leaves`` are ``(variable, class index or
    None)``. ``integer``: every value of the expression is an integer.
    """

    text: str
    tree: tuple
    leaves: tuple[tuple[str, int | None], ...]
    integer: bool

    @property
    def variables(self) -> list[str]:
        """The stored variables the expression reads, sorted."""
        return sorted({name for name, _ in self.leaves})


def _int_valued(value: float) -> bool:
    return math.isfinite(value) and float(value).is_integer() and abs(value) <= _MAX_EXACT_INT


def _layers(ds: Any, spatial: tuple[str, ...]) -> dict[str, tuple[bool, Any]]:
    """Variables an expression may name: ``{name: (has a class axis, variable)}``."""
    out = {}
    for name, var in ds.data_vars.items():
        if var.dtype.kind not in "biuf":
            continue
        if var.dims == spatial:
            out[str(name)] = (False, var)
        elif var.dims == ("class", *spatial):
            out[str(name)] = (True, var)
    return out


def parse_expression(expression: Any, ds: Any) -> Expression:
    """Check ``expression`` against the variables of grid ``ds`` and parse it.

    Allowed: names of ``ds``'s numeric variables on the grid's dims (or on
    ``("class", *dims)``, then with an integer class subscript such as
    ``counts[0]``), numeric constants, ``+ - * / **``, unary minus and
    parentheses. Anything else raises a one-line
    :class:`~gridflow.errors.ParameterError`.

    Examples
    --------
    >>> import numpy as np, gridflow
    >>> ds = gridflow.bin_points(np.random.default_rng(0).random((50, 2)),
    ...                          labels=np.arange(50) % 2, bins=4, bounds=(0, 1))
    >>> e = parse_expression("counts[0]**2 - counts[-1]**2", ds)
    >>> e.text, e.leaves, e.integer
    ('counts[0] ** 2 - counts[1] ** 2', (('counts', 0), ('counts', 1)), True)
    """
    if not isinstance(expression, str):
        raise ParameterError(
            f"expression: expected a string such as 'counts[0] - counts[1]', "
            f"got {type(expression).__name__}"
        )
    text = expression.strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ParameterError(
            f"expression: expected an arithmetic expression of {_EXPECTED}, got {expression!r} "
            f"(invalid syntax at column {exc.offset}); write e.g. 'counts[0]**2 - counts[1]**2'"
        ) from None
    spatial = tuple(ds["counts"].dims[1:]) if "counts" in ds else store_mod.grid_spec(ds).dims
    parser = _Parser(text, _layers(ds, spatial), ds, spatial)
    tree, integer = parser.visit(node)
    canonical = ast.unparse(_Canonical(ds.sizes.get("class", 1)).visit(node))
    return Expression(canonical, tree, tuple(parser.leaves), integer)


class _Parser:
    """Turns an ``ast`` expression into the evaluation tree, refusing anything else."""

    def __init__(self, text: str, layers: dict, ds: Any, spatial: tuple[str, ...]) -> None:
        self.text = text
        self.layers = layers
        self.ds = ds
        self.spatial = spatial
        self.leaves: list[tuple[str, int | None]] = []

    def refuse(self, got: str, hint: str) -> ParameterError:
        return ParameterError(
            f"expression: expected {_EXPECTED}, got {got} in {self.text!r}; {hint}"
        )

    def leaf(self, name: str, index: int | None) -> tuple[tuple, bool]:
        key = (name, index)
        if key not in self.leaves:
            self.leaves.append(key)
        integer = self.layers[name][1].dtype.kind in "biu"
        return ("leaf", self.leaves.index(key)), integer

    def visit(self, node: ast.AST) -> tuple[tuple, bool]:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.refuse(
                    f"the constant {value!r}", "constants are real numbers such as 2 or 0.5"
                )
            return ("const", float(value)), _int_valued(float(value))
        if isinstance(node, ast.Name):
            return self.leaf(self.name(node.id, subscripted=False), None)
        if isinstance(node, ast.Subscript):
            return self.subscript(node)
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub):
                op = {ast.UAdd: "+", ast.Not: "not", ast.Invert: "~"}[type(node.op)]
                raise self.refuse(f"the unary operator {op!r}", "only unary minus is supported")
            tree, integer = self.visit(node.operand)
            return ("neg", tree), integer
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                sym = ast.unparse(ast.BinOp(ast.Name("a"), node.op, ast.Name("b")))[2:-2]
                raise self.refuse(f"the operator {sym!r}", "use + - * / ** only")
            left, lint = self.visit(node.left)
            if op == "**":
                n = _integer_exponent(node.right)
                if n is not None:
                    return ("ipow", left, n), lint
            right, rint = self.visit(node.right)
            # Sums, differences and products of integers are integers; a
            # quotient, or a power that is not a non-negative integer one, need not be.
            return (op, left, right), lint and rint and op in "+-*"
        what = {
            ast.Call: "a function call",
            ast.Attribute: "an attribute",
            ast.Compare: "a comparison",
            ast.BoolOp: "a boolean operation",
            ast.IfExp: "a conditional",
            ast.Lambda: "a lambda",
        }.get(type(node), "the construct")
        hint = (
            "functions are not supported (a square root is x ** 0.5)"
            if isinstance(node, ast.Call)
            else "compute it with xarray first and pass the Dataset"
        )
        raise self.refuse(f"{what} {ast.unparse(node)!r}", hint)

    def name(self, name: str, *, subscripted: bool) -> str:
        if name not in self.layers:
            available = ", ".join(sorted(self.layers)) or "none"
            if name in self.ds.variables:
                dims = ", ".join(map(str, self.ds[name].dims))
                raise ParameterError(
                    f"expression: expected a numeric variable on the grid's dims "
                    f"({', '.join(self.spatial)}), got {name!r} with dims ({dims}) in "
                    f"{self.text!r}; the grid's layers are {available}"
                )
            raise ParameterError(
                f"expression: expected a stored variable ({available}), got unknown name "
                f"{name!r} in {self.text!r}; check its spelling or run the stage that writes it"
            )
        has_class = self.layers[name][0]
        if has_class and not subscripted:
            k = self.ds.sizes["class"]
            raise ParameterError(
                f"expression: expected one class layer of {name} such as {name}[0] (it has "
                f"{k} classes), got {name} alone in {self.text!r}; the result must have the "
                f"grid's dims ({', '.join(self.spatial)})"
            )
        if subscripted and not has_class:
            raise ParameterError(
                f"expression: expected a subscript only on a variable with a class axis, got "
                f"{name}[...] in {self.text!r}; {name} has the grid's dims "
                f"({', '.join(self.spatial)}) already"
            )
        return name

    def subscript(self, node: ast.Subscript) -> tuple[tuple, bool]:
        if not isinstance(node.value, ast.Name):
            raise self.refuse(
                f"the subscript {ast.unparse(node)!r}", "subscript a stored variable: counts[0]"
            )
        name = self.name(node.value.id, subscripted=True)
        index = _integer_constant(node.slice)
        if index is None:
            raise ParameterError(
                f"expression: expected an integer class index in {name}[...], got "
                f"{ast.unparse(node)!r} in {self.text!r}; write e.g. {name}[0]"
            )
        k = self.ds.sizes["class"]
        if not -k <= index < k:
            classes = ", ".join(map(str, self.ds["class"].values.tolist()))
            raise ParameterError(
                f"expression: expected a class index in 0..{k - 1} (or -{k}..-1), got "
                f"{ast.unparse(node)!r} in {self.text!r}; the grid has {k} classes ({classes})"
            )
        return self.leaf(name, index % k)


class _Canonical(ast.NodeTransformer):
    """Class subscripts written as the non-negative indices they select."""

    def __init__(self, nclasses: int) -> None:
        self.nclasses = nclasses

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        index = _integer_constant(node.slice) % self.nclasses
        return ast.Subscript(node.value, ast.Constant(index), node.ctx)


def _integer_constant(node: ast.AST) -> int | None:
    """The value of an integer literal (possibly negated), else None."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sign * node.value
    return None


def _integer_exponent(node: ast.AST) -> int | None:
    """A non-negative integer-valued literal exponent (``2`` or ``2.0``), else None."""
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        value = node.value
        if isinstance(value, (int, float)) and _int_valued(float(value)) and value >= 0:
            return int(value)
    return None


def _evaluate(tree: tuple, leaves: tuple) -> Any:
    op = tree[0]
    if op == "leaf":
        return leaves[tree[1]]
    if op == "const":
        return tree[1]
    if op == "neg":
        return -_evaluate(tree[1], leaves)
    if op == "ipow":
        return _ipow(_evaluate(tree[1], leaves), tree[2])
    return _UFUNCS[op](_evaluate(tree[1], leaves), _evaluate(tree[2], leaves))


def _ipow(x: Any, n: int) -> Any:
    # Repeated products (by squaring): exact on integers and short dyadic values.
    result = None
    while n:
        if n & 1:
            result = x if result is None else result * x
        n >>= 1
        if n:
            x = x * x
    return np.ones_like(x) if result is None else result


def _dense(block: Any) -> Any:
    # pydata-sparse chunks (fill 0): the filter's output is dense anyway.
    return block.todense() if hasattr(block, "todense") else block


def _evaluate_block(*blocks: np.ndarray, tree: tuple) -> np.ndarray:
    leaves = tuple(_dense(b).astype(np.float64) for b in blocks)
    with np.errstate(all="ignore"):  # x / 0 is inf, 0 / 0 nan, as IEEE says
        return _evaluate(tree, leaves)


# --- the other parameters -------------------------------------------------------------


def _parse_cval(cval: Any, boundary: str) -> float:
    if isinstance(cval, bool) or not isinstance(cval, (int, float, np.integer, np.floating)):
        raise ParameterError(f"cval: expected a real number, got {cval!r}")
    value = float(cval)
    if not math.isfinite(value):
        raise ParameterError(f"cval: expected a finite number, got {cval!r}")
    if value != 0 and boundary != "constant":
        raise ParameterError(
            f"cval: expected 0 unless boundary='constant' (only constant boundaries use it), "
            f"got cval={cval!r} with boundary {boundary!r}; pass boundary='constant' (--boundary "
            "constant) or drop cval"
        )
    return value


def _reserved(ds: Any) -> set[str]:
    """Names a filter output may never take: what gridflow's stages own, coords, dims."""
    owned = {v for names in store_mod.STAGE_VARIABLES.values() for v in names}
    return owned | {"cluster_density"} | {str(c) for c in ds.coords} | {str(d) for d in ds.dims}


def _parse_name(name: Any, ds: Any, overwrite: bool) -> str:
    name = DEFAULT_NAME if name is None else name
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ParameterError(
            f"name: expected a Python identifier, not a keyword (so later expressions can use it), "
            f"got {name!r}"
        )
    if name.startswith(("_gridflow", "gridflow_")):
        raise ParameterError(
            f"name: expected a name outside gridflow's own, got {name!r}; choose another name"
        )
    if name in _reserved(ds):
        stage = next((s for s, v in store_mod.STAGE_VARIABLES.items() if name in v), None)
        what = f"a variable of gridflow's {stage} stage" if stage else "a coordinate or dim"
        raise ParameterError(
            f"name: expected a new name for the filter output, got {name!r}, {what}; "
            "choose another name (--name)"
        )
    if name in ds.variables:
        if not _is_filter_output(ds, name):
            raise ParameterError(
                f"name: expected a new name or an earlier filter output, got {name!r}, a variable "
                "gridflow's filter did not write; choose another name (--name)"
            )
        if not overwrite:
            raise ParameterError(
                f"name: the grid already holds the filter output {name!r}; pass overwrite=True "
                "(--overwrite) to replace it, or choose another name (--name)"
            )
    return name


def _outputs(ds: Any) -> dict[str, Any]:
    """The filter outputs a grid records: ``{name: params}``."""
    outputs = ds.attrs.get("gridflow_stages", {}).get(STAGE, {}).get("outputs", {})
    return dict(outputs) if isinstance(outputs, Mapping) else {}


def _is_filter_output(ds: Any, name: str) -> bool:
    return name in _outputs(ds) or ATTR in ds[name].attrs


def _records(ds: Any, skip: str) -> dict[str, Any]:
    """Every filter output's parameters but ``skip``'s, from the stage record and,
    should a killed write have lost it, from the outputs' own attributes."""
    recorded = _outputs(ds)
    for name, var in ds.data_vars.items():
        if ATTR in var.attrs and name not in recorded:
            params = var.attrs[ATTR]
            recorded[str(name)] = json.loads(params) if isinstance(params, str) else params
    return {n: p for n, p in recorded.items() if n != skip and n in ds.variables}


def _parse_method(method: Any, k: Kernel, expr: Expression, integer: bool) -> str:
    if method not in CORRELATION_METHODS:
        raise ParameterError(f"method: expected {choices(CORRELATION_METHODS)}, got {method!r}")
    if method == "separable" and not k.separable:
        raise ParameterError(
            f"method: expected 'auto' or 'direct' for the {k.name} kernel, got 'separable'; "
            "it does not factor per axis"
        )
    if method == "box" and not k.is_box:
        raise ParameterError(
            f"method: expected 'box' only with kernel='box', got it with the {k.name} kernel"
        )
    if method in ("fft", "box") and not integer:
        raise ParameterError(
            f"method: expected 'auto', 'direct' or 'separable' for {expr.text!r}, got "
            f"{method!r}; it is exact only on integer values and these need not be integers "
            "(a float variable, a fractional constant or cval, / or a fractional power)"
        )
    if method == "auto" and not integer:
        return "separable" if k.separable else "direct"  # as _block_method would
    return method


def _check_radius(k: Kernel, spec: Any, kernel_is_array: bool) -> None:
    for r, n, dim in zip(k.radius, spec.shape, spec.dims, strict=True):
        if r > n:
            option = "kernel" if kernel_is_array else "window"
            raise ParameterError(
                f"{option}: expected a radius of at most the grid's {n} cells along {dim}, got "
                f"{r}; use a smaller window or more bins"
            )


# --- the filter -----------------------------------------------------------------------


def _block_method(kernel: Kernel, block: np.ndarray, method: str, integer: bool) -> str:
    """The correlation method of one haloed block: exact, and fixed for non-integers."""
    if not integer:
        # Per-cell sums in a fixed order: the same bits for any chunking.
        if method in ("direct", "separable"):
            return method
        return "separable" if kernel.separable else "direct"
    from gridflow.engine.correlate import choose_method, fft_exact

    scale = max(1.0, float(np.abs(block).max())) if block.size else 1.0
    if method == "auto":
        method = choose_method(kernel, block.shape, scale)
    elif method == "fft" and not fft_exact(kernel, block.shape, scale):
        method = "separable" if kernel.separable else "direct"
    if method == "box" and not scale * block.size < 2.0**52:
        method = "separable"  # running sums this large would round
    return method


def _correlate_block(block: np.ndarray, *, kernel: Kernel, method: str, integer: bool) -> Any:
    from gridflow.engine.correlate import correlate

    if block.size == 0:
        return block.astype(np.float64)
    chosen = _block_method(kernel, block, method, integer)
    return correlate(block[None], kernel, chosen)[0]


def _as_dask(data: Any) -> da.Array:
    return data if isinstance(data, da.Array) else da.from_array(data, chunks=data.shape)


def _values(ds: Any, expr: Expression, spec: Any, chunks: tuple) -> da.Array:
    """The expression cell by cell, float64, lazily."""
    if not expr.leaves:
        with np.errstate(all="ignore"):
            value = float(_evaluate(expr.tree, ()))
        return da.full(spec.shape, value, chunks=chunks, dtype=np.float64)
    arrays = []
    for name, index in expr.leaves:
        data = _as_dask(ds[name].data)
        arrays.append(data if index is None else data[index])
    # dtype and meta from the inputs: CuPy chunks stay on the device.
    return da.map_blocks(
        _evaluate_block,
        *arrays,
        tree=expr.tree,
        dtype=np.float64,
        meta=_dense(meta_like(arrays[0], dtype=np.float64)),
    )


def filter_array(
    values: da.Array,
    kernel: Kernel,
    *,
    boundary: str,
    cval: float = 0.0,
    method: str = "auto",
    integer: bool = False,
) -> da.Array:
    """Correlate a dask array with ``kernel``; halos as deep as its radius.

    ``boundary``: ``"periodic"`` wraps, ``"open"`` adds nothing from beyond
    the edges, ``"constant"`` adds ``cval``. ``integer`` says every value
    is an integer (FFT and running sums are then exact). The result has
    ``values``' chunks.
    """
    bnd: Any = {"periodic": "periodic", "open": 0.0, "constant": cval}[boundary]
    out = values.map_overlap(
        _correlate_block,
        depth=dict(enumerate(kernel.radius)),
        boundary=bnd,
        trim=True,
        dtype=np.float64,
        meta=meta_like(values, dtype=np.float64),
        kernel=kernel,
        method=method,
        integer=integer,
    )
    # Chunks smaller than the halo were merged by map_overlap: give back the
    # input's (a store needs them regular).
    return out.rechunk(values.chunks) if out.chunks != values.chunks else out


@store_mod.writes_store
def window_filter(
    grid: Any,
    expression: str,
    *,
    kernel: str | np.ndarray | Kernel = "box",
    window: int | None = 1,
    sigma: float | None = None,
    boundary: FilterBoundary | None = None,
    cval: float = 0.0,
    name: str | None = None,
    overwrite: bool = False,
    method: CorrelationMethod = "auto",
) -> Any:
    """Correlate an expression of a grid's layers with a window kernel.

    The value at a cell is the sum over the window around it (centre
    included) of ``weight(offset) * value(cell + offset)``, where
    ``value`` is ``expression`` evaluated cell by cell in float64.

    Parameters
    ----------
    grid : xarray.Dataset or path
        A grid from :func:`gridflow.bin_points` / :func:`gridflow.open_grid`,
        or the path of its store (the result is then written into it as
        variable ``name``, whole or not at all).
    expression : str
        Arithmetic of the grid's variables: names of numeric variables on
        the grid's dims (``label``, ``density``, an earlier filter output)
        or, with an integer class subscript, on ``("class", *dims)``
        (``counts[0]``, ``probability[2]``; negative indices count from the
        last class), numeric constants, ``+ - * / **``, unary minus and
        parentheses. A constant alone (``"1"``) is a grid of that value.
    kernel : {"inverse_distance", "box", "gaussian"}, array or Kernel
        Window weights (:func:`gridflow.kernels.parse_kernel`): a name with
        ``window`` (and ``sigma``), or an array with odd sides, one axis per
        grid dim (its shape gives the radius; ``window`` is then ignored
        unless it contradicts it). Weights are rounded to the kernel's
        dyadic quantum (2**-24 for arrays).
    window : int
        Radius ``w`` of a named kernel: 1 means 3 cells per side.
    sigma : float, optional
        Width of the gaussian kernel (default ``window / 2``).
    boundary : {"periodic", "open", "constant"}, optional
        Beyond the edges: values wrap around, do not exist (windows shrink
        at the border), or all hold ``cval``. Default: the grid's own
        (periodic when every dim wraps, else open).
    cval : float
        The value beyond the edges with ``boundary="constant"``.
    name : str, optional
        Name of the output variable (default ``"filtered"``); never one of
        gridflow's stage variables, a coordinate or a dim.
    overwrite : bool
        Replace an earlier filter output of the same name.
    method : {"auto", "direct", "separable", "box", "fft"}
        How the correlation is computed; every method gives the same bits.
        ``"fft"`` and ``"box"`` are exact only on integers and are refused
        for expressions that need not be integer-valued; an FFT whose
        round-off could reach half a quantum falls back to direct sums.

    Returns
    -------
    xarray.Dataset
        The grid with the float64 variable ``name`` on its dims (lazy for an
        in-memory grid; a path's store opened again).
        ``attrs["gridflow_stages"]["filter"]`` holds this run's parameters
        and, under ``"outputs"``, every filter output's name and parameters.

    Raises
    ------
    ParameterError
        A bad expression (unknown variable, disallowed construct: the
        message names it), kernel, window, boundary or name.

    Notes
    -----
    On integer values (integer variables and integer constants under
    ``+ - *`` and non-negative integer powers) the result is exact while
    ``max|value| * sum(weights)`` stays below ``2**53`` quanta, and the same
    bits for every method and chunking. Other expressions are correlated by
    direct sums or separable passes (fixed order per cell): the same bits
    for every chunking, exact on dyadic values of moderate length.

    Examples
    --------
    >>> import numpy as np, gridflow
    >>> rng = np.random.default_rng(0)
    >>> ds = gridflow.bin_points(rng.random((400, 2)), labels=rng.integers(0, 2, 400),
    ...                          bins=(5, 6), bounds=(0, 1))
    >>> out = gridflow.window_filter(ds, "1", boundary="open", name="cells")
    >>> out["cells"].values[:2]  # cells in each 3 x 3 window: fewer at the border
    array([[4., 6., 6., 6., 6., 4.],
           [6., 9., 9., 9., 9., 6.]])
    >>> d = gridflow.window_filter(ds, "counts[0]**2 - counts[1]**2", name="d")["d"]
    >>> d.dims, d.dtype
    (('x0', 'x1'), dtype('float64'))
    """
    import xarray as xr

    path = os.fspath(grid) if isinstance(grid, (str, os.PathLike)) else None
    ds = store_mod.as_grid(grid)
    spec = store_mod.grid_spec(ds)
    expr = parse_expression(expression, ds)
    is_array = not isinstance(kernel, (str, Kernel))
    if is_array and window is not None:
        sides = np.shape(kernel)
        # window defaults to 1: only a window that contradicts the array is an error.
        if window != 1 and any(s != 2 * window + 1 for s in sides):
            raise ParameterError(
                f"kernel: shape {tuple(sides)} does not match window {window} (expected sides "
                f"of {2 * window + 1}); omit window or fix the array"
            )
        window = None
    if sigma is not None and not (isinstance(kernel, str) and kernel == "gaussian"):
        raise ParameterError(
            f"sigma: expected None unless kernel='gaussian', got sigma={sigma!r}; drop it"
        )
    k = parse_kernel(kernel, window=window, ndim=spec.ndim, sigma=sigma)
    _check_radius(k, spec, is_array)
    boundary = parse_boundary(boundary, spec, allowed=FILTER_BOUNDARIES, stacklevel=3)
    cval = _parse_cval(cval, boundary)
    integer = expr.integer and (boundary != "constant" or _int_valued(cval))
    method = _parse_method(method, k, expr, integer)
    name = _parse_name(name, ds, bool(overwrite))

    params: dict[str, Any] = {
        "name": name,
        "expression": expr.text,
        "kernel": k.name,
        "window": list(k.radius),
        "sigma": None if sigma is None else float(sigma),
        "boundary": boundary,
        "method": method,
        "integer": bool(integer),
        "inputs": expr.variables,
        "weights_sha": k.digest,
    }
    if boundary == "constant":
        params["cval"] = cval
    counts = ds["counts"].data if "counts" in ds else None
    chunks = _as_dask(counts).chunks[1:] if counts is not None else spec.shape
    values = _values(ds, expr, spec, chunks)
    result = filter_array(values, k, boundary=boundary, cval=cval, method=method, integer=integer)
    if result.chunks != tuple(chunks) and counts is not None:
        result = result.rechunk(chunks)  # the grid's chunks, whatever the inputs' were
    attrs = {
        "long_name": f"window filter of {expr.text}",
        ATTR: json.dumps(params),
    }
    var = xr.Variable(spec.dims, result, attrs=attrs)
    # The stage's record: this run's parameters, and every output's in "outputs"
    # (several filters live in one store; each run rewrites only its own variable).
    outputs = {**_records(ds, skip=name), name: params}
    log.info("filter %s = %s (%s kernel, boundary %s)", name, expr.text, k.name, boundary)
    if path is None:
        out = ds.assign({name: var})
        out.attrs = store_mod.stage_attrs(ds.attrs, STAGE, params, outputs=outputs)
        return out
    new, _ = store_mod.write_stage(
        path, STAGE, {name: var}, params, record=lambda _: {"outputs": outputs}
    )
    return new
