"""Modality DataFrames: schema normalisation, the outer join on id, and the cached fit data.

:class:`CachedBlocks` converts and validates the rows once (Arrow -> numpy blocks, packed as
binary payloads) and keeps them cached for every EM pass. With the RDD API the payloads are
decoded once into an RDD of numpy batches; under Spark Connect, where there is no RDD API,
the payload DataFrame itself is cached. On both paths the passes that aggregate (EM) read the
decoded batches from files resident on the executors (:mod:`mmgmm_spark.spark.resident`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from functools import reduce
from typing import TypeVar

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mmgmm_spark.core.batch import Batch, DataValidationError, weight_error, weight_problems
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.quantiles import as_count
from mmgmm_spark.spark.arrow import (
    PAYLOAD_SCHEMA,
    WEIGHT_FIELD,
    decode_arrays,
    decode_batch,
    encode_arrays,
    encode_batch,
    payload_batches,
    payload_mapper,
)
from mmgmm_spark.spark.resident import ResidentBlocks
from mmgmm_spark.spark.session import has_rdd_api
from mmgmm_spark.spark.tasks import spark_task
from mmgmm_spark.storage import FEATURE_TYPES_HINT, double_array_or_none

log = logging.getLogger(__name__)

T_ = TypeVar("T_")
Codec = tuple[Callable[[T_], tuple[np.ndarray, ...]], Callable[[tuple[np.ndarray, ...]], T_]]
"""(to arrays, from arrays) of a partial result, for the DataFrame-only path."""

def features_column(df: DataFrame, column: str, source: str) -> Column:
    """``column`` as array<double> (see :func:`storage.double_array_or_none`), else an error."""
    if column not in df.columns:
        raise DataValidationError(
            f"{source}: no column '{column}' (columns: {df.columns}). Name the features "
            "column of each modality after the modality, or map it in the config."
        )
    converted = double_array_or_none(df, column)
    if converted is None:
        data_type = df.schema[column].dataType.simpleString()
        raise DataValidationError(
            f"{source}: column '{column}' has type {data_type}; {FEATURE_TYPES_HINT}")
    return converted


def modality_frame(df: DataFrame, modalities: tuple[Modality, ...], source: str = "DataFrame",
                   weight_column: str | None = None) -> DataFrame:
    """One array<double> column per modality (named after it), all other columns dropped
    but ``weight_column`` (as the double :data:`~mmgmm_spark.spark.arrow.WEIGHT_FIELD`)."""
    columns = [features_column(df, m.name, source).alias(m.name) for m in modalities]
    if weight_column is not None:
        columns.append(F.col(weight_column).cast("double").alias(WEIGHT_FIELD))
    return df.select(*columns)


def check_weight_column(df: DataFrame, column: str, source: str) -> None:
    """Raise unless ``column`` holds numbers that are finite, >= 0 and not all zero (one
    aggregation over the whole DataFrame; the rules are :func:`core.batch.weight_problems`)."""
    if column not in df.columns:
        raise DataValidationError(
            f"{source}: no weight column '{column}' (columns: {df.columns}). Name an existing "
            "numeric column, or fit without weights.")
    data_type = df.schema[column].dataType
    if not isinstance(data_type, T.NumericType):
        raise DataValidationError(
            f"{source}: weight column '{column}' has type {data_type.simpleString()}; it must "
            "be numeric (double, float, int, long...).")
    w = F.col(column).cast("double")
    invalid = w.isNull() | F.isnan(w) | (F.abs(w) == float("inf"))
    row = df.agg(F.count(F.lit(1)), F.sum(F.when(invalid, 1).otherwise(0)),
                 F.sum(F.when(~invalid & (w < 0), 1).otherwise(0)),
                 F.sum(F.when(~invalid, w))).first()
    problem = weight_problems(int(row[0]), int(row[1] or 0), int(row[2] or 0),
                              float(row[3] or 0.0))
    if problem is not None:
        raise weight_error(problem, column, source)


def join_modalities(frames: Mapping[str, DataFrame], id_column: str,
                    features_columns: Mapping[str, str] | None = None) -> DataFrame:
    """Full outer join of per-modality tables on ``id_column``.

    Args:
        frames: {modality name: DataFrame with ``id_column`` and a features column}.
        id_column: the entity id (string or long).
        features_columns: {modality name: features column}; default: a column named after
            the modality, else a column named ``features``.

    Returns:
        DataFrame(id_column, <modality>...): one row per id, null where a modality is absent.
    """
    features_columns = dict(features_columns or {})
    check_id_types(frames, id_column)
    parts = []
    for name, df in frames.items():
        column = features_columns.get(name) or (name if name in df.columns else "features")
        features = features_column(df, column, f"modality '{name}'").alias(name)
        # A null vector is a missing modality: that row is as good as absent.
        parts.append(df.select(F.col(id_column), features).where(F.col(name).isNotNull()))
    return reduce(lambda left, right: left.join(right, on=id_column, how="full_outer"), parts)


def check_id_types(frames: Mapping[str, DataFrame], id_column: str) -> None:
    """Every frame has ``id_column``, all of one kind (integers of any width, or strings...):
    a join of string ids with numbers would silently match "007" with 7, or nothing."""
    kinds = {}
    for name, df in frames.items():
        if id_column not in df.columns:
            raise DataValidationError(
                f"modality '{name}': no id column '{id_column}' (columns: {df.columns}).")
        kind = df.schema[id_column].dataType
        kinds[name] = "integer" if isinstance(kind, T.IntegralType) else kind.simpleString()
    if len(set(kinds.values())) > 1:
        raise DataValidationError(
            f"The id columns '{id_column}' of the modalities have different types ({kinds}); "
            "give every table ids of one type (e.g. re-ingest, or cast them to string).")


_PYTHON_ERROR = re.compile(r"DataValidationError: (.+)")


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise a DataValidationError raised inside Spark tasks as itself, not a Java trace."""
    try:
        yield
    except DataValidationError:
        raise
    except Exception as error:  # Spark wraps task failures in Py4J / PythonException types
        match = _PYTHON_ERROR.search(str(error))
        if match is None:
            raise
        raise DataValidationError(match.group(1).strip()) from None


