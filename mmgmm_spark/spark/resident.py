"""Decoded blocks resident on the executors between EM passes (the RDD path).

Every EM pass over cached blocks used to stream each cached batch from the JVM to a Python
worker and unpickle it: at d=16, 1M rows that is 128 MB and ~0.15-0.19 CPU-s per pass, as
much as a third of the pass (``benchmarks/results/issue17.md``). Here the first pass writes
each partition's decoded arrays once, as ``.npy`` files in the executor's local directory
(``SPARK_LOCAL_DIRS``, which Spark deletes when the executor stops), and caches only a small
:class:`Handle` per partition in Spark. Later passes send the handle, and the task maps the
files (``np.load(mmap_mode="r")``): the arrays come from the page cache, shared by every
Python worker of the node, with no copy and no unpickling.

A task that finds no files (it ran on another node than the one that wrote them) reports
its partition as missing; the caller then computes that partition from the cached batches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from mmgmm_spark.core.batch import Batch, Block
from mmgmm_spark.core.modality import Modality

DIRECTORY_PREFIX = "mmgmm-resident-"


@dataclass(frozen=True)
class Handle:
    """Where one partition's decoded batches are: ``n_batches`` batches in ``directory`` (a
    path on the executor that wrote them)."""

    partition: int
    directory: str
    n_batches: int


def local_root() -> str:
    """The executor's first local directory (Spark sets ``SPARK_LOCAL_DIRS`` for its Python
    workers), else the system's temporary directory."""
    dirs = os.environ.get("SPARK_LOCAL_DIRS", "")
    return dirs.split(",")[0] if dirs else tempfile.gettempdir()


def token_directory(token: str, root: str | None = None) -> str:
    """The directory of one cache's files (``token``: unique per cache)."""
    return os.path.join(root or local_root(), DIRECTORY_PREFIX + token)


def _arrays(batch: Batch, modalities: tuple[Modality, ...]) -> dict[str, np.ndarray]:
    arrays = {"n_rows": np.array([batch.n_rows], dtype=np.int64)}
    for index, m in enumerate(modalities):
        arrays[f"observed{index}"] = batch.blocks[m.name].observed
        arrays[f"values{index}"] = batch.blocks[m.name].values
    if batch.weights is not None:
        arrays["weights"] = batch.weights
    return arrays


def write_partition(token: str, partition: int, batches: Iterable[Batch],
                    modalities: tuple[Modality, ...]) -> Handle:
    """Write the batches of one partition (atomically: to a temporary directory renamed
    into place; a retried or speculative task keeps the copy already there)."""
    directory = os.path.join(token_directory(token), str(partition))
    staging = f"{directory}.{uuid.uuid4().hex}.tmp"
    os.makedirs(staging)
    n_batches = 0
    for n_batches, batch in enumerate(batches, start=1):
        for key, array in _arrays(batch, modalities).items():
            np.save(os.path.join(staging, f"{n_batches - 1}.{key}.npy"), array)
    try:
        os.rename(staging, directory)
    except OSError:                  # another attempt's copy (the same rows) is in place
        shutil.rmtree(staging, ignore_errors=True)
    return Handle(partition, directory, n_batches)


def _load(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def read_partition(handle: Handle, modalities: tuple[Modality, ...]) -> list[Batch] | None:
    """The batches of ``handle``, memory-mapped read-only; None when this node has none."""
    if not os.path.isdir(handle.directory):
        return None
    batches = []
    for offset in range(handle.n_batches):
        prefix = os.path.join(handle.directory, f"{offset}.")
        n_rows = int(_load(prefix + "n_rows.npy")[0])
        blocks = {m.name: Block(_load(f"{prefix}observed{i}.npy"),
                                _load(f"{prefix}values{i}.npy"))
                  for i, m in enumerate(modalities)}
        weights = _load(prefix + "weights.npy") if os.path.exists(prefix + "weights.npy") else None
        batches.append(Batch(n_rows, blocks, weights))
    return batches


def remove_partitions(handles: Iterator[Handle]) -> Iterator[int]:
    """Delete the files of ``handles`` (and their cache's directory once empty); yields the
    number of partitions removed."""
    removed = 0
    for handle in handles:
        shutil.rmtree(handle.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(handle.directory))
        removed += 1
    yield removed
