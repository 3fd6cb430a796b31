"""Embedded engine: Spark moves the data (Parquet), delta-rs owns the Delta log.

Read: delta-rs resolves the snapshot (optionally at a pinned version) to its list of live data
files and Spark reads exactly those Parquet files, with the table's schema.

Write (one Delta commit per call, nothing visible before it):

1. Spark writes Parquet into a fresh directory ``<table>/write-<uuid>/`` (a normal,
   non-hidden data directory: after the commit the files stay there, referenced by paths
   relative to the table root such as ``write-<uuid>/part-00000-....snappy.parquet``).
2. For every file: size and mtime from the filesystem, ``numRecords`` from the Parquet footer.
3. One delta-rs commit (``create_table_with_add_actions`` for a new table, else
   ``DeltaTable.create_write_transaction``) references the files, based on the snapshot read
   at step 0. An overwrite or replace must be the next version after that snapshot (delta-rs
   may not rebase it: it does not know what was read), so any concurrent commit makes it fail
   instead of being silently overwritten or duplicated; a blind append may be rebased.
4. On any failure before the commit succeeds the write directories are deleted; the log is
   untouched, so the table stays at its previous version. (A failure after the commit landed
   keeps them, since the table references them, and says that the commit landed. A killed
   driver can leave an unreferenced ``write-*`` directory; Delta VACUUM removes such files.)
5. A commit that loses a race with a concurrent writer (``CommitFailedError``, or the table
   created meanwhile) is retried on a fresh snapshot when it is logically independent of
   the winner: ``append`` (staged files reused) and ``replace_where`` (the replaced files and
   their kept rows are recomputed on the new snapshot). A plain ``overwrite`` is not retried.

Modes:
* ``append``: the data's schema must equal the table's (names and types; checked here, since
  delta-rs validates nothing for files it did not write), and NOT NULL columns get no nulls.
* ``overwrite``: every live file is removed in the same commit; the schema may change.
* ``overwrite`` + ``replace_where={"run_id": "r1"}`` (idempotent re-runs): all new rows must
  match the predicate; the live files holding matching rows are found with one Spark query,
  their non-matching rows are copied into the write directory, and the commit removes those
  files and adds the new ones (copy-on-write, like Delta's ``replaceWhere``). Works on
  unpartitioned tables of any layout, so no partitioning scheme is imposed on output tables.

Only local paths (and ``file://`` URIs) are supported here; partitioned tables can be read (the
partition columns are not returned) but not written; tables needing reader/writer features this
file-level access would ignore (deletion vectors, column mapping, constraints...) are refused.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    RemoveAction,
    create_table_with_add_actions,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql import types as T  # noqa: N812
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from mmgmm_spark.storage.changes import ADDED_FILES, TableChanges
from mmgmm_spark.storage.tables import (
    StorageError,
    TableRef,
    TableWrite,
    replace_predicate,
    schema_mismatch,
)

log = logging.getLogger(__name__)

ENGINE = "delta-rs"
WRITE_ID_KEY = "mmgmm.writeId"
# Table features that reading/writing whole Parquet files does not have to honour.
_SAFE_READER_FEATURES = {"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"}
_SAFE_WRITER_FEATURES = _SAFE_READER_FEATURES | {"appendOnly"}
PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
GLOB_CHARACTERS = re.compile(r"([\[\]{}?*])")
COMMIT_ATTEMPTS = 8
"""Commits tried per write when concurrent writers win the race (see step 5 above)."""


class _CommitConflictError(Exception):
    """A retryable lost race: the snapshot the commit was based on is no longer current."""


def _local(ref: TableRef) -> str:
    if ref.catalog_name is not None:
        raise StorageError(
            f"Table {ref.display!r} is a catalog name, which needs Spark's Delta (the "
            "delta-spark engine); with the embedded delta-rs engine give a path instead "
            "(e.g. ./tables/image), or configure Delta Lake in the Spark session."
        )
    if ref.local_path is None:
        raise StorageError(
            f"Table {ref.display!r}: the delta-rs engine here handles local paths and file:// "
            "URIs only; use the delta-spark engine for remote storage."
        )
    if "\\" in ref.local_path:
        raise StorageError(
            f"Table {ref.display!r}: the path contains a backslash, which delta-rs reads as a "
            "directory separator; rename the directory or use the delta-spark engine."
        )
    if PERCENT_ESCAPE.search(ref.local_path):
        raise StorageError(
            f"Table {ref.display!r}: the path contains a %XX sequence, which delta-rs decodes "
            "(it would use another directory); rename the directory or use the delta-spark "
            "engine."
        )
    return ref.local_path


def _is_delta(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "_delta_log"))


def _open(ref: TableRef, version: int | None = None) -> DeltaTable:
    root = _local(ref)
    if not _is_delta(root):
        raise StorageError(
            f"Delta table {ref.display!r} not found (no _delta_log in {root}); write it first "
            "(`mmgmm ingest` writes the modality tables, `mmgmm score` the scores table) or "
            "fix the path."
        )
    try:
        latest = DeltaTable(root)
        if version is None or version == latest.version():
            return latest
        if not 0 <= version <= latest.version():
            raise StorageError(
                f"Table {ref.display!r} has no version {version}; versions are 0.."
                f"{latest.version()}."
            )
        return DeltaTable(root, version=version)
    except DeltaError as exc:
        raise StorageError(f"Cannot open Delta table {ref.display!r}: {exc}") from exc


def _check_protocol(dt: DeltaTable, ref: TableRef, writing: bool) -> None:
    protocol = dt.protocol()
    reader = set(protocol.reader_features or [])
    writer = set(protocol.writer_features or [])
    bad: set[str] = set()
    if protocol.min_reader_version == 2:
        bad.add("columnMapping")
    bad |= reader - _SAFE_READER_FEATURES
    if writing:
        if protocol.min_writer_version > 2 and protocol.min_writer_version != 7:
            bad.add(f"writer version {protocol.min_writer_version}")
        bad |= writer - _SAFE_WRITER_FEATURES
        if dt.metadata().partition_columns:
            bad.add(f"partitioning by {dt.metadata().partition_columns}")
        if any("delta.invariants" in field.metadata for field in dt.schema().fields):
            bad.add("column invariants")
    if bad:
        action = "written" if writing else "read"
        raise StorageError(
            f"Table {ref.display!r} uses {sorted(bad)}, which the embedded delta-rs engine "
            f"cannot honour when it is {action}; use the delta-spark engine for this table."
        )


def _spark_schema(dt: DeltaTable) -> T.StructType:
    """The table's data-file columns (partition columns excluded) as a Spark schema."""
    partitions = set(dt.metadata().partition_columns)
    schema = from_arrow_schema(pa.schema(dt.schema().to_arrow()))
    return T.StructType([f for f in schema.fields if f.name not in partitions])


