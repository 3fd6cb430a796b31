"""Decoded blocks resident on the executors between EM passes.

Every EM pass over cached blocks used to stream each cached batch from the JVM to a Python
worker and unpickle it: at d=16, 1M rows that is 128 MB and ~0.15-0.19 CPU-s per pass, as
much as a third of the pass (``benchmarks/results/issue17.md``). Here the first pass writes
each partition's decoded arrays once, as ``.npy`` files in the executor's local directory
(``SPARK_LOCAL_DIRS``, which Spark deletes when the executor stops), and caches only a small
:class:`Handle` per partition in Spark. Later passes send the handle, and the task maps the
files (``np.load(path, mmap_mode="r", allow_pickle=False)``): the arrays come from the page
cache, shared by every Python worker of the node, with no copy and no unpickling.

Both code paths have it: with the RDD API the handles are an RDD; without it (Spark
Connect) a DataFrame of handles, cached like the payloads. A task that finds no files (it ran
on another node than the one that wrote them) reports its partition as missing; the caller
then computes that partition from the cached batches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import reduce
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame

from mmgmm_spark.core.batch import Batch, Block
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.spark.arrow import decode_arrays, encode_arrays, payload_batches
from mmgmm_spark.spark.tasks import spark_task

DIRECTORY_PREFIX = "mmgmm-resident-"

HANDLE_SCHEMA = "partition long, directory string, n_batches long"
"""A DataFrame of :class:`Handle` rows (the DataFrame-only path)."""

RESULT_SCHEMA = "result binary, missing long"
"""A partition's encoded result, or (null, its index) when its files are not on the node."""

T_ = TypeVar("T_")


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


def _frame_handles(record_batches: Iterator[pa.RecordBatch]) -> Iterator[Handle]:
    for record_batch in record_batches:
        for row in record_batch.to_pylist():
            yield Handle(**row)


class ResidentBlocks:
    """The resident files of one cache: written by the first :meth:`aggregate`, deleted by
    :meth:`drop`.

    Args:
        modalities: the cached batches' modalities.
        rdd: the cached RDD of batches (RDD path), or None.
        payload: the cached payload DataFrame (DataFrame-only path), when ``rdd`` is None.
    """

    def __init__(self, modalities: tuple[Modality, ...], rdd: RDD | None = None,
                 payload: DataFrame | None = None) -> None:
        self.modalities = modalities
        self.rdd, self.payload = rdd, payload
        self.token = uuid.uuid4().hex
        self.handles: RDD | DataFrame | None = None

    def _handles(self) -> RDD | DataFrame:
        """One handle per partition, cached (MEMORY_ONLY); computing it writes the files."""
        if self.handles is not None:
            return self.handles
        token, modalities = self.token, self.modalities
        if self.rdd is not None:

            @spark_task
            def write(partition: int, batches: Iterator[Batch]) -> Iterator[Handle]:
                yield write_partition(token, partition, batches, modalities)

            self.handles = self.rdd.mapPartitionsWithIndex(write)
        else:

            @spark_task
            def write_frame(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                from pyspark import TaskContext

                handle = write_partition(token, TaskContext.get().partitionId(),
                                         payload_batches(record_batches, modalities), modalities)
                yield pa.RecordBatch.from_pylist([asdict(handle)])

            self.handles = self.payload.mapInArrow(write_frame, HANDLE_SCHEMA)
        self.handles = self.handles.persist(StorageLevel.MEMORY_ONLY)
        return self.handles

    def aggregate(self, function: Callable[[Batch], T_], merge: Callable[[T_, T_], T_],
                  zero: T_, codec: tuple[Callable[[T_], tuple[np.ndarray, ...]],
                                         Callable[[tuple[np.ndarray, ...]], T_]],
                  tree_depth: int = 2) -> tuple[T_, tuple[int, ...]]:
        """``merge`` of ``function(batch)`` over the batches of every partition whose task
        found its files, and the indices of the partitions whose task did not."""
        modalities = self.modalities

        def reduce_handle(handle: Handle) -> T_ | None:
            batches = read_partition(handle, modalities)
            return None if batches is None else reduce(merge, map(function, batches), zero)

        if self.rdd is not None:
            return self._rdd_aggregate(reduce_handle, merge, zero, tree_depth)
        to_arrays, from_arrays = codec

        @spark_task
        def partial(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for handle in _frame_handles(record_batches):
                result = reduce_handle(handle)
                row = ({"result": None, "missing": handle.partition} if result is None else
                       {"result": encode_arrays(to_arrays(result)), "missing": None})
                yield pa.RecordBatch.from_pylist([row], schema=pa.schema(
                    [("result", pa.binary()), ("missing", pa.int64())]))

        rows = self._handles().mapInArrow(partial, RESULT_SCHEMA).collect()
        total = reduce(merge, (from_arrays(decode_arrays(row.result)) for row in rows
                               if row.result is not None), zero)
        return total, tuple(row.missing for row in rows if row.missing is not None)

    def _rdd_aggregate(self, reduce_handle: Callable[[Handle], Any],
                       merge: Callable[[T_, T_], T_], zero: T_,
                       tree_depth: int) -> tuple[T_, tuple[int, ...]]:
        def merge_pairs(a: tuple[T_, tuple[int, ...]],
                        b: tuple[T_, tuple[int, ...]]) -> tuple[T_, tuple[int, ...]]:
            return merge(a[0], b[0]), a[1] + b[1]

        @spark_task
        def partial(handles: Iterator[Handle]) -> Iterator[tuple[T_, tuple[int, ...]]]:
            for handle in handles:
                result = reduce_handle(handle)
                yield (zero, (handle.partition,)) if result is None else (result, ())

        return self._handles().mapPartitions(partial).treeAggregate(
            (zero, ()), merge_pairs, merge_pairs, depth=tree_depth)

    def drop(self) -> None:
        """Delete the files (a job over the handles, on their executors) and the handles'
        cache; the next :meth:`aggregate` writes them again."""
        if self.handles is None:
            return
        try:
            if self.rdd is not None:
                self.handles.mapPartitions(spark_task(remove_partitions)).sum()
            else:

                @spark_task
                def remove(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                    removed = list(remove_partitions(_frame_handles(record_batches)))
                    yield pa.RecordBatch.from_pydict({"removed": removed})

                self.handles.mapInArrow(remove, "removed long").collect()
        finally:
            self.handles.unpersist()
            self.handles = None
