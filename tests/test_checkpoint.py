import dask.array as da
import numpy as np
import pytest

from gridflow.checkpoint import RoundCheckpoint, has_checkpoint
from gridflow.errors import StoreError


class _Boom(Exception):
    pass


def _explode(block):
    raise _Boom


def test_double_buffer_keeps_the_last_complete_round(tmp_path):
    store = tmp_path / "g.zarr"
    store.mkdir()
    ckpt = RoundCheckpoint(store, "toy", {"a": 1})
    assert not has_checkpoint(store, "toy")
    one = da.arange(20, chunks=5)
    arrays, extra = ckpt.save(2, {"x": one}, da.sum(one), lambda s: [{"step": 2, "sum": int(s)}])
    assert int(extra) == 190 and has_checkpoint(store, "toy")
    np.testing.assert_array_equal(arrays["x"].compute(), np.arange(20))
    ckpt.save(4, {"x": one * 2})
    # A round that dies while its slot is written leaves the previous round.
    dying = (one * 3).map_blocks(_explode, dtype=one.dtype)
    with pytest.raises(_Boom):
        ckpt.save(6, {"x": dying})

    again = RoundCheckpoint(store, "toy", {"a": 1})
    saved = again.load()
    assert saved.step == 4
    np.testing.assert_array_equal(saved.arrays["x"].compute(), np.arange(20) * 2)
    assert saved.history == [{"step": 2, "sum": 190}]
    assert saved.rounds == [{"first": 1, "last": 2, "run": 1}, {"first": 3, "last": 4, "run": 1}]
    # The resumed attempt is run 2, and its rounds say so.
    again.save(6, {"x": one * 3})
    assert again.final_round(7)[-2:] == [
        {"first": 5, "last": 6, "run": 2},
        {"first": 7, "last": 7, "run": 2},
    ]

    with pytest.raises(StoreError, match="other parameters"):
        RoundCheckpoint(store, "toy", {"a": 2}).load()
    again.clear()
    with pytest.raises(StoreError, match="no complete toy round"):
        again.load()


def test_a_checkpoint_in_an_older_layout_starts_from_the_beginning(tmp_path, caplog):
    import json
    import logging

    from gridflow import bin_points
    from gridflow.checkpoint import CHECKPOINT, resume_point

    store = tmp_path / "g.zarr"
    bin_points(np.full((4, 2), 0.5), store, labels=np.zeros(4, int), bins=4, bounds=(0, 1))
    root = store / CHECKPOINT / "fractal"
    root.mkdir(parents=True)
    params = {"iterations": 9}
    # The fractal stage's own marker before RoundCheckpoint kept it: no "arrays".
    (root / "state.json").write_text(
        json.dumps({"step": 3, "slot": "a", "frames": [], "history": [], "params": params})
    )
    with caplog.at_level(logging.WARNING, logger="gridflow.checkpoint"):
        assert resume_point(store, "fractal", params, resume=True) == "start"
    assert "older layout" in caplog.text