def read(spark: SparkSession, ref: TableRef, version: int | None) -> tuple[DataFrame, int]:
    """The snapshot's live Parquet files read by Spark, and the version they belong to."""
    dt = _open(ref, version)
    _check_protocol(dt, ref, writing=False)
    return _read_files(spark, dt, [f.local for f in _live_files(dt, _local(ref))]), dt.version()


def changes(spark: SparkSession, ref: TableRef, since: int, until: int) -> TableChanges:
    """The data files in the log at ``until`` but not at ``since`` (added) and the reverse
    (removed), read by Spark with their snapshot's schema: only the files that differ are
    read (delta-rs keeps no Change Data Feed here)."""
    old, new = _open(ref, since), _open(ref, until)
    _check_protocol(new, ref, writing=False)
    root = _local(ref)
    before = {f.log_path: f.local for f in _live_files(old, root)}
    after = {f.log_path: f.local for f in _live_files(new, root)}
    added = [local for path, local in after.items() if path not in before]
    removed = [local for path, local in before.items() if path not in after]
    return TableChanges(_read_files(spark, new, added), _read_files(spark, old, removed),
                        ADDED_FILES, ref.display, since, until)


@dataclass(frozen=True)
class _LiveFile:
    log_path: str  # as in the add action: relative to the table root, URI-encoded
    size: int
    local: str  # the file on disk


