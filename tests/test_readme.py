"""Every ```python block of README.md runs as written.

The blocks are run in order, concatenated, in one fresh namespace, in an
empty temporary folder (a later block may use what an earlier one made),
on Dask's local threaded scheduler (the Python API starts no cluster of
its own). An exception in any block fails the test; then the files the
Python API block writes are checked.
"""

import re
from pathlib import Path

import dask
import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
# An opening fence ```python (any indentation and trailing text) up to the
# next closing fence of the same indentation.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of ``text``: (line of the opening fence, code), in order."""
    blocks = []
    for m in FENCE.finditer(text):
        indent = len(m["indent"])
        code = "".join(line[indent:] for line in m["body"].splitlines(keepends=True))
        blocks.append((text.count("\n", 0, m.start()) + 1, code))
    return blocks


def test_fence_parser():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n  ```python\n  y = 2\n  ```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = 2\n")]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("sklearn", reason="the README's estimators need scikit-learn")
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    with dask.config.set(scheduler="threads"):
        for line, code in blocks:
            # Line numbers in a traceback are those of README.md.
            exec(compile("\n" * line + code, f"{README}", "exec"), namespace)

    import gridflow as gf

    store = tmp_path / "grid.zarr"
    assert store.is_dir(), "the Python API block writes grid.zarr"
    ds = gf.open_grid(store)
    k = ds.sizes["class"]
    assert k == 5
    labels = ds["label"].values
    assert labels.min() >= -1 and labels.max() < k, "a label outside [-1, K)"
    assert (labels >= 0).all(), "classify fills every cell"
    for var in ("fractal", "level", "cluster", "contrast"):
        assert var in ds, f"{var} missing from the store"
    counts = ds["counts"].values.astype(np.int64)
    assert counts.sum() == 200_000
    stages = ds.attrs["gridflow_stages"]
    assert stages["classify"]["window"] == [5, 5]  # the accessor's classify ran last
    assert (tmp_path / "fractal.png").stat().st_size > 0
    assert (tmp_path / "fractal.gif").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "images").glob("*.png"))
