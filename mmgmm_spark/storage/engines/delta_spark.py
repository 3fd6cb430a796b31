"""Delta Lake's Spark connector (``format("delta")``): Databricks and clusters with the Delta
package (``mmgmm_spark.spark.session.delta_package()`` names the artifact).

Delta Spark is transactional itself; this module only maps the shared interface onto it:

* time travel with ``versionAsOf`` at an explicitly resolved version (so the version returned
  is exactly the one read);
* our schema check before appends and replaces (the same message as delta-rs), and Delta's
  NOT NULL check turned into a :class:`StorageError` naming the table;
* ``replaceWhere`` for idempotent re-runs, its predicate built from validated column names and
  quoted literals;
* every write tagged with a unique id in the commit's ``userMetadata``: the version reported is
  the one whose ``commitInfo`` carries it (found in the table's history), never "the latest",
  which a concurrent writer may have moved on;
* a commit that loses a race (one of ``delta.exceptions``' conflict exceptions) is re-run when
  that is safe (an append, or a replace, which Delta recomputes on the new snapshot); a plain
  overwrite is not, and fails with an error saying another writer won. Delta's own commit is
  atomic, so a failed job leaves the table as it was.

Works under Spark Connect, also without Delta Connect's server plugins: table history and
versions come from ``DESCRIBE HISTORY`` (SQL), not ``delta.tables.DeltaTable``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
import uuid
from collections.abc import Mapping

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, DataFrameReader, DataFrameWriter, Row, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql import types as T  # noqa: N812

from mmgmm_spark.storage.changes import (
    ADDED_FILES,
    CHANGE_DATA_FEED,
    SNAPSHOTS,
    TableChanges,
)
from mmgmm_spark.storage.tables import (
    StorageError,
    TableRef,
    TableWrite,
    check_replace_where,
    schema_mismatch,
)

log = logging.getLogger(__name__)

ENGINE = "delta-spark"
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
COMMIT_ATTEMPTS = 8
"""Commits tried per append or replace when concurrent writers win the race."""
HISTORY_SEARCHED = 50
"""Recent commits searched for this write's id (concurrent writers commit in between)."""


NOT_A_DELTA_TABLE = "DELTA_TABLE_ONLY_OPERATION"


def _history(spark: SparkSession, ref: TableRef, limit: int) -> list[Row] | None:
    """``(version, userMetadata)`` of the table's last ``limit`` commits, newest first; None
    if there is no such Delta table.

    ``DESCRIBE HISTORY`` needs only Delta's SQL extension, so it also works over Spark Connect
    on a server without Delta Connect's plugins (``delta.tables.DeltaTable`` needs them there).
    """
    if ref.catalog_name is not None and not spark.catalog.tableExists(ref.display):
        return None
    try:
        history = describe(spark, "HISTORY", ref, f"LIMIT {int(limit)}")
        return history.select("version", "userMetadata").collect()
    except AnalysisException as exc:
        if exc.getCondition() == NOT_A_DELTA_TABLE:
            return None
        raise


def sql_name(ref: TableRef) -> str:
    """The table in SQL: its catalog name (validated and quoted by ``resolve_table``), or
    ``delta.`path``` with the path's backticks doubled."""
    if ref.catalog_name is not None:
        return ref.catalog_name
    return "delta.`" + ref.path.replace("`", "``") + "`"


def describe(spark: SparkSession, command: str, ref: TableRef, suffix: str = "") -> DataFrame:
    """``DESCRIBE HISTORY|DETAIL <table> <suffix>``: the only SQL text besides replaceWhere,
    from a fixed command, :func:`sql_name` and an integer limit."""
    if command not in ("HISTORY", "DETAIL"):
        raise ValueError(f"describe: unknown command {command!r}")
    return spark.sql(f"DESCRIBE {command} {sql_name(ref)} {suffix}")  # validated SQL text


def _latest_version(spark: SparkSession, ref: TableRef) -> int | None:
    history = _history(spark, ref, 1)
    return None if history is None else int(history[0]["version"])


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


CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
_FILE_LEVEL_UNSAFE = {"delta.enableDeletionVectors": "true"}
"""Table properties under which a data file's rows are not the table's rows."""


def changes(spark: SparkSession, ref: TableRef, since: int, until: int) -> TableChanges:
    """Change Data Feed rows when the table records them for ``since + 1 .. until``; else
    the data files added and removed between the two snapshots (their Parquet read
    directly); else, for tables whose files are not plain rows (deletion vectors, column
    mapping, partitions), the two snapshots whole."""
    read(spark, ref, None)  # raises the not-found error
    detail = describe(spark, "DETAIL", ref).select("properties", "partitionColumns").first()
    properties = dict(detail["properties"] or {})
    if properties.get("delta.enableChangeDataFeed", "").lower() == "true":
        feed = _change_feed(spark, ref, since, until)
        if feed is not None:
            return feed
    old, _ = read(spark, ref, since)
    new, _ = read(spark, ref, until)
    unsafe = detail["partitionColumns"] or properties.get(
        "delta.columnMapping.mode", "none") != "none" or any(
        properties.get(key, "").lower() == value for key, value in _FILE_LEVEL_UNSAFE.items())
    if unsafe:
        return TableChanges(new, old, SNAPSHOTS, ref.display, since, until)
    before, after = set(old.inputFiles()), set(new.inputFiles())
    return TableChanges(_files(spark, new, sorted(after - before)),
                        _files(spark, old, sorted(before - after)), ADDED_FILES,
                        ref.display, since, until)