def _live_files(dt: DeltaTable, root: str) -> list[_LiveFile]:
    """Live data files of the snapshot (``file_uris()`` mis-encodes paths with special chars)."""
    table = pa.table(dt.get_add_actions(flatten=True)).select(["path", "size_bytes"])
    return [_LiveFile(r["path"], r["size_bytes"], _data_file(root, r["path"]))
            for r in table.to_pylist()]


def _data_file(root: str, path: str) -> str:
    """The local file of an add action's ``path``: relative to the table root, or (shallow
    clones) an absolute ``file:`` URI."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme:
        raise StorageError(f"Data file {path!r} is not local; use the delta-spark engine.")
    return os.path.join(root, unquote(path))


def _read_files(spark: SparkSession, dt: DeltaTable, files: list[str]) -> DataFrame:
    """Spark reads local Parquet ``files`` with the table's schema (unencoded file:// paths)."""
    schema = _spark_schema(dt)
    if not files:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*map(_file_uri, files))


def _file_uri(local: str) -> str:
    """The URI under which Spark reads exactly the local file ``local``: Spark expands
    ``[ ] { } ? *`` in the paths it reads as patterns, so they are escaped."""
    return "file://" + GLOB_CHARACTERS.sub(r"\\\1", local)


def _staged_uris(root: str, adds: list[AddAction]) -> list[str]:
    return [_file_uri(os.path.join(root, a.path)) for a in adds]


def _local_file(uri: str) -> str:
    """Spark's ``_metadata.file_path`` (``file:/a%20b/c``) -> the file on disk (``/a b/c``)."""
    return os.path.normpath(unquote(urlparse(uri).path))


# ----------------------------------------------------------------------------- writing


def _stage(df: DataFrame, root: str, directory: str) -> list[AddAction]:
    """Write ``df`` as Parquet into ``root/directory``; one AddAction per non-empty file."""
    target = os.path.join(root, directory)
    # "error", not its alias "errorifexists": Spark Connect refuses the alias
    df.write.mode("error").parquet("file://" + target)
    actions = []
    for name in sorted(os.listdir(target)):
        path = os.path.join(target, name)
        if name.startswith(("_", ".")) or not name.endswith(".parquet"):
            if os.path.isfile(path):  # Spark's _SUCCESS marker and .crc checksum files
                os.remove(path)
            continue
        rows = pq.read_metadata(path).num_rows
        if rows == 0:  # Spark writes header-only files for empty partitions
            os.remove(path)
            continue
        stat = os.stat(path)
        actions.append(AddAction(
            path=f"{directory}/{name}", size=stat.st_size, partition_values={},
            modification_time=int(stat.st_mtime * 1000), data_change=True,
            stats=json.dumps({"numRecords": rows}),
        ))
    if not actions:
        shutil.rmtree(target)
    return actions


def _arrow_schema(df: DataFrame, ref: TableRef) -> pa.Schema:
    try:
        # Delta stores timestamps as UTC instants (Spark writes them so in Parquet)
        return to_arrow_schema(df.schema, timezone="UTC")
    except Exception as exc:
        raise StorageError(
            f"Table {ref.display!r}: the data's schema {df.schema.simpleString()} has a type "
            f"Delta/Arrow cannot store ({exc})."
        ) from exc


