"""The process's memory: arrays that grow in place, and freed memory handed back to the OS."""

from __future__ import annotations

import ctypes
import importlib
import mmap

import numpy as np


def release_free_memory() -> None:
    """Hand memory that was freed back to the operating system, where the C library can.

    A restart reads the window's rows and band keys chunk by chunk; glibc keeps the freed
    chunks in its heap, where the long-lived objects made meanwhile pin them: a fifth of the
    process's memory after a 100,000-article restart.  ``malloc_trim`` returns them (Dask's
    workers do the same).  Elsewhere (musl, macOS) this does nothing.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def keep_large_arrays_movable() -> None:
    """Give every large array a mapping of its own, without huge pages.

    - numpy advises transparent huge pages for its large arrays, and glibc cannot grow a
      block that holds huge pages by remapping it, so every ``enlarge`` would copy
      (measured: a 240 MB array grown by a quarter peaked at 484 MB with huge pages, 312 MB
      without).  numpy exposes the switch only under a private name, which has moved
      between versions; where it is missing, growing copies and nothing else changes.
    - glibc serves a block from its own mapping only above a threshold that it raises to
      the size of every such block freed (up to 32 MB), so after the first large array is
      freed the next ones come from the heap, where freeing them fragments it.  A process
      that closed and reopened a 100,000-article window three times held 227, 243 and
      260 MB after each reopen and up to 80 MB more after a close than after the first;
      with the threshold fixed at ``MMAP_THRESHOLD``: 226, 240 and 245 MB, and 117-125 MB
      after every close.
    """
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            switch = importlib.import_module(module)._set_madvise_hugepage
        except (ImportError, AttributeError):
            continue
        switch(False)
        break
    if _libc is not None and hasattr(_libc, "mallopt"):
        _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def enlarge(owner: object, name: str, rows: int) -> None:
    """Give the array ``owner.<name>`` ``rows`` rows (the new ones zero), in place.

    ``ndarray.resize`` reallocates, and glibc moves a large block by remapping its pages:
    copying into a new array instead holds the old and the new one together, a peak of
    twice the array (60 MB of article rows at 80,000 articles).  Where something else still
    refers to the array (a view), numpy refuses and it is copied.  ``resize`` writes the
    added rows (zeros) at once; an array grows only when it is full, so they are the next
    to be used.
    """
    shape = (rows, *getattr(owner, name).shape[1:])
    if not len(getattr(owner, name)):
        # Fresh zero pages cost nothing until written (a restart reserves room for a
        # quarter more rows than it loads); ``resize`` would write every new byte.
        setattr(owner, name, np.zeros(shape, dtype=getattr(owner, name).dtype))
        return
    kept_bytes = getattr(owner, name).nbytes
    try:
        getattr(owner, name).resize(shape, refcheck=True)
    except ValueError:
        old = getattr(owner, name)
        bigger = np.zeros(shape, dtype=old.dtype)
        kept = min(len(old), rows)
        bigger[:kept] = old[:kept]
        setattr(owner, name, bigger)
        return
    array = getattr(owner, name)
    _forget_zero_pages(array.ctypes.data + kept_bytes, array.nbytes - kept_bytes)


def _forget_zero_pages(address: int, size: int) -> None:
    """Hand back the whole pages of a range that holds only zeros.

    ``resize`` zeroes the rows it adds by writing them, which makes them resident: a
    quarter of an array's size, long before they are used.  ``MADV_DONTNEED`` drops the
    pages; private anonymous memory reads as zeros again when next touched.
    """
    if _libc is None or size <= 0:
        return
    start = -(-address // PAGE) * PAGE
    end = (address + size) // PAGE * PAGE
    if end > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


MADV_DONTNEED = 4
M_MMAP_THRESHOLD = -3
# Blocks at least this large get a mapping of their own: the window's arrays, restart
# chunks; not the small temporaries of one article's placement.
MMAP_THRESHOLD = 1 << 20
PAGE = mmap.PAGESIZE


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_libc = _glibc()
