"""numba compilation of the CPU kernels in :mod:`tod_lightning.ops`: cached on disk, bounds-checked, numpy's error
model; a clear warning, not a failed import, where no cache folder is writable."""

from __future__ import annotations

import warnings

import numba


def compile_kernel(function):
    """numba's ``njit`` with its on-disk cache (beside the module, else ``NUMBA_CACHE_DIR`` or the user's cache):
    compiled once per machine. Where no cache folder is writable (a read-only install and home) numba refuses
    ``cache=True`` at import; the kernel is then compiled in every process that uses it (~2 s), with a warning."""
    # numpy's rules: x / 0 is inf or nan, not an exception. Bounds checked (an IndexError, never a stray write into
    # memory; 0-4 % of the NMS kernel's time on benchmarks/components.py's candidates).
    options = dict(nogil=True, error_model="numpy", boundscheck=True)
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError as error:  # "cannot cache function ...: no locator available"
        warnings.warn(
            f"{error}; the CPU kernel {function.__name__} is compiled in every process "
            "(set NUMBA_CACHE_DIR to a writable folder)",
            RuntimeWarning,
            stacklevel=2,
        )
        return numba.njit(cache=False, **options)(function)