def _files(spark: SparkSession, snapshot: DataFrame, files: list[str]) -> DataFrame:
    """The rows of some of ``snapshot``'s data files, with its schema."""
    if not files:
        return spark.createDataFrame([], snapshot.schema)
    return spark.read.schema(snapshot.schema).parquet(*files)


def _change_feed(spark: SparkSession, ref: TableRef, since: int,
                 until: int) -> TableChanges | None:
    """The feed's post-images and inserts (added) and pre-images and deletes (removed);
    None when the feed does not cover the versions (enabled after ``since``)."""
    reader = (spark.read.format("delta").option("readChangeFeed", "true")
              .option("startingVersion", since + 1).option("endingVersion", until))
    feed = _load(reader, ref)
    try:
        feed.limit(1).collect()
    except Exception as exc:  # versions before the feed was enabled
        if "DELTA_MISSING_CHANGE_DATA" not in str(exc):
            raise
        log.info("table %s: no change data feed for versions %d..%d, reading the log's "
                 "files", ref.display, since + 1, until)
        return None
    kind = F.col("_change_type")
    data = [c for c in feed.columns if c not in CDF_COLUMNS]
    added = feed.where(kind.isin("insert", "update_postimage")).select(*data)
    removed = feed.where(kind.isin("delete", "update_preimage")).select(*data)
    return TableChanges(added, removed, CHANGE_DATA_FEED, ref.display, since, until)


def table_schema(spark: SparkSession, ref: TableRef) -> T.StructType | None:
    """The current schema of the table, or None if it does not exist."""
    if _latest_version(spark, ref) is None:
        return None
    return _load(spark.read, ref).schema


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
    """One Delta Spark commit, retried where safe; returns the version it committed."""
    write_id = uuid.uuid4().hex
    retry = mode == "append" or bool(replace_where)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        _check_schema(spark, df, ref, mode, replace_where)
        try:
            _save(_writer(df, mode, replace_where, write_id), ref)
            break
        except Exception as exc:
            if not _is_lost_race(exc):
                _raise_storage_error(exc, ref, replace_where)
                raise
            if not retry or attempt == COMMIT_ATTEMPTS:
                raise StorageError(
                    f"Commit to table {ref.display!r} failed because another writer committed "
                    "to the table meanwhile (re-run the write once the other one is done); "
                    f"nothing was committed: {_first_line(exc)}") from exc
            log.info("table %s: concurrent commit won (attempt %d), retrying: %s",
                     ref.display, attempt, _first_line(exc))
            time.sleep(random.uniform(0.05, 0.2) * attempt)
    version = committed_version(spark, ref, write_id)
    log.info("table %s: %s commit version %d", ref.display,
             "replace" if replace_where else mode, version)
    return TableWrite(table=ref.display, version=version, mode=mode, engine=ENGINE)


def _check_schema(spark: SparkSession, df: DataFrame, ref: TableRef, mode: str,
                  replace_where: Mapping[str, str | int] | None) -> None:
    """Appends and replaces keep the table's schema (checked before any job runs)."""
    if mode != "append" and not replace_where:
        return
    current = table_schema(spark, ref)
    if current is None:
        return
    problem = schema_mismatch(ref.display, current, df.schema)
    if problem:
        raise StorageError(problem)
    missing = [c for c in replace_where or {} if c not in df.columns]
    if missing:
        raise StorageError(
            f"replace_where columns {missing} are not columns of the data written to "
            f"{ref.display!r} (columns: {df.columns})."
        )


def _default_collation(df: DataFrame) -> DataFrame:
    """``df`` with its string columns cast to the plain ``string`` type.

    Over Spark Connect a schema sent by the client (e.g. ``mapInArrow``'s) carries strings as
    ``string collate UTF8_BINARY``, which Delta Spark writes into the table's schema as is and
    delta-rs cannot read; the cast keeps the values and writes ``string``.
    """
    strings = {f.name for f in df.schema.fields if isinstance(f.dataType, T.StringType)}
    if not strings:
        return df
    return df.select(*[F.col(c).cast("string").alias(c) if c in strings else F.col(c)
                       for c in df.columns])


