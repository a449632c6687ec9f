"""Steps per round: the fusion rule against one step per round and against all the chunk allows.

Every round of fused vote steps costs a halo exchange, tasks and a persist;
fusing ``f`` steps needs a halo ``f * w`` deep, so more cells are computed
twice. ``gridflow.engine.rounds.fusion_factor`` weighs the two with a cost
model. This benchmark times the vote filter (``gridflow.engine.vote.run_dask``,
in-process threads, open boundary, 2% of cells seeded with labels) with:

- ``rule``: the steps per round the rule picks (the default);
- ``one``: one step per round (``fuse=1``);
- ``max``: as many as the smallest chunk holds in its halo (``fuse=max_fusion``,
  the rule gridflow used before the cost model).

Every run's labels and density are checked equal, bit for bit.

    .venv/bin/python benchmarks/bench_fusion.py --repeat 2
"""

from __future__ import annotations

import argparse
import sys

import dask
import dask.array as da
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import best_of, emit, machine, table

from gridflow.engine.rounds import fusion_factor, max_fusion
from gridflow.engine.vote import run_dask, step_cost
from gridflow.kernels import parse_kernel

CASES = [
    # side, chunk, window, iterations, classes
    (1024, 256, 10, 10, 5),
    (1024, 256, 3, 10, 5),
    (512, 128, 3, 30, 4),
    (2048, 512, 5, 12, 5),
    (1024, 64, 8, 16, 5),
]


def _labels(side: int, classes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = np.full((side, side), -1, np.int32)
    idx = rng.integers(0, side, size=(2, side * side // 50))
    labels[idx[0], idx[1]] = rng.integers(0, classes, idx.shape[1])
    return labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--output", help="also write the table to this file")
    args = p.parse_args(argv)

    rows = []
    for side, chunk, w, iterations, classes in CASES:
        kernel = parse_kernel("inverse_distance", window=w, ndim=2)
        x = da.from_array(_labels(side, classes), chunks=chunk)
        chunks = ((chunk,) * (side // chunk),) * 2
        rule = fusion_factor(
            chunks, kernel.radius, iterations, step_cost(kernel, classes, (chunk, chunk))
        )
        most = max_fusion((chunk, chunk), kernel.radius, iterations)
        results, times = {}, {}
        for name, fuse in (("rule", None), ("one", 1), ("max", most)):

            def go(fuse=fuse, kernel=kernel, x=x, iterations=iterations, classes=classes):
                final = run_dask(
                    x,
                    nclasses=classes,
                    kernel=kernel,
                    iterations=iterations,
                    boundary="open",
                    fuse=fuse,
                )
                return dask.compute(final.labels, final.density)

            times[name], results[name] = best_of(go, args.repeat)
        same = all(
            np.array_equal(results[n][i], results["rule"][i])
            for n in ("one", "max")
            for i in (0, 1)
        )
        rows.append(
            [
                f"{side}² x {classes}, chunks {chunk}, w={w}, {iterations} steps",
                f"{rule} / {most}",
                f"{times['rule']:.2f}",
                f"{times['one']:.2f}",
                f"{times['max']:.2f}",
                "yes" if same else "**no**",
            ]
        )
    text = "\n".join(
        [
            f"Machine: {machine('numpy', 'dask')}",
            "",
            table(
                [
                    "case",
                    "steps per round: rule / max",
                    "rule s",
                    "one step per round s",
                    "all the chunk allows s",
                    "bit-identical",
                ],
                rows,
            ),
        ]
    )
    return emit(text, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
