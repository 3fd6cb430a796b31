"""Net row changes between two Delta versions, on both engines (storage/changes.py).

The expected ids are tracked here in Python; the tables are modified by Delta itself
(``deltalake``'s update/delete, Delta Spark's UPDATE/DELETE and Change Data Feed), not by our
code, so the file rewrites are the real ones.
"""

from __future__ import annotations

import pandas as pd
import pytest
from deltalake import DeltaTable

from mmgmm_spark.storage import net_changes, read_changes, write_table
from mmgmm_spark.storage.changes import ADDED_FILES, CHANGE_DATA_FEED, SNAPSHOTS

pytestmark = pytest.mark.spark

ENGINES = ["delta-rs", "delta-spark"]


def rows(spark, ids, offset: float = 0.0):
    pdf = pd.DataFrame({"id": list(ids), "features": [[float(i) + offset, 1.0] for i in ids]})
    return spark.createDataFrame(pdf, "id long, features array<double>").repartition(3)


def ids_of(df) -> set[int]:
    return {r[0] for r in df.collect()}


def _modify(spark, path: str, engine: str, updated: list[int], deleted: list[int]) -> None:
    """UPDATE ``updated`` ids (features + 100) and DELETE ``deleted`` with Delta's own tools."""
    if engine == "delta-rs":
        table = DeltaTable(path)
        table.update({"features": "make_array(features[1] + 100.0, features[2])"},
                     predicate=f"id in ({', '.join(map(str, updated))})")
        DeltaTable(path).delete(f"id in ({', '.join(map(str, deleted))})")
        return
    spark.sql(f"UPDATE delta.`{path}` SET features = array(features[0] + 100.0, features[1]) "
              f"WHERE id IN ({', '.join(map(str, updated))})")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE id IN ({', '.join(map(str, deleted))})")


@pytest.mark.parametrize("engine", ENGINES)
def test_updates_appends_and_deletes_give_exactly_the_changed_ids(delta_spark, engine,
                                                                  tmp_path):
    path = str(tmp_path / "t")
    v0 = write_table(delta_spark, rows(delta_spark, range(100)), path, mode="overwrite",
                     engine=engine).version
    v1 = write_table(delta_spark, rows(delta_spark, range(100, 110)), path,
                     engine=engine).version
    appended = read_changes(delta_spark, path, v0, v1, engine=engine)
    # only the files that differ are read: the appended rows, nothing removed
    assert (appended.added.count(), appended.removed.count()) == (10, 0)
    _modify(delta_spark, path, engine, updated=[3, 50, 77, 105], deleted=[10, 11, 106])
    # an update that restores a value is no change: 20 -> 20 + 100 -> back to 20
    _modify(delta_spark, path, engine, updated=[20], deleted=[12])
    spark_sql = ("array(features[0] - 100.0, features[1])" if engine == "delta-spark"
                 else "make_array(features[1] - 100.0, features[2])")
    if engine == "delta-rs":
        DeltaTable(path).update({"features": spark_sql}, predicate="id = 20")
    else:
        delta_spark.sql(f"UPDATE delta.`{path}` SET features = {spark_sql} WHERE id = 20")
    until = DeltaTable(path).version()

    changes = read_changes(delta_spark, path, v0, until, engine=engine)
    assert changes.method == ADDED_FILES
    net = net_changes(changes, "id", ["features"])
    assert ids_of(net.changed) == {3, 50, 77} | set(range(100, 110)) - {106}
    assert ids_of(net.deleted) == {10, 11, 12}

    same = net_changes(read_changes(delta_spark, path, until, until, engine=engine), "id",
                       ["features"])
    assert same.changed.count() == 0 and same.deleted.count() == 0


def test_change_data_feed_and_deletion_vectors_on_delta_spark(delta_spark, tmp_path):
    for name, prop, method in (("cdf", "delta.enableChangeDataFeed", CHANGE_DATA_FEED),
                               ("dv", "delta.enableDeletionVectors", SNAPSHOTS)):
        path = str(tmp_path / name)
        rows(delta_spark, range(50)).write.format("delta").option(prop.removeprefix(
            "delta."), "true").save(path)
        delta_spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('{prop}' = 'true')")
        since = DeltaTable(path).version()
        _modify(delta_spark, path, "delta-spark", updated=[1, 2], deleted=[3])
        changes = read_changes(delta_spark, path, since, DeltaTable(path).version(),
                               engine="delta-spark")
        assert changes.method == method
        net = net_changes(changes, "id", ["features"])
        assert (ids_of(net.changed), ids_of(net.deleted)) == ({1, 2}, {3})
