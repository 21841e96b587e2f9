"""glibc malloc settings for CPU training: freed tensor memory is kept for reuse instead of returned to the OS.

PyTorch caches GPU memory but takes CPU tensors straight from malloc. glibc serves blocks above its mmap threshold
(128 KiB, raised as such blocks are freed, at most to 32 MiB) with a fresh ``mmap`` and gives them back with
``munmap`` when freed, and it trims free memory at the top of its heap. On CPU a training step allocates and frees
many blocks of megabytes (a stride-2 activation of the quickstart batch is 32 MiB), and every fresh block is
page-faulted in again, page by page, zeroed by the kernel. Raising the mmap threshold and the trim threshold keeps
those blocks in the heap: the quickstart model's training step is 15-21 % faster on the project's 2-core machine for
3-8 % more peak memory (``benchmarks/allocator.py``). jemalloc or tcmalloc (``LD_PRELOAD``) do the same job; this
needs nothing installed.

:func:`tod_lightning.cli.main` applies it (DDP ranks run ``cli.py`` each; forked data-loader workers inherit it);
``TOD_LIGHTNING_MALLOC=default`` keeps glibc's own settings. It changes how the process reuses memory, nothing it
computes (the quickstart's fit gives the same validation metrics to the last digit either way).
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "TOD_LIGHTNING_MALLOC"
MMAP_THRESHOLD = 512 << 20  # blocks below 512 MiB come from the heap (glibc's dynamic maximum: 32 MiB)
TRIM_THRESHOLD = 1 << 30  # free memory at the heap top goes back to the OS only beyond 1 GiB
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


def tune_cpu_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds for this process (``mallopt``); ``True`` where they were set.

    ``False``, changing nothing, where ``TOD_LIGHTNING_MALLOC`` is ``default`` (or ``0``/``off``/``false``), outside
    Linux, where the C library is not glibc (musl, or jemalloc/tcmalloc preloaded: their own caching applies) or
    where glibc refuses the mmap threshold; also ``False`` where it takes that one and refuses the trim threshold.
    Both thresholds are set, because setting either one stops glibc's dynamic adjustment of both: the mmap
    threshold alone leaves the trim threshold at 128 KiB, which gives much of the memory back all the same.
    """
    if os.environ.get(ENV_VAR, "").strip().lower() in ("default", "0", "off", "false"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the process already runs on
        libc.gnu_get_libc_version  # only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if _preloaded_allocator():
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt takes an int and returns 0 where glibc refuses a value. The mmap threshold first: a trim threshold set
    # alone would freeze the mmap threshold at 128 KiB, slower than glibc's default (1.8-1.9x the quickstart step).
    if not mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1)):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)))


def _preloaded_allocator() -> bool:
    """Whether jemalloc or tcmalloc is preloaded: malloc is then theirs, and glibc's settings would do nothing."""
    preload = os.environ.get("LD_PRELOAD", "")
    return "jemalloc" in preload or "tcmalloc" in preload