def _writer(df: DataFrame, mode: str, replace_where: Mapping[str, str | int] | None,
            write_id: str) -> DataFrameWriter:
    writer = (_default_collation(df).write.format("delta").mode(mode)
              .option("userMetadata", write_id))
    if replace_where:
        return writer.option("replaceWhere", replace_where_sql(replace_where))
    if mode == "overwrite":
        return writer.option("overwriteSchema", "true")
    return writer


def _save(writer: DataFrameWriter, ref: TableRef) -> None:
    if ref.catalog_name is not None:
        writer.saveAsTable(ref.catalog_name)
    else:
        writer.save(ref.path)


def committed_version(spark: SparkSession, ref: TableRef, write_id: str) -> int:
    """The version whose ``commitInfo.userMetadata`` is ``write_id`` (this write's commit)."""
    history = _history(spark, ref, HISTORY_SEARCHED)
    found = next((row for row in history or [] if row["userMetadata"] == write_id), None)
    if found is None:
        raise StorageError(
            f"Table {ref.display!r}: the write {write_id} succeeded but its commit is not among "
            f"the last {HISTORY_SEARCHED} versions of the table's history."
        )
    return int(found["version"])


def _is_lost_race(exc: Exception) -> bool:
    import delta.exceptions

    # Delta's conflict classes do not share a Python base class: check them all.
    conflicts = tuple(getattr(delta.exceptions, name) for name in delta.exceptions.__all__)
    if isinstance(exc, conflicts):
        return True
    # Two first writes to an empty directory / a new catalog table: the loser sees the table
    # created meanwhile.
    text = str(exc)
    return any(key in text for key in ("DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED",
                                       "TABLE_OR_VIEW_ALREADY_EXISTS"))


def _raise_storage_error(exc: Exception, ref: TableRef,
                         replace_where: Mapping[str, str | int] | None) -> None:
    """Delta's NOT NULL and replaceWhere checks, as the StorageErrors delta-rs raises."""
    text = str(exc)
    if replace_where and "DELTA_VIOLATE_CONSTRAINT" in text:
        raise StorageError(
            f"Table {ref.display!r}: rows of the data do not satisfy replace_where "
            f"{dict(replace_where)}; a replace may only write rows it replaces. Nothing was "
            "committed."
        ) from exc
    if "DELTA_NOT_NULL_CONSTRAINT_VIOLATED" in text:
        raise StorageError(
            f"Table {ref.display!r}: NOT NULL column(s) would receive nulls "
            f"({_first_line(exc)}); drop or fill those rows first. Nothing was committed."
        ) from exc


def _first_line(exc: Exception) -> str:
    """Delta's own message (``[DELTA_...] ...``) inside a Py4J error, else its first line."""
    delta = re.search(r"\[DELTA_[A-Z_]+\][^\n]*", str(exc))
    return delta.group(0) if delta else (str(exc).strip().splitlines() or [repr(exc)])[0]


def has_delta_spark(spark: SparkSession) -> bool:
    """True when Spark's own Delta (``format("delta")``) is usable in this session.

    That is: ``spark.sql.extensions`` lists ``io.delta.sql.DeltaSparkSessionExtension`` (clusters
    started with the Delta package) or we run on Databricks, where Delta is built in. Only
    configuration is read, so this works under Spark Connect too.
    """
    if DELTA_EXTENSION in _conf(spark, "spark.sql.extensions"):
        return True
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    return bool(_conf(spark, "spark.databricks.clusterUsageTags.sparkVersion"))


def _conf(spark: SparkSession, key: str) -> str:
    try:
        return spark.conf.get(key, "") or ""
    except Exception:  # Spark Connect servers may refuse some keys; absent is the safe answer
        return ""


class DeltaSparkEngine:
    """Delta Lake's Spark connector (``Engine`` protocol): paths, URIs and catalog names."""

    name = ENGINE

    def available(self, spark: SparkSession) -> bool:
        return has_delta_spark(spark)

    def unavailable_reason(self) -> str:
        return (
            "engine='delta-spark' needs Delta Lake in the Spark session: start Spark with the "
            f"delta-spark package and spark.sql.extensions={DELTA_EXTENSION}, "
            f"spark.sql.catalog.spark_catalog={DELTA_CATALOG} (build_spark(..., delta=True) "
            "does this; or run on Databricks); otherwise use engine='delta-rs' (or 'auto') "
            "with a path."
        )

    def read(self, spark: SparkSession, ref: TableRef,
             version: int | None) -> tuple[DataFrame, int]:
        return read(spark, ref, version)

    def write(self, spark: SparkSession, df: DataFrame, ref: TableRef, mode: str,
              replace_where: Mapping[str, str | int] | None) -> TableWrite:
        return write(spark, df, ref, mode, replace_where)

    def changes(self, spark: SparkSession, ref: TableRef, since: int,
                until: int) -> TableChanges:
        return changes(spark, ref, since, until)


DELTA_SPARK = DeltaSparkEngine()
