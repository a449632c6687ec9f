"""gridflow: classify and cluster huge point datasets with image convolution filters.

Points are binned into per-class count grids (:func:`bin_points`), stored as
Zarr (:func:`open_grid`), and processed by iterated filters distributed
with Dask. See docs/design.md for the semantics of every stage.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridflow")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

from gridflow import accessor as _accessor  # noqa: F401  (registers ds.gridflow)
from gridflow.binning import BinReport, bin_points
from gridflow.classify import classify
from gridflow.cluster import cluster
from gridflow.errors import (
    GridflowError,
    GridflowWarning,
    InputDataError,
    ParameterError,
    StoreError,
)
from gridflow.filters import window_filter
from gridflow.fractal import fractal
from gridflow.grid import GridSpec
from gridflow.points import open_points
from gridflow.predict import PredictResult, predict, predict_to_parquet
from gridflow.store import open_grid
from gridflow.synth import PointProcess, make_points, write_points


def __getattr__(name: str):
    # The estimators need scikit-learn, an optional dependency: import on use.
    if name == "GridClassifier":
        from gridflow.estimators import GridClassifier

        return GridClassifier
    if name == "GridClusterer":
        from gridflow.estimators import GridClusterer

        return GridClusterer
    raise AttributeError(f"module 'gridflow' has no attribute {name!r}")


__all__ = [
    "BinReport",
    "GridClassifier",
    "GridClusterer",
    "GridSpec",
    "GridflowError",
    "GridflowWarning",
    "InputDataError",
    "ParameterError",
    "PointProcess",
    "PredictResult",
    "StoreError",
    "__version__",
    "bin_points",
    "classify",
    "cluster",
    "fractal",
    "make_points",
    "open_grid",
    "open_points",
    "predict",
    "predict_to_parquet",
    "window_filter",
    "write_points",
]
