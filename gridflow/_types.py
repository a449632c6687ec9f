"""The choice sets of gridflow's parameters, written once.

Each set is a tuple (the order is the one messages and ``--help`` show) and
a ``Literal`` alias for type hints. The stages' ``parse_*`` helpers check
against these tuples, the CLI's ``click.Choice`` options and the pipeline
schema are built from them, so the library, the CLI and a pipeline file
accept exactly the same values.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "BASELINES",
    "BINNING_STRATEGIES",
    "BOUNDARIES",
    "CORRELATION_METHODS",
    "DISTRIBUTIONS",
    "EQUALIZE_METHODS",
    "FILTER_BOUNDARIES",
    "FRACTAL_METHODS",
    "FRACTAL_STARTS",
    "KERNEL_NAMES",
    "LAYOUTS",
    "LOG_LEVELS",
    "PROJECTIONS",
    "RENDER_VARIABLES",
    "SEEDS",
    "SUPPORTS",
    "choices",
]

#: Grid geometry of a filter: wrap around (a torus), or nothing beyond the edges.
BOUNDARIES = ("periodic", "open")
Boundary = Literal["periodic", "open"]

#: Boundaries of a user window filter: also a constant value beyond the edges.
FILTER_BOUNDARIES = ("periodic", "open", "constant")
FilterBoundary = Literal["periodic", "open", "constant"]

#: Named window kernels (:mod:`gridflow.kernels`).
KERNEL_NAMES = ("inverse_distance", "box", "gaussian")
KernelName = Literal["inverse_distance", "box", "gaussian"]

#: How a correlation is computed; every method gives the same bits.
CORRELATION_METHODS = ("auto", "direct", "separable", "box", "fft")
CorrelationMethod = Literal["auto", "direct", "separable", "box", "fft"]

#: What the first vote step votes with: the seeded labels, or the counts.
SEEDS = ("labels", "counts")
Seed = Literal["labels", "counts"]

#: Histogram equalization of the density: over cells, or over distinct values.
EQUALIZE_METHODS = ("cells", "distinct")
EqualizeMethod = Literal["cells", "distinct"]

#: Starting labels of the fractal classifier.
FRACTAL_STARTS = ("auto", "label", "counts")
FractalStart = Literal["auto", "label", "counts"]

#: Block kernel of the fractal classifier (same result).
FRACTAL_METHODS = ("auto", "compiled", "reference")
FractalMethod = Literal["auto", "compiled", "reference"]

#: How points are binned (same counts).
BINNING_STRATEGIES = ("auto", "tree", "chunked")
BinningStrategy = Literal["auto", "tree", "chunked"]

#: Grid layouts (docs/design.md §3.5): NumPy chunks, COO chunks, or chosen per grid.
LAYOUTS = ("auto", "dense", "sparse")
Layout = Literal["auto", "dense", "sparse"]

#: Cells a vote step is evaluated on: those a labeled cell can reach, or only
#: those holding points (docs/design.md §3.5).
SUPPORTS = ("auto", "reachable", "occupied")
Support = Literal["auto", "reachable", "occupied"]

#: Perturbation laws of the synthetic lattices.
DISTRIBUTIONS = ("logistic", "uniform", "cauchy")
Distribution = Literal["logistic", "uniform", "cauchy"]

#: Variables :func:`gridflow.render.render` draws, and how it projects N-D grids.
RENDER_VARIABLES = ("label", "fractal", "cluster", "density", "level", "confidence")
RenderVariable = Literal["label", "fractal", "cluster", "density", "level", "confidence"]
PROJECTIONS = ("max", "mode")
Projection = Literal["max", "mode"]

#: Log levels of the CLI.
LOG_LEVELS = ("debug", "info", "warning", "error")


def choices(values: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'``: a choice set as error messages spell it."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


#: Baseline classifiers `gridflow evaluate` also scores.
BASELINES = ("knn",)
Baseline = Literal["knn"]
