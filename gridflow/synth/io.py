"""The synthetic points on disk: a Parquet dataset, and the JSON it carries."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gridflow._staging import check_output, staged_directory
from gridflow.errors import InputDataError
from gridflow.synth._parse import BAYES_COLUMN, LABEL_COLUMN, _parse_columns
from gridflow.synth.process import PointProcess

# The package's logger: the CLI's log lines name "gridflow.synth", as before the split.
logger = logging.getLogger(__package__)

METADATA_KEY = b"gridflow.synth"
"""Parquet key-value metadata key under which :func:`write_points` stores JSON."""

_METADATA_VERSION = 1


def write_points(
    path: str | os.PathLike[str],
    n_points: int,
    *,
    bayes: bool = False,
    columns: Sequence[str] | str | None = None,
    npartitions: int | None = None,
    overwrite: bool = False,
    **process_kwargs: Any,
) -> PointProcess:
    """Generate points and write them as a Parquet dataset at ``path``.

    The dataset (one file per partition, pyarrow, no index column) is written
    to a temporary sibling directory and renamed into place once complete, so
    a failure never leaves a partial dataset at ``path``. Every file carries
    JSON under the key ``METADATA_KEY``: the process parameters, the column
    names, and the suggested grid ``bounds`` and ``periodic`` flags (see
    :func:`read_synth_metadata`).

    Parameters
    ----------
    path : str or path-like
        Local directory to create.
    n_points : int
        Number of rows.
    bayes, columns, npartitions
        See :func:`make_points`.
    overwrite : bool, default False
        Replace an existing ``path`` that gridflow wrote (never anything
        else); otherwise an existing path is an error.
    **process_kwargs
        Parameters of :class:`PointProcess`.

    Returns
    -------
    PointProcess
        The process that generated the data.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> path = tempfile.mkdtemp() + "/points"
    >>> process = write_points(path, 500, classes=2, seed=4)
    >>> len(pd.read_parquet(path)), read_synth_metadata(path)["periodic"]
    (500, [True, True])
    """
    process = PointProcess(**process_kwargs)
    names = _parse_columns(columns, process.dims)
    target = Path(os.path.abspath(os.fspath(path)))
    check_output(target, overwrite=overwrite, parents=True)
    ddf = process.to_dask(n_points, columns=names, bayes=bayes, npartitions=npartitions)
    metadata = {
        "version": _METADATA_VERSION,
        "n_points": int(n_points),
        "columns": list(names),
        "label": LABEL_COLUMN,
        "bayes": BAYES_COLUMN if bayes else None,
        "bounds": [list(b) for b in process.bounds],
        "periodic": list(process.periodic),
        "process": process.to_dict(),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(target) as staging:
        ddf.to_parquet(
            staging,
            engine="pyarrow",
            write_index=False,
            custom_metadata={METADATA_KEY: json.dumps(metadata).encode()},
        )
    logger.info("wrote %d synthetic points to %s", n_points, target)
    return process


def read_synth_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON :func:`write_points` stored with a Parquet dataset, or None.

    Parameters
    ----------
    path : str or path-like
        A Parquet file or a dataset directory (its ``_common_metadata`` or
        ``_metadata`` file when present, else its first data file is read).

    Returns
    -------
    dict or None
        Keys ``version``, ``n_points``, ``columns``, ``label``, ``bayes``,
        ``bounds``, ``periodic`` and ``process`` (the :meth:`PointProcess.to_dict`
        parameters); None when the data were not written by :func:`write_points`.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> path = tempfile.mkdtemp() + "/points"
    >>> _ = write_points(path, 100, dims=3, modulo=False, seed=5)
    >>> meta = read_synth_metadata(path)
    >>> meta["columns"], meta["periodic"]
    (['x0', 'x1', 'x2'], [False, False, False])
    >>> PointProcess.from_dict(meta["process"]).sample(0, 100).equals(pd.read_parquet(path))
    True
    """
    import pyarrow.parquet as pq

    source = Path(os.fspath(path))
    if source.is_dir():
        candidates = [source / "_common_metadata", source / "_metadata"]
        candidates = [c for c in candidates if c.is_file()] or sorted(source.glob("*.parquet"))
        if not candidates:
            raise InputDataError(f"path: no Parquet files in directory {str(source)!r}")
        source = candidates[0]
    elif not source.is_file():
        raise InputDataError(
            f"path: {str(source)!r} does not exist; give a Parquet file or dataset"
        )
    try:
        metadata = pq.read_schema(source).metadata or {}
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputDataError(
            f"path: cannot read a Parquet schema from {str(source)!r}: {exc}"
        ) from exc
    raw = metadata.get(METADATA_KEY)
    return None if raw is None else json.loads(raw)
