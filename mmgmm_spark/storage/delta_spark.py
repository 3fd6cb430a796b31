"""Spark's native Delta (``format("delta")``): Databricks and clusters with the Delta package.

Delta Spark is transactional itself; this module only maps the shared interface onto it:
time travel with ``versionAsOf`` at an explicitly resolved version (so the version returned is
exactly the one read), our schema check before appends (uniform error messages), and
``replaceWhere`` for idempotent re-runs, its predicate built from validated column names and
quoted literals. Works under Spark Connect (``delta.tables.DeltaTable`` dispatches to it).
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, DataFrameReader, SparkSession
from pyspark.sql import types as T  # noqa: N812

from mmgmm_spark.storage.tables import (
    StorageError,
    TableRef,
    TableWrite,
    check_replace_where,
    schema_mismatch,
)

ENGINE = "delta-spark"


def _delta_table(spark: SparkSession, ref: TableRef):  # -> delta.tables.DeltaTable | None
    from delta.tables import DeltaTable

    if ref.catalog_name is not None:
        if not spark.catalog.tableExists(ref.display):
            return None
        return DeltaTable.forName(spark, ref.catalog_name)
    if not DeltaTable.isDeltaTable(spark, ref.path):
        return None
    return DeltaTable.forPath(spark, ref.path)


def _latest_version(spark: SparkSession, ref: TableRef) -> int | None:
    table = _delta_table(spark, ref)
    if table is None:
        return None
    return int(table.history(1).select("version").first()[0])


def _load(reader: DataFrameReader, ref: TableRef) -> DataFrame:
    if ref.catalog_name is not None:
        return reader.table(ref.catalog_name)
    return reader.format("delta").load(ref.path)


def read(spark: SparkSession, ref: TableRef, version: int | None) -> tuple[DataFrame, int]:
    """The table at ``version`` (default: the latest, resolved first), and that version."""
    latest = _latest_version(spark, ref)
    if latest is None:
        raise StorageError(
            f"Delta table {ref.display!r} not found; write it first "
            "(`mmgmm ingest` writes the modality tables, `mmgmm score` the scores table) or "
            "fix the path/name."
        )
    if version is None:
        version = latest
    elif not 0 <= version <= latest:
        raise StorageError(f"Table {ref.display!r} has no version {version}; latest is {latest}.")
    reader = spark.read.option("versionAsOf", int(version))
    return _load(reader, ref), int(version)


def table_schema(spark: SparkSession, ref: TableRef) -> T.StructType | None:
    """The current schema of the table, or None if it does not exist."""
    table = _delta_table(spark, ref)
    return None if table is None else table.toDF().schema


def _sql_literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(int(value))
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def replace_where_sql(replace_where: Mapping[str, str | int]) -> str:
    """``\\`run_id\\` = 'r1' AND ...`` from validated names and escaped literals."""
    check_replace_where(replace_where)
    return " AND ".join(f"`{c}` = {_sql_literal(v)}" for c, v in replace_where.items())


def write(spark: SparkSession, df: DataFrame, ref: TableRef, mode: str,
          replace_where: Mapping[str, str | int] | None) -> TableWrite:
    """One Delta Spark write; returns the version of the table after it."""
    current = table_schema(spark, ref)
    if current is not None and (mode == "append" or replace_where):
        problem = schema_mismatch(ref.display, current, df.schema)
        if problem:
            raise StorageError(problem)
    writer = df.write.format("delta").mode(mode)
    if replace_where:
        writer = writer.option("replaceWhere", replace_where_sql(replace_where))
    elif mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    if ref.catalog_name is not None:
        writer.saveAsTable(ref.catalog_name)
    else:
        writer.save(ref.path)
    version = _latest_version(spark, ref)
    return TableWrite(table=ref.display, version=int(version or 0), mode=mode, engine=ENGINE)
