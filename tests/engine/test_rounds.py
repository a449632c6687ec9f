"""The fusion rule and the round driver (gridflow.engine.rounds)."""

from __future__ import annotations

import pytest

from gridflow.engine.neighbour import STEP_COST
from gridflow.engine.rounds import StepCost, fusion_factor, max_fusion, round_chunks, run_rounds
from gridflow.engine.vote import step_cost
from gridflow.kernels import parse_kernel


def test_fusion_never_exceeds_the_smallest_chunk():
    assert fusion_factor(((5, 5, 3), (8, 8)), (1, 1), 100, STEP_COST) <= 3
    whole = {"whole": True}
    assert fusion_factor(((40,), (30,)), (1, 1), 250, STEP_COST, **whole) == 250  # no halo
    assert fusion_factor(((40,), (30,)), (1, 1), 7, STEP_COST, **whole) == 7
    # A small last chunk is merged so that it does not cap every round.
    f = fusion_factor(((256,), (256,)), (1, 1), 250, STEP_COST)
    chunks = round_chunks(((256, 256, 256, 32), (256, 256, 256, 32)), (1, 1), f)
    assert all(sum(c) == 800 for c in chunks)
    assert min(min(c) for c in chunks) > 32
    assert fusion_factor(chunks, (1, 1), 250, STEP_COST) <= min(min(c) for c in chunks)


@pytest.mark.parametrize(("chunk", "window"), [(64, 3), (256, 10), (30, 7), (8, 2)])
def test_vote_rounds_keep_the_halo_within_a_chunk(chunk, window):
    kernel = parse_kernel("inverse_distance", window=window, ndim=2)
    cost = step_cost(kernel, 5, (chunk, chunk))
    f = fusion_factor(((chunk, chunk), (chunk,)), kernel.radius, 100, cost)
    assert 1 <= f <= max_fusion((chunk, chunk), kernel.radius, 100) == max(1, chunk // window)
    assert f * window <= max(chunk, window)


def test_a_deeper_halo_costs_more_per_round():
    cost = StepCost(first=1e-8, later=1e-9)
    assert cost.round_seconds((64, 64), (2, 2), 4) > cost.round_seconds((64, 64), (2, 2), 2)
    shrinking = StepCost(first=1e-8, later=1e-8, shrinking=True)
    flat = StepCost(first=1e-8, later=1e-8)
    assert shrinking.round_seconds((64,), (1,), 8) < flat.round_seconds((64,), (1,), 8)


def test_the_driver_materialises_every_round_but_the_last():
    seen = []

    def materialise(state, steps):
        seen.append((state, steps))
        return state + steps, None

    state, steps = run_rounds(
        0, step=int, limit=10, plan=lambda done, left: min(3, left), materialise=materialise
    )
    assert seen == [(0, 3), (3, 3), (6, 3)]
    assert (state, steps) == (9, 1)


def test_an_open_ended_run_stops_where_it_settles():
    def settled(state, stats, steps):
        return 2 if state == 4 else None

    state, steps = run_rounds(
        0,
        step=int,
        limit=100,
        plan=lambda done, left: 4,
        materialise=lambda state, steps: (state + steps, None),
        settled=settled,
        open_ended=True,
    )
    assert (state, steps) == (4, 2)
