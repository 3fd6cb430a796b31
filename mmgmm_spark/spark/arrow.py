"""Arrow <-> numpy: the only place that knows how modality columns look inside Spark batches.

A modality column is ``array<double>`` (null = modality missing for the row). It reaches numpy
without a per-row loop: the list values are flattened and reshaped to (n_observed, d).
Validated blocks are packed into a compact binary payload (numpy's own format, never pickle)
so that the fit converts and validates the data once and reuses it every iteration.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmgmm_spark.core.batch import (
    Batch,
    Block,
    DataValidationError,
    check_batch,
    check_block,
)
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.spark.tasks import spark_task

PAYLOAD_SCHEMA = "n_rows long, payload binary"

WEIGHT_FIELD = "__mmgmm_row_weight__"
"""The row-weight column inside Spark batches (a double, validated before caching)."""


def block_from_arrow(column: pa.Array, modality: Modality, source: str) -> Block:
    """Validate one list column (nulls = missing) into a core ``Block``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    observed = column.is_valid().to_numpy(zero_copy_only=False)
    present = column.filter(column.is_valid())
    lengths = pc.list_value_length(present).to_numpy(zero_copy_only=False)
    wrong = int(np.count_nonzero(lengths != modality.dim))
    if wrong:
        raise DataValidationError(
            f"{source}: modality '{modality.name}' has {wrong} row(s) whose feature array length "
            f"is not {modality.dim} (found lengths {sorted(set(lengths.tolist()))[:5]}). Fix "
            f"the features or set the modality's dim (config `dim`, Modality(dim=...)) to "
            "match."
        )
    values = present.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return check_block(modality, observed, values.reshape(-1, modality.dim), source)


def batch_from_arrow(table: pa.RecordBatch | pa.Table, modalities: tuple[Modality, ...],
                     source: str = "DataFrame") -> Batch:
    """Validated :class:`Batch` from Arrow data with one list column per modality (and the
    rows' weights when a :data:`WEIGHT_FIELD` column is present)."""
    blocks = {m.name: block_from_arrow(table.column(m.name), m, source) for m in modalities}
    weights = None
    if WEIGHT_FIELD in table.schema.names:
        weights = np.ascontiguousarray(
            table.column(WEIGHT_FIELD).to_numpy(zero_copy_only=False), dtype=np.float64)
    return check_batch(table.num_rows, blocks, source, weights)


def encode_batch(batch: Batch, modalities: tuple[Modality, ...]) -> bytes:
    """Compact bytes of a validated batch (numpy ``.npz``, no pickled objects)."""
    arrays = {}
    for index, m in enumerate(modalities):
        block = batch.blocks[m.name]
        arrays[f"observed{index}"] = np.packbits(block.observed)
        arrays[f"values{index}"] = block.values
    if batch.weights is not None:
        arrays["weights"] = batch.weights
    buffer = io.BytesIO()
    np.savez(buffer, n_rows=np.int64(batch.n_rows), **arrays)
    return buffer.getvalue()


def decode_batch(payload: bytes, modalities: tuple[Modality, ...]) -> Batch:
    """Inverse of :func:`encode_batch`."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        n_rows = int(arrays["n_rows"])
        blocks = {}
        for index, m in enumerate(modalities):
            observed = np.unpackbits(arrays[f"observed{index}"], count=n_rows).astype(bool)
            blocks[m.name] = Block(observed, np.ascontiguousarray(arrays[f"values{index}"]))
        weights = arrays["weights"] if "weights" in arrays.files else None
    return Batch(n_rows, blocks, weights)


def payload_batches(record_batches: Iterator[pa.RecordBatch],
                    modalities: tuple[Modality, ...]) -> Iterator[Batch]:
    """The decoded batches of one partition of a cached payload DataFrame (DataFrame-only)."""
    for record_batch in record_batches:
        for payload in record_batch.column("payload").to_pylist():
            yield decode_batch(payload, modalities)


def encode_arrays(arrays: tuple[np.ndarray, ...]) -> bytes:
    """Bytes of a tuple of arrays (numpy ``.npz``, no pickled objects)."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def decode_arrays(payload: bytes) -> tuple[np.ndarray, ...]:
    """Inverse of :func:`encode_arrays`."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        return tuple(arrays[f"arr_{i}"] for i in range(len(arrays.files)))


def _grouped(batches: Iterable[pa.RecordBatch], max_rows: int) -> Iterator[pa.Table]:
    """Consecutive record batches concatenated into tables of about ``max_rows`` rows."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for record_batch in batches:
        if record_batch.num_rows == 0:
            continue
        pending.append(record_batch)
        rows += record_batch.num_rows
        if rows >= max_rows:
            yield pa.Table.from_batches(pending)
            pending, rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def payload_mapper(modalities: tuple[Modality, ...], source: str, max_rows: int):
    """A ``mapInArrow`` function: record batches -> rows of (n_rows, encoded validated block)."""

    @spark_task
    def encode_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for table in _grouped(batches, max_rows):
            batch = batch_from_arrow(table, modalities, source)
            yield pa.RecordBatch.from_pydict(
                {"n_rows": [batch.n_rows], "payload": [encode_batch(batch, modalities)]},
                schema=pa.schema([("n_rows", pa.int64()), ("payload", pa.binary())]))

    return encode_partition


def dense_list_column(values: np.ndarray) -> pa.ListArray:
    """Arrow list<double> column of the rows of (n, w) floats, none of them null."""
    n, width = values.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).ravel()))


def list_column(values: np.ndarray) -> pa.ListArray:
    """Arrow list<double> column from (n, d) floats; an all-NaN row becomes null (missing)."""
    values = np.asarray(values, dtype=np.float64)
    observed = ~np.isnan(values).all(axis=1)
    offsets = np.concatenate([[0], np.cumsum(observed * values.shape[1])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[observed].ravel()),
                                    mask=pa.array(~observed))


def arrow_table(data: dict[str, np.ndarray], ids: np.ndarray | None = None,
                id_column: str = "id") -> pa.Table:
    """Arrow table with an id column (default 0..n-1) and one list column per modality."""
    n_rows = len(next(iter(data.values())))
    columns = {id_column: pa.array(np.arange(n_rows) if ids is None else ids)}
    columns.update({name: list_column(values) for name, values in data.items()})
    return pa.table(columns)
