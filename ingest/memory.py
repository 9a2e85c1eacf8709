"""Giving memory back after a flood of request bodies (glibc only; elsewhere a no-op).

Request bodies arrive in chunks of up to a few hundred KiB. glibc's allocator serves
such chunks from its heap once its adaptive mmap threshold has grown (it grows to the
size of the largest block freed, e.g. a 1 MiB body), and a heap fragmented by many
stalled bodies is not returned to the system: 200 stalled 1 MB uploads left the
process 150 MiB larger for good. Two remedies, both cheap:

- :func:`tune_allocator` (at start) pins the mmap threshold at 64 KiB: every block of
  that size or more is its own mapping, unmapped when freed;
- :class:`Trimmer` calls ``malloc_trim(0)`` once the body reads have gone idle after
  requests were cut short (timeouts, over the cap, too large, disconnects), handing
  free heap pages back.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys

import structlog

log = structlog.get_logger("omniroute.memory")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 * 1024
TRIM_THRESHOLD = 128 * 1024
# How long the reads must stay idle after an abort before the heap is trimmed.
TRIM_DELAY_S = 0.5


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def tune_allocator() -> bool:
    """Pin glibc's mmap and trim thresholds; False where there is no glibc."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    ok = bool(_LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and ok
    return ok


def trim() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class Trimmer:
    """Trims the heap once after a burst of aborted requests, when reads are idle."""

    def __init__(self) -> None:
        self._due = False
        self._handle: asyncio.TimerHandle | None = None

    def aborted(self) -> None:
        self._due = True

    def idle(self) -> None:
        """No body is being read now: trim soon if requests were cut short since the
        last trim."""
        if not self._due or _LIBC is None or self._handle is not None:
            return
        self._handle = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim)

    def _trim(self) -> None:
        self._handle = None
        self._due = False
        trim()
        log.debug("memory.trimmed")