def block_index(partition: int, offset: int) -> int:
    """A stable number for the ``offset``-th cached batch of a partition (both code paths)."""
    return partition * 1_000_003 + offset


def invalid_row_counts(frame: DataFrame, modalities: tuple[Modality, ...]) -> dict[str, int]:
    """Exact counts of invalid rows over the whole DataFrame, in one aggregation.

    ``frame`` is a :func:`modality_frame`. Keys: "<problem> in '<modality>'" and
    "rows observing no modality"; only non-zero counts are returned.
    """
    def count(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    checks = {}
    observed = []
    for m in modalities:
        c = F.col(m.name)
        all_nan = F.forall(c, lambda x: F.isnan(x))
        checks[f"feature arrays whose length is not {m.dim} in '{m.name}'"] = (
            c.isNotNull() & (F.size(c) != m.dim))
        checks[f"rows partly NaN in '{m.name}'"] = (
            c.isNotNull() & F.exists(c, lambda x: F.isnan(x) | x.isNull()) & ~all_nan)
        checks[f"rows with infinite values in '{m.name}'"] = c.isNotNull() & F.exists(
            c, lambda x: (x == float("inf")) | (x == float("-inf")))
        observed.append(c.isNotNull() & ~all_nan)
    checks["rows observing no modality"] = ~reduce(lambda a, b: a | b, observed)
    row = frame.agg(*[count(cond).alias(str(i)) for i, cond in enumerate(checks.values())]).first()
    return {name: int(row[i]) for i, name in enumerate(checks) if row[i]}


def _sampler(fraction: float, seed: int) -> Callable[[int, Batch], Batch]:
    def sample(index: int, batch: Batch) -> Batch:
        if fraction >= 1.0:
            return batch
        keep = np.random.default_rng([seed, index]).random(batch.n_rows) < fraction
        return batch.take(np.flatnonzero(keep))

    return sample


class CachedBlocks:
    """Validated numpy batches of a DataFrame, cached (MEMORY_AND_DISK) for repeated passes.

    With ``weight_column`` every batch carries its rows' weights (:attr:`Batch.weights`),
    checked first over the whole DataFrame (:func:`check_weight_column`). ``n_rows`` counts
    the cached rows, ``total_weight`` their weights (= ``n_rows`` unweighted): the row count
    of statistics, thresholds and BIC.

    ``resident``: :meth:`aggregate` reads the batches from files on the executors
    (:mod:`~mmgmm_spark.spark.resident`) instead of streaming them from the JVM every pass
    (and, without the RDD API, decoding them); the cache itself is then kept on disk only
    (DISK_ONLY), so the decoded rows are held in memory once, by the page cache.
    """

    def __init__(self, df: DataFrame, modalities: tuple[Modality, ...], source: str,
                 rows_per_block: int = 65_536, use_rdd: bool | None = None,
                 weight_column: str | None = None, resident: bool = True) -> None:
        self.modalities = modalities
        self.source = source
        self.weight_column = weight_column
        self.use_rdd = has_rdd_api(df.sparkSession) if use_rdd is None else use_rdd
        if weight_column is not None:
            check_weight_column(df, weight_column, source)
        payload = modality_frame(df, modalities, source, weight_column).mapInArrow(
            payload_mapper(modalities, source, rows_per_block), PAYLOAD_SCHEMA)
        self.rdd = self.payload = None
        if self.use_rdd:
            self.rdd = payload.rdd.map(lambda row: decode_batch(row.payload, modalities))
            self.rdd.persist(self._storage_level(resident))
        else:
            self.payload = payload.persist(self._storage_level(resident))
        self.resident = ResidentBlocks(modalities, self.rdd, self.payload) if resident else None
        try:
            self.n_rows = self._count()      # validates every row and fills the cache
            if self.n_rows == 0:
                raise DataValidationError(f"{source}: no rows. Check the input tables or filter.")
        except DataValidationError as error:
            self.unpersist()
            counts = invalid_row_counts(modality_frame(df, modalities, source), modalities)
            if not counts:
                raise
            found = "; ".join(f"{n} {problem}" for problem, n in counts.items())
            first = str(error).removeprefix(f"{source}: ")
            raise DataValidationError(f"{source}: {found}. First problem seen: {first}") from None
        except Exception:
            self.unpersist()
            raise

    def _storage_level(self, resident: bool) -> StorageLevel:
        return StorageLevel.DISK_ONLY if resident else StorageLevel.MEMORY_AND_DISK

    def _count(self) -> int:
        """Rows over all cached batches (the pass that fills the cache); also sets
        :attr:`total_weight`."""
        with translated_errors():
            if self.weight_column is None and self.rdd is None:
                rows = weight = int(self.payload.agg(F.sum("n_rows")).first()[0] or 0)
            else:
                rows, weight = self._streamed_aggregate(
                    lambda b: (b.n_rows, b.total_weight),
                    lambda a, b: (a[0] + b[0], a[1] + b[1]), (0, 0.0),
                    (lambda t: (np.array([t[0]]), np.array([t[1]])),
                     lambda arrays: (int(arrays[0][0]), float(arrays[1][0]))))
        self.total_weight = as_count(weight)
        return int(rows)

    def map_batches(self, function: Callable[[int, Batch], Batch]) -> list[Batch]:
        """Apply ``function(block_index, batch)`` to every cached batch; collect the results.

        Only for results bounded in size (samples, scores of a few rows), never for all rows.
        """
        modalities = self.modalities
        if self.rdd is not None:

            @spark_task
            def apply_partition(partition: int, batches: Iterator[Batch]) -> Iterator[Batch]:
                for offset, batch in enumerate(batches):
                    yield function(block_index(partition, offset), batch)

            with translated_errors():
                return self.rdd.mapPartitionsWithIndex(apply_partition).collect()

        @spark_task
        def apply(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            partition = TaskContext.get().partitionId()
            for offset, batch in enumerate(payload_batches(record_batches, modalities)):
                result = function(block_index(partition, offset), batch)
                yield pa.RecordBatch.from_pydict(
                    {"n_rows": [result.n_rows], "payload": [encode_batch(result, modalities)]})

        with translated_errors():
            rows = self.payload.mapInArrow(apply, PAYLOAD_SCHEMA).collect()
        return [decode_batch(row.payload, modalities) for row in rows if row.n_rows]

    def aggregate(self, function: Callable[[Batch], T_], merge: Callable[[T_, T_], T_],
                  zero: T_, codec: Codec, tree_depth: int = 2) -> T_:
        """``merge`` of ``function(batch)`` over every cached batch, starting from ``zero``.

        RDD path: ``treeAggregate``. DataFrame-only path: one merged result per partition,
        sent as arrays through ``codec`` (to arrays, from arrays), merged on the driver.
        """
        if self.resident is not None:
            return self._resident_aggregate(function, merge, zero, codec, tree_depth)
        return self._streamed_aggregate(function, merge, zero, codec, tree_depth)

    def _streamed_aggregate(self, function: Callable[[Batch], T_],
                            merge: Callable[[T_, T_], T_], zero: T_, codec: Codec,
                            tree_depth: int = 2) -> T_:
        """:meth:`aggregate` over the cached batches themselves (no resident files)."""
        if self.rdd is not None:
            partial = spark_task(lambda batches: (function(batch) for batch in batches))
            with translated_errors():
                return self.rdd.mapPartitions(partial).treeAggregate(zero, merge, merge,
                                                                     depth=tree_depth)
        with translated_errors():
            return reduce(merge, self._partition_results(function, merge, zero, codec), zero)

    def _resident_aggregate(self, function: Callable[[Batch], T_],
                            merge: Callable[[T_, T_], T_], zero: T_, codec: Codec,
                            tree_depth: int) -> T_:
        """:meth:`aggregate` over the resident files; a partition whose task found none is
        computed from the cached batches, and the files are written anew next pass."""
        with translated_errors():
            total, missing = self.resident.aggregate(function, merge, zero, codec, tree_depth)
            if not missing:
                return total
            log.warning("%s: %d partition(s) ran where their resident blocks are not; "
                        "computed from the cached blocks, files rewritten next pass.",
                        self.source, len(missing))
            rest = self._partition_results(function, merge, zero, codec, missing)
        self._drop_resident()
        return reduce(merge, rest, total)

    def _partition_results(self, function: Callable[[Batch], T_],
                           merge: Callable[[T_, T_], T_], zero: T_, codec: Codec,
                           partitions: tuple[int, ...] | None = None) -> list[T_]:
        """One merged result per partition of the cache (only ``partitions`` if given)."""
        if self.rdd is not None:
            whole = spark_task(lambda batches: [reduce(merge, map(function, batches), zero)])
            wanted = range(self.rdd.getNumPartitions()) if partitions is None else partitions
            return self.rdd.context.runJob(self.rdd, whole, partitions=list(wanted))
        modalities = self.modalities
        to_arrays, from_arrays = codec

        @spark_task
        def partition(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            if partitions is not None and TaskContext.get().partitionId() not in partitions:
                collections.deque(record_batches, maxlen=0)    # read, as Spark expects
                return
            total = reduce(merge, map(function, payload_batches(record_batches, modalities)),
                           zero)
            yield pa.RecordBatch.from_pydict({"result": [encode_arrays(to_arrays(total))]})

        rows = self.payload.mapInArrow(partition, "result binary").collect()
        return [from_arrays(decode_arrays(row.result)) for row in rows]

    def _drop_resident(self) -> None:
        if self.resident is None:
            return
        try:
            self.resident.drop()
        except Exception as error:   # a lost executor's files go when Spark deletes its dirs
            log.warning("%s: could not delete every resident block file: %s", self.source,
                        error)

    def mapped(self, function: Callable[[Batch], Batch], modalities: tuple[Modality, ...],
               source: str | None = None) -> CachedBlocks:
        """A cache of ``function(batch)`` for every batch (blocks of ``modalities``; the
        function may drop rows; ``source`` describes the rows, default this cache's). Filled
        and counted here; unpersist both caches when done.
        """
        derived = object.__new__(CachedBlocks)
        derived.modalities, derived.use_rdd = modalities, self.use_rdd
        derived.source = source or self.source
        derived.weight_column = self.weight_column
        derived.rdd = derived.payload = None
        resident = self.resident is not None
        if self.rdd is not None:
            derived.rdd = self.rdd.map(spark_task(function)).persist(
                self._storage_level(resident))
        else:
            derived.payload = self._mapped_payload(function, modalities, resident)
        derived.resident = (ResidentBlocks(modalities, derived.rdd, derived.payload)
                            if resident else None)
        try:
            derived.n_rows = derived._count()
        except Exception:
            derived.unpersist()
            raise
        return derived

    def _mapped_payload(self, function: Callable[[Batch], Batch],
                        modalities: tuple[Modality, ...], resident: bool) -> DataFrame:
        """The cached payload DataFrame of ``function(batch)`` (DataFrame-only path)."""
        inputs = self.modalities

        @spark_task
        def apply(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in payload_batches(record_batches, inputs):
                result = function(batch)
                yield pa.RecordBatch.from_pydict(
                    {"n_rows": [result.n_rows], "payload": [encode_batch(result, modalities)]})

        return self.payload.mapInArrow(apply, PAYLOAD_SCHEMA).persist(
            self._storage_level(resident))

    def sample(self, max_rows: int, seed: int) -> Batch:
        """About ``max_rows`` rows drawn uniformly (all rows, in order, when there are fewer)."""
        fraction = min(1.0, max_rows / self.n_rows)
        parts = [b for b in self.map_batches(_sampler(fraction, seed)) if b.n_rows]
        return Batch.concat(parts)

    def unpersist(self) -> None:
        self._drop_resident()
        if self.rdd is not None:
            self.rdd.unpersist()
        if self.payload is not None:
            self.payload.unpersist()


@contextlib.contextmanager
def cached_blocks(data: DataFrame | CachedBlocks, modalities: tuple[Modality, ...],
                  source: str = "DataFrame", rows_per_block: int = 65_536,
                  use_rdd: bool | None = None, weight_column: str | None = None,
                  resident: bool = True) -> Iterator[CachedBlocks]:
    """``data`` as cached blocks while the context lasts.

    A DataFrame is converted, validated and cached here and unpersisted on exit; cached blocks
    are yielded as they are (their owner unpersists them; ``weight_column`` must then be the
    one they were cached with). ``rows_per_block``, ``use_rdd``, ``weight_column`` and
    ``resident`` are :class:`CachedBlocks`'s.
    """
    if isinstance(data, CachedBlocks):
        if weight_column not in (None, data.weight_column):
            raise ValueError(
                f"{data.source}: the cached blocks were cached with weight column "
                f"{data.weight_column!r}, not {weight_column!r}; cache them with "
                "weight_column=... to fit with weights.")
        yield data
        return
    blocks = CachedBlocks(data, tuple(modalities), source, rows_per_block, use_rdd,
                          weight_column, resident)
    try:
        yield blocks
    finally:
        blocks.unpersist()
