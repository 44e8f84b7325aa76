"""Keeping freed memory inside the process (glibc), so that XLA:CPU's buffers are not mapped afresh and
page-faulted in every step.

Why: XLA:CPU allocates each execution's temporary buffer with malloc, from its worker threads (168 MB
per step for ``pixelcnn_mnist`` at batch 64). glibc serves a request that large from a thread's arena
with ``mmap`` and gives it back with ``munmap``, so every step touches new zero-filled pages: 43,000
page faults and about 90 ms of system time per PixelCNN MNIST step (``strace -c``, ``getrusage``). One
arena that grows with ``brk``, no ``mmap`` and no trimming keep the pages for the next step; the cost
is that the process holds its peak heap until it exits. ``mallopt`` is glibc's interface for this and
no library wraps it, hence ``ctypes``.

The process-wide setting is made by the command line (``jaxconv.cli.entry``), never on import. A user
who sets glibc's malloc options in the environment keeps them.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
                 "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to one arena, no mmap and no trimming; whether it did (not on another C
    library or OS, nor when the environment sets malloc options or preloads an allocator)."""
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in _SETTINGS)
