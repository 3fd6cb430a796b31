"""Public read/write calls; each resolves the table and the engine, then delegates."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T  # noqa: N812

from mmgmm_spark.storage.changes import TableChanges
from mmgmm_spark.storage.engines import get_engine
from mmgmm_spark.storage.tables import (
    StorageError,
    TableRead,
    TableWrite,
    check_ids,
    features_as_double_array,
    id_column,
    require_columns,
    resolve_table,
)

TableLike = str | os.PathLike[str]


def read_table(spark: SparkSession, table: TableLike, *, version: int | None = None,
               engine: str = "auto") -> TableRead:
    """Read a Delta table as it was at ``version`` (default: latest).

    Args:
        table: a local path / ``file://`` URI, or (delta-spark only) a catalog name.
        version: Delta version to time-travel to; the version actually read is returned.
        engine: ``auto``, ``delta-spark`` or ``delta-rs`` (see ``engines.get_engine``).

    Returns:
        ``TableRead(df, table, version, engine)`` with all columns of the table (with the
        delta-rs engine, partition columns of partitioned tables are not included).
    """
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise StorageError(f"version must be an integer Delta version, got {version!r}.")
    ref = resolve_table(table)
    chosen = get_engine(spark, engine)
    df, read_version = chosen.read(spark, ref, version)
    return TableRead(df=df, table=ref.display, version=read_version, engine=chosen.name)


def read_changes(spark: SparkSession, table: TableLike, since: int, until: int, *,
                 engine: str = "auto") -> TableChanges:
    """Rows added to and removed from ``table`` between Delta versions ``since`` and ``until``
    (``since`` <= ``until``; see :mod:`mmgmm_spark.storage.changes` and
    :func:`~mmgmm_spark.storage.changes.net_changes`)."""
    for name, value in (("since", since), ("until", until)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise StorageError(f"{name} must be a Delta version (an integer >= 0), got "
                               f"{value!r}.")
    if since > until:
        raise StorageError(f"Table {table!r}: changes since version {since} until {until}: "
                           "since must not be after until.")
    ref = resolve_table(table)
    return get_engine(spark, engine).changes(spark, ref, since, until)


def read_modality(spark: SparkSession, table: TableLike, *, id_col: str = "id",
                  features_col: str = "features", version: int | None = None,
                  engine: str = "auto", check: bool = True) -> TableRead:
    """Read one modality table as ``(id_col, features_col)`` rows.

    The result has exactly two columns: ``id_col`` (string, or long for integer ids) and
    ``features_col`` as ``array<double>`` (array<float> and Spark ML vectors converted). Other
    columns are dropped. With ``check=True`` one Spark aggregation (:func:`check_ids`) rejects
    an empty table and null or duplicate ids (a null feature vector means the modality is
    missing for that id); pass ``check=False`` to run it later yourself.
    """
    read = read_table(spark, table, version=version, engine=engine)
    df = read.df
    require_columns(df, read.table, [id_col, features_col])
    df = id_column(df.select(id_col, features_col), read.table, id_col)
    df = features_as_double_array(df, read.table, features_col)
    if check:
        check_ids(df, read.table, id_col, features_col)
    return TableRead(df=df, table=read.table, version=read.version, engine=read.engine)


def write_table(spark: SparkSession, df: DataFrame, table: TableLike, *, mode: str = "append",
                replace_where: Mapping[str, str | int] | None = None,
                engine: str = "auto") -> TableWrite:
    """Write ``df`` to a Delta table in one transaction (the table is created if absent).

    Args:
        mode: ``append`` (schema must equal the table's: names and types) or ``overwrite``
            (replaces all rows and the schema).
        replace_where: only with ``mode="overwrite"``: ``{"run_id": "r1"}`` replaces just the
            rows where every listed column equals its value (Delta's ``replaceWhere``); all
            rows of ``df`` must match it, and the schema must equal the table's. Writing the
            same run twice therefore leaves one copy.

    Returns:
        ``TableWrite(table, version, mode, engine, files_added, files_removed)``.

    A failure leaves the table at its previous version; see ``engines/delta_rs.py`` for how
    the embedded engine stages files and commits, ``engines/delta_spark.py`` for Delta Spark.
    """
    if mode not in ("append", "overwrite"):
        raise StorageError(f"mode must be 'append' or 'overwrite', got {mode!r}.")
    if replace_where is not None and mode != "overwrite":
        raise StorageError("replace_where needs mode='overwrite' (it overwrites matching rows).")
    ref = resolve_table(table)
    return get_engine(spark, engine).write(spark, df, ref, mode, replace_where)


def write_modality_table(spark: SparkSession, table: TableLike, ids: Sequence | np.ndarray,
                         features: np.ndarray, *, id_col: str = "id",
                         features_col: str = "features", mode: str = "overwrite",
                         engine: str = "auto") -> TableWrite:
    """Write one modality held in memory as a Delta table ``(id_col, features_col)``.

    Args:
        ids: shape (n,), unique strings or integers (stored as string / long).
        features: shape (n, d), stored as ``array<double>`` (float32 values widen exactly).
    """
    features = np.asarray(features)
    ids = np.asarray(ids)
    if features.ndim != 2 or ids.ndim != 1 or len(ids) != features.shape[0]:
        raise StorageError(
            f"Table {os.fspath(table)!r}: need ids of shape (n,) and features of shape (n, d), "
            f"got {ids.shape} and {features.shape}."
        )
    if len(np.unique(ids)) != len(ids):
        raise StorageError(
            f"Table {os.fspath(table)!r}: {len(ids) - len(np.unique(ids))} duplicate ids; ids "
            "must be unique."
        )
    if np.issubdtype(ids.dtype, np.integer):
        id_type, id_values = T.LongType(), ids.astype(np.int64)
    else:
        id_type, id_values = T.StringType(), ids.astype(str).astype(object)
    schema = T.StructType([T.StructField(id_col, id_type),
                           T.StructField(features_col, T.ArrayType(T.DoubleType()))])
    pdf = pd.DataFrame({id_col: id_values,
                        features_col: list(features.astype(np.float64, copy=False))})
    df = spark.createDataFrame(pdf, schema=schema)
    return write_table(spark, df, table, mode=mode, engine=engine)