def write(spark: SparkSession, df: DataFrame, ref: TableRef, mode: str,
          replace_where: Mapping[str, str | int] | None) -> TableWrite:
    """Write ``df`` to a local Delta table in one delta-rs commit (see the module docstring)."""
    root = _local(ref)
    dt = _open(ref) if _check_writable_location(ref, root) else None
    arrow_schema = _arrow_schema(df, ref)
    _check_target(dt, ref, df, mode, replace_where)
    _check_replace_columns(df, ref, replace_where)
    write_id = uuid.uuid4().hex
    directories = [f"write-{write_id}", f"write-{write_id}-kept"]
    try:
        adds = _stage(df, root, directories[0])
        if replace_where:
            _check_rows_match(spark, root, adds, ref, replace_where)
        n_added, removed = _commit_with_retries(spark, dt, ref, df, adds, arrow_schema, mode,
                                                replace_where, write_id)
    except BaseException as exc:
        _undo_failed_write(exc, ref, root, dt, write_id, directories)
        raise
    version = _landed_version(root, write_id)
    version = DeltaTable(root).version() if version is None else version
    log.info("table %s: %s commit version %d (+%d files, -%d files)", ref.display,
             "replace" if replace_where else mode, version, n_added, removed)
    return TableWrite(table=ref.display, version=version, mode=mode, engine=ENGINE,
                      files_added=n_added, files_removed=removed)


def _check_writable_location(ref: TableRef, root: str) -> bool:
    """True if ``root`` is a Delta table; False if it is absent or holds only staging."""
    if _is_delta(root):
        return True
    if os.path.isdir(root) and not all(
            name.startswith("write-") for name in os.listdir(root)):  # others' staging is fine
        raise StorageError(
            f"{ref.display!r} is a non-empty directory but not a Delta table (no _delta_log); "
            "choose another path or remove the directory."
        )
    return False


def _check_replace_columns(df: DataFrame, ref: TableRef,
                           replace_where: Mapping[str, str | int] | None) -> None:
    missing = [c for c in replace_where or {} if c not in df.columns]
    if missing:
        raise StorageError(
            f"replace_where columns {missing} are not columns of the data written to "
            f"{ref.display!r} (columns: {df.columns})."
        )


def _commit_with_retries(spark: SparkSession, dt: DeltaTable | None, ref: TableRef,
                         df: DataFrame, adds: list[AddAction], arrow_schema: pa.Schema,
                         mode: str, replace_where: Mapping[str, str | int] | None,
                         write_id: str) -> tuple[int, int]:
    """:func:`_commit`, retried on a fresh snapshot after a lost race (module docstring, 5)."""
    root = _local(ref)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return _commit(spark, dt, ref, root, adds, arrow_schema, mode, replace_where,
                           write_id)
        except _CommitConflictError as conflict:
            if (attempt == COMMIT_ATTEMPTS or (mode == "overwrite" and not replace_where)
                    or _landed_version(root, write_id) is not None):
                raise conflict.__cause__ from None
            log.info("table %s: concurrent commit won (attempt %d), retrying on a fresh "
                     "snapshot: %s", ref.display, attempt, conflict.__cause__)
            time.sleep(random.uniform(0.05, 0.2) * attempt)
            dt = _open(ref)
            _check_target(dt, ref, df, mode, replace_where)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _undo_failed_write(exc: BaseException, ref: TableRef, root: str, dt: DeltaTable | None,
                       write_id: str, directories: list[str]) -> None:
    """After ``exc``: delete the staged files unless the commit landed; raise a StorageError
    saying which (the caller re-raises ``exc`` itself when this returns)."""
    try:
        landed = _landed_version(root, write_id)
    except DeltaError as unreadable:  # cannot tell whether it landed: keep the files
        raise StorageError(
            f"Write to table {ref.display!r} failed ({exc}) and its log cannot be read "
            f"({unreadable}); the staged write-{write_id} files are kept.") from exc
    if landed is not None:  # failed after its commit: the files are the table's now
        if isinstance(exc, Exception):
            raise StorageError(
                f"Table {ref.display!r}: the write was committed as version {landed}, "
                f"then failed: {exc}") from exc
        return
    for directory in directories:
        shutil.rmtree(os.path.join(root, directory), ignore_errors=True)
    if dt is None and os.path.isdir(root) and not os.listdir(root):
        os.rmdir(root)
    if isinstance(exc, DeltaError):
        start = f"was at version {dt.version()}" if dt is not None else "did not exist"
        raced = (" because another writer committed to the table meanwhile (re-run the "
                 "write once the other one is done)"
                 if isinstance(exc, CommitFailedError) else "")
        raise StorageError(
            f"Commit to table {ref.display!r} failed{raced}, nothing was committed and the "
            f"staged files were deleted (the table {start} when the write started): {exc}"
        ) from exc


