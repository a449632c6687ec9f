"""The engine: arrays in, arrays out.

NumPy (or CuPy, or pydata-sparse) chunks and dask arrays of them; nothing
here knows xarray, Zarr or the Dask client. The stages
(:mod:`gridflow.classify`, :mod:`gridflow.cluster`, :mod:`gridflow.fractal`)
compose these operations:

- :mod:`~gridflow.engine.correlate` — a window correlation of planes, by
  the fastest exact method;
- :mod:`~gridflow.engine.vote` — one vote step and fused steps on a block;
- :mod:`~gridflow.engine.rounds` — the fusion rule and the round driver;
- :mod:`~gridflow.engine.neighbour` — the fractal classifier's step;
- :mod:`~gridflow.engine.components` — connected components across chunks;
- :mod:`~gridflow.engine.equalize` — histogram equalization into levels;
- :mod:`~gridflow.engine.planner` — memory and chunk plans.

Chunk kernels dispatch on the chunk type through :mod:`gridflow.backend`.
"""
