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
    deleted.
    """
    keep = [id_col, *columns]
    added = changes.added.select(*keep)
    removed = changes.removed.select(*keep)
    changed = added.exceptAll(removed).select(id_col).distinct()
    left = removed.exceptAll(added).select(id_col).distinct()
    return NetChanges(changed, left.join(changed, id_col, "left_anti"))