def _check_target(dt: DeltaTable | None, ref: TableRef, df: DataFrame, mode: str,
                  replace_where: Mapping[str, str | int] | None) -> None:
    """The existing table's protocol and (for appends and replaces) schema accept ``df``."""
    if dt is None:
        return
    _check_protocol(dt, ref, writing=True)
    if mode == "append" or replace_where:
        problem = schema_mismatch(ref.display, _spark_schema(dt), df.schema)
        if problem:
            raise StorageError(problem)


def _commit(spark: SparkSession, dt: DeltaTable | None, ref: TableRef, root: str,
            adds: list[AddAction], arrow_schema: pa.Schema, mode: str,
            replace_where: Mapping[str, str | int] | None, write_id: str) -> tuple[int, int]:
    """One commit attempt based on snapshot ``dt``: (files added, files removed).

    Raises :class:`_CommitConflictError` (the DeltaError as ``__cause__``) when a concurrent commit
    made the snapshot stale or created the table first.
    """
    removes: list[RemoveAction] = []
    if dt is not None and (mode == "append" or replace_where):
        _check_not_null(spark, root, adds, ref, dt)
    if replace_where and dt is not None:
        kept_dir = f"write-{write_id}-kept"
        shutil.rmtree(os.path.join(root, kept_dir), ignore_errors=True)  # a previous attempt's
        kept, removes = _rewrite_replaced(spark, dt, root, kept_dir, replace_where)
        adds = [*adds, *kept]
    removed = len(removes)
    # A blind append may be rebased by delta-rs onto commits that landed meanwhile. An
    # overwrite or replace read the snapshot: delta-rs would rebase it too (it knows nothing
    # of what was read), so it must fail instead and be recomputed on the new snapshot.
    rebase = None if mode == "append" else 0
    properties = CommitProperties(custom_metadata={WRITE_ID_KEY: write_id},
                                  max_commit_retries=rebase)
    try:
        if dt is None:
            create_table_with_add_actions(root, DeltaSchema.from_arrow(arrow_schema), adds,
                                          mode="error", commit_properties=properties)
        elif mode == "overwrite" and not replace_where:
            removed = len(_live_files(dt, root))  # delta-rs derives the removes itself
            dt.create_write_transaction(adds, mode="overwrite", schema=arrow_schema,
                                        commit_properties=properties)
        else:
            dt.create_write_transaction([*adds, *removes], mode="append", schema=dt.schema(),
                                        commit_properties=properties)
    except DeltaError as exc:
        if isinstance(exc, CommitFailedError) or (dt is None and _is_delta(root)):
            raise _CommitConflictError() from exc
        raise
    return len(adds), removed


def _check_rows_match(spark: SparkSession, root: str, adds: list[AddAction], ref: TableRef,
                      replace_where: Mapping[str, str | int]) -> None:
    """Every new row must satisfy ``replace_where`` (reads only those columns, from Parquet)."""
    if not adds:
        return
    staged = spark.read.parquet(*_staged_uris(root, adds)).select(*replace_where)
    bad = staged.where(~replace_predicate(replace_where)).count()
    if bad:
        raise StorageError(
            f"Table {ref.display!r}: {bad} rows of the data do not satisfy replace_where "
            f"{dict(replace_where)}; a replace may only write rows it replaces."
        )


