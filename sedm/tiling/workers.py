"""The tiling worker pool: threads, or forked processes where that is safe, with a bounded number
of units of work in flight, and the process settings (garbage collection, allocator) of the loop."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


_FORKED_FN: Callable[[Any], Any] | None = None
"""The work function forked worker processes call (they inherit it; only batches are sent)."""


def _call_forked(batch: Any) -> Any:
    assert _FORKED_FN is not None
    return _FORKED_FN(batch)


def can_fork_workers() -> bool:
    """Whether worker processes may be forked: Linux only (macOS system libraries are not fork-safe;
    Windows has no fork)."""
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _pool(fn: Callable[[Any], Any], workers: int, processes: bool):
    """(executor, submit, whether processes) for ``workers`` threads, or forked processes that
    inherit ``fn``.

    Processes avoid the GIL hand-offs two tiling threads pay for (decode, numpy and file writes each
    release and retake it several times per tile, so two threads spend more CPU per tile than
    one). They are forked, not spawned, so nothing is imported or pickled but the batches and
    results. The parent may have threads (zarr's event loop, BLAS pools) that a fork does not copy;
    the workers never call into them: they read the slide with ``pread``, compute with numpy and
    write shard files with plain file calls."""
    if not processes:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sedm-tile")
        return pool, functools.partial(pool.submit, fn), False
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    try:
        with warnings.catch_warnings():  # Python >= 3.12 warns about any fork of a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
            first = pool.submit(int, 0)  # the workers are forked now, under the filter
        first.result()
    except OSError as exc:  # no fork here (process limits, memory): threads still work
        log.warning("cannot fork tiling workers (%s); using threads", exc)
        return _pool(fn, workers, processes=False)
    return pool, functools.partial(pool.submit, _call_forked), True


def run_bounded(fn: Callable[[Any], Any], batches: Iterator[Any], threads: int,
                 on_result: Callable[[Any], None], processes: bool = False) -> bool:
    """Run ``fn`` over ``batches`` on ``threads`` workers (threads, or forked processes) with at most
    ``2 * threads`` batches in flight; results are handed to ``on_result`` in submission order. On
    an error, queued batches are cancelled and running ones finish before the error propagates (so
    nothing writes into the temporary output after it has been removed). Returns whether the
    workers were processes (a failed fork falls back to threads)."""
    global _FORKED_FN
    pending: deque[Future] = deque()
    _FORKED_FN = fn if processes else None  # set before the fork, so the workers inherit it
    pool, submit, processes = _pool(fn, threads, processes)
    with pool:
        try:
            for batch in batches:
                pending.append(submit(batch))
                while len(pending) >= 2 * threads:
                    on_result(pending.popleft().result())
            while pending:
                on_result(pending.popleft().result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            _FORKED_FN = None
    return processes


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Leave the objects that exist now out of garbage collection while the block is run.

    The tile loop allocates few objects, but each collection the allocations trigger walks every
    object that numpy, pandas, zarr and scikit-image left behind. Frozen objects are only skipped,
    not leaked: they return to the oldest generation after."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it to the kernel.

    Each tile allocates and frees a few 50-200 KB buffers (decoded pixels, pyramid levels, encoded
    chunks). By default glibc hands such memory back (trims the heap of each thread's arena) and the
    next tile faults it in again, zero-filled: kernel time that was a large share of the tiling
    CPU. Fixed thresholds keep it (at a small, bounded cost in peak RSS). Process-wide and
    harmless elsewhere; a no-op where the C library is not glibc. Returns whether it applied."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 256 * 2**20))
