"""The reference data: K superimposed perturbed lattices, in N dimensions.

This is the data of "Fast Classification and Clustering via Image Convolution
Filters" (V. Granville): class ``c`` is a Poisson-binomial process, the
integer lattice ``{-extent, ..., extent}**d`` shifted by ``shift_c`` with every
point perturbed independently per coordinate by ``scale * stretch[c, j] * e``,
``e`` drawn from a logistic (the reference), uniform on [-1, 1], or Cauchy
law. By default points are mapped modulo 1 onto the period box ``[0, 1)**d``,
the torus the reference method classifies.

Row ``r`` is a pure function of ``(seed, r)`` through counter-based random
numbers (:mod:`gridflow.counter_rng`): its class (one uniform against the class
weights), its lattice point (one integer per dim) and its perturbation (one
uniform per dim) come from distinct streams. The data are therefore identical
whatever the number of partitions or workers.

The generator knows each class density, so it also gives the Bayes-optimal
class of any point (:meth:`PointProcess.bayes_class`): the accuracy ceiling
any classifier of these data can reach.

The package, by idea:

- :mod:`gridflow.synth._parse`: the parameters, parsed once;
- :mod:`gridflow.synth.process`: :class:`PointProcess` and :func:`make_points`;
- :mod:`gridflow.synth.density`: the perturbation laws and their exact
  wrapped and lattice densities;
- :mod:`gridflow.synth.io`: :func:`write_points` and :func:`read_synth_metadata`.
"""

from __future__ import annotations

from gridflow._types import DISTRIBUTIONS
from gridflow.synth.io import METADATA_KEY, read_synth_metadata, write_points
from gridflow.synth.process import PointProcess, make_points

__all__ = [
    "DISTRIBUTIONS",
    "METADATA_KEY",
    "PointProcess",
    "make_points",
    "read_synth_metadata",
    "write_points",
]