def _check_not_null(spark: SparkSession, root: str, adds: list[AddAction], ref: TableRef,
                    dt: DeltaTable) -> None:
    """The new rows have no null in the table's top-level NOT NULL columns (Delta's own
    check; NOT NULL fields nested in structs are not checked)."""
    required = [f.name for f in dt.schema().fields if not f.nullable]
    if not adds or not required:
        return
    staged = spark.read.parquet(*_staged_uris(root, adds))
    counts = staged.select([F.count_if(F.col(_quoted(c)).isNull()) for c in required]).first()
    nulls = {c: n for c, n in zip(required, counts, strict=True) if n}
    if nulls:
        raise StorageError(
            f"Table {ref.display!r}: NOT NULL column(s) would receive nulls "
            f"({', '.join(f'{c}: {n} rows' for c, n in nulls.items())}); drop or fill those "
            "rows first."
        )


def _quoted(column: str) -> str:
    """A top-level column name for F.col, whatever characters (dots) it holds."""
    return "`" + column.replace("`", "``") + "`"


def _rewrite_replaced(spark: SparkSession, dt: DeltaTable, root: str, directory: str,
                      replace_where: Mapping[str, str | int]
                      ) -> tuple[list[AddAction], list[RemoveAction]]:
    """Files of the snapshot holding matching rows -> removes; their other rows -> new files."""
    live_files = _live_files(dt, root)
    if not live_files:
        return [], []
    predicate = replace_predicate(replace_where)
    live = _read_files(spark, dt, [f.local for f in live_files])
    files_with_hits = live.where(predicate).agg(F.collect_set("_metadata.file_path")).first()[0]
    hit_files = {_local_file(uri) for uri in files_with_hits}
    hits = [f for f in live_files if os.path.normpath(f.local) in hit_files]
    if len(hits) != len(hit_files):
        raise StorageError(
            f"Internal error: could not map the files holding replaced rows to the Delta log "
            f"of {dt.table_uri} ({len(hit_files)} files, {len(hits)} matched)."
        )
    now = int(time.time() * 1000)
    removes = [RemoveAction(path=f.log_path, data_change=True, deletion_timestamp=now,
                            size=f.size, partition_values={}) for f in hits]
    kept = _read_files(spark, dt, [f.local for f in hits]).where(~predicate)
    return _stage(kept, root, directory), removes


def _landed_version(root: str, write_id: str) -> int | None:
    """The version whose commitInfo carries ``write_id`` (robust to concurrent commits), or
    None if no recent commit does (or there is no log yet)."""
    if not _is_delta(root):
        return None
    for entry in DeltaTable(root).history(limit=50):
        if entry.get(WRITE_ID_KEY) == write_id:
            return int(entry["version"])
    return None


class DeltaRsEngine:
    """The embedded engine (``Engine`` protocol): runs in any session, local paths only."""

    name = ENGINE

    def available(self, spark: SparkSession) -> bool:
        return True

    def unavailable_reason(self) -> str:
        return "The delta-rs engine is always available."

    def read(self, spark: SparkSession, ref: TableRef,
             version: int | None) -> tuple[DataFrame, int]:
        return read(spark, ref, version)

    def write(self, spark: SparkSession, df: DataFrame, ref: TableRef, mode: str,
              replace_where: Mapping[str, str | int] | None) -> TableWrite:
        return write(spark, df, ref, mode, replace_where)

    def changes(self, spark: SparkSession, ref: TableRef, since: int,
                until: int) -> TableChanges:
        return changes(spark, ref, since, until)


DELTA_RS = DeltaRsEngine()
