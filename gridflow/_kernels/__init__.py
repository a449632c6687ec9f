"""Compiled chunk kernels (numba), one module per engine operation.

Each module generates or holds the kernel source and compiles it on first
use through :mod:`gridflow._kernels.codegen`; nothing here is imported at
``import gridflow`` time.
"""
