"""What changed in a Delta table between two versions, as rows added and rows removed.

Each engine answers :meth:`Engine.changes` (``engines/``) with a :class:`TableChanges`: the
rows that entered and the rows that left the table between ``since`` and ``until``, read
from Delta's Change Data Feed (delta-spark, tables with ``delta.enableChangeDataFeed``), the
data files the log added and removed (both engines otherwise), or, where file-level reads
would be wrong (deletion vectors, column mapping, partitioning on delta-spark), the two
snapshots themselves. :func:`net_changes` turns any of them into the ids whose row is new or
different and the ids that left the table: the snapshot at ``until`` is the one at ``since``
minus the removed rows plus the added ones (as multisets, over any number of commits), so
``added EXCEPT ALL removed`` are exactly the rows of ``until`` not in ``since``. A file
rewritten with mostly unchanged rows (an UPDATE, a MERGE) therefore reports only the rows
that really differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

CHANGE_DATA_FEED = "change data feed"
ADDED_FILES = "added files"
SNAPSHOTS = "snapshots"


@dataclass(frozen=True)
class TableChanges:
    """Rows that entered (``added``) and left (``removed``) ``table`` between two versions.

    Attributes:
        added, removed: DataFrames with the table's columns (those of ``until`` and ``since``).
        method: ``CHANGE_DATA_FEED``, ``ADDED_FILES`` or ``SNAPSHOTS`` (what was read).
        table: the table as given.
        since, until: the versions compared (``since`` <= ``until``).
    """

    added: DataFrame
    removed: DataFrame
    method: str
    table: str
    since: int
    until: int


@dataclass(frozen=True)
class NetChanges:
    """Ids (one column, distinct) whose row is new or different, and ids no longer present."""

    changed: DataFrame
    deleted: DataFrame


def net_changes(changes: TableChanges, id_col: str, columns: list[str]) -> NetChanges:
    """The net effect of ``changes`` on the rows' ``id_col`` and ``columns`` (e.g. features).

    A row updated and later restored is not a change; an id removed and not re-added is
    deleted. One aggregation (what ``EXCEPT ALL`` does, done once for both directions): each
    distinct row's count in ``added`` minus its count in ``removed``; an id with a row of
    positive net count is changed, one with only negative ones deleted. Both results share
    that aggregation's shuffle, so the change sets are read once per query.
    """
    keep = [id_col, *columns]
    signed = changes.added.select(*keep, F.lit(1).alias("_n")).unionByName(
        changes.removed.select(*keep, F.lit(-1).alias("_n")))
    net = signed.groupBy(*keep).agg(F.sum("_n").alias("_n"))
    per_id = net.groupBy(id_col).agg(F.max("_n").alias("_up"), F.min("_n").alias("_down"))
    return NetChanges(per_id.where(F.col("_up") > 0).select(id_col),
                      per_id.where((F.col("_up") <= 0) & (F.col("_down") < 0)).select(id_col))
