"""Chunk loops on every core: contiguous runs of chunks in parallel threads, one BLAS thread each.

The kernels' GEMMs over one chunk are too narrow for a threaded BLAS; numpy releases the GIL
in them, so threads over chunks use the cores instead. Each run is a contiguous range of chunks
and the results come back in run order, so whatever the runs compute (sums, row blocks) is
deterministic. In Spark tasks BLAS has one thread
(OMP_NUM_THREADS=1) and the runs are one run in the calling thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

T = TypeVar("T")


RUNS_PER_THREAD = 8
"""Runs per thread: the threads take runs as they finish, so a core that another process
slows down (this machine is shared) holds up at most one run, not half of the work."""


def map_runs(run: Callable[[np.ndarray], T], n_items: int) -> list[T]:
    """``run(indices)`` for contiguous runs of ``range(n_items)`` (:data:`RUNS_PER_THREAD` per
    BLAS thread, at most ``n_items``), in parallel threads with one BLAS thread each;
    results in run order."""
    threads = min(_blas_threads(), n_items)
    if threads <= 1:
        return [run(np.arange(n_items))]
    runs = np.array_split(np.arange(n_items), min(n_items, threads * RUNS_PER_THREAD))
    with _blas().limit(limits=1, user_api="blas"):
        return list(_pool(threads).map(run, runs))


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per size: fresh threads per call would each get a malloc arena and
    make the process's memory grow with the number of fits."""
    return ThreadPoolExecutor(threads, thread_name_prefix="mmgmm-chunks")


def _blas_threads() -> int:
    """Threads BLAS may use here: 1 in Spark tasks (OMP_NUM_THREADS=1), the cores otherwise."""
    return max([1, *(lib["num_threads"] for lib in _blas().select(user_api="blas").info())])
