"""Storage layer: Delta tables through the embedded engine (Spark Parquet + delta-rs log).

References are independent of our reader: the numpy arrays we wrote, and ``deltalake`` reading
the table (or writing it with ``write_deltalake``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from mmgmm_spark.storage import (
    StorageError,
    check_ids,
    choose_engine,
    features_as_double,
    features_as_double_array,
    read_modality,
    read_table,
    resolve_table,
    write_modality_table,
    write_table,
)
from mmgmm_spark.storage.engines import delta_rs
from mmgmm_spark.storage.engines.delta_spark import replace_where_sql

pytestmark = pytest.mark.spark


def _frame(spark, rows: list[tuple], schema: str):
    """A small DataFrame built through pandas/Arrow (no Python worker needed)."""
    names = [part.split()[0] for part in schema.split(",")]
    return spark.createDataFrame(pd.DataFrame(rows, columns=names), schema)


def _arrays(read) -> tuple[np.ndarray, np.ndarray]:
    """(ids, features) of a TableRead, sorted by id."""
    pdf = read.df.toPandas().sort_values(read.df.columns[0])
    return pdf.iloc[:, 0].to_numpy(), np.stack(pdf.iloc[:, 1].to_numpy())


def _log_adds(path: Path) -> list[dict]:
    """The add actions of the live snapshot, from deltalake (not our code)."""
    return pa.table(DeltaTable(str(path)).get_add_actions(flatten=True)).to_pylist()


def _write_dirs(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.name.startswith("write-")}


# ----------------------------------------------------------------------------- no Spark needed


def test_resolve_table_paths_uris_and_catalog_names(tmp_path):
    ref = resolve_table(tmp_path / "t")
    assert ref.local_path == str(tmp_path / "t") and ref.path == f"file://{tmp_path}/t"
    assert resolve_table(f"file://{tmp_path}/t").local_path == str(tmp_path / "t")
    assert resolve_table("main.features.image").catalog_name == "`main`.`features`.`image`"
    assert resolve_table("s3://bucket/t").local_path is None
    for bad in ["main.features.image; DROP TABLE x", "a.b.c.d", "", "my table"]:
        with pytest.raises(StorageError):
            resolve_table(bad)


def test_replace_where_sql_quotes_values():
    sql = replace_where_sql({"run_id": "it's\\x", "fold": 3})
    assert sql == "`run_id` = 'it\\'s\\\\x' AND `fold` = 3"
    with pytest.raises(StorageError, match="plain column name"):
        replace_where_sql({"run_id = 1 OR 1": "x"})
    with pytest.raises(StorageError, match="string or an integer"):
        replace_where_sql({"run_id": 1.5})


# ----------------------------------------------------------------------------- engine choice


def test_engine_selection(spark, monkeypatch):
    assert choose_engine(spark) == "delta-rs"  # no Delta extension in this sandbox
    with monkeypatch.context() as patch:  # on Databricks, Delta is built in
        patch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
        assert choose_engine(spark) == "delta-spark"
    with pytest.raises(StorageError, match="spark.sql.extensions"):
        choose_engine(spark, "delta-spark")
    with pytest.raises(StorageError, match="Unknown storage engine"):
        choose_engine(spark, "iceberg")
    with pytest.raises(StorageError, match="catalog name.*path"):
        read_table(spark, "main.features.image")


# ----------------------------------------------------------------------------- round trips


def test_write_read_overwrite_append_and_time_travel(spark, tmp_path):
    path = tmp_path / "image"
    rng = np.random.default_rng(0)
    ids0 = np.array([f"e{i:03d}" for i in range(40)])
    x0 = rng.normal(size=(40, 3)).astype(np.float32)
    w0 = write_modality_table(spark, path, ids0, x0)
    assert (w0.version, w0.engine) == (0, "delta-rs")

    read0 = read_modality(spark, path)
    assert read0.version == 0 and read0.df.schema.simpleString() == \
        "struct<id:string,features:array<double>>"
    ids, x = _arrays(read0)
    np.testing.assert_array_equal(ids, ids0)
    np.testing.assert_array_equal(x, x0.astype(np.float64))  # float32 widened exactly

    # The log, as deltalake sees it: relative paths, real sizes, row counts.
    adds = _log_adds(path)
    assert all(not a["path"].startswith("/") and a["path"].startswith("write-") for a in adds)
    assert all(a["size_bytes"] == os.path.getsize(path / a["path"]) for a in adds)
    assert sum(a["num_records"] for a in adds) == 40
    arrow = DeltaTable(str(path)).to_pyarrow_table().sort_by("id")
    np.testing.assert_array_equal(np.stack(arrow["features"].to_numpy(zero_copy_only=False)),
                                  x0.astype(np.float64))

    ids1, x1 = np.array(["n1", "n2"]), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    w1 = write_modality_table(spark, path, ids1, x1)  # overwrite: removed files not read
    assert (w1.version, w1.files_removed) == (1, len(adds))
    read1 = read_modality(spark, path, check=False)
    assert read1.version == 1
    np.testing.assert_array_equal(_arrays(read1)[0], ids1)

    w2 = write_modality_table(spark, path, ["n3"], np.array([[7.0, 8.0, 9.0]]), mode="append")
    assert w2.version == 2
    ids, x = _arrays(read_modality(spark, path, check=False))
    np.testing.assert_array_equal(ids, ["n1", "n2", "n3"])
    np.testing.assert_array_equal(x, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 3

    pinned = read_modality(spark, path, version=0, check=False)  # time travel: the first snapshot
    assert pinned.version == 0
    np.testing.assert_array_equal(_arrays(pinned)[0], ids0)
    assert read_table(spark, f"file://{path}", version=1).version == 1
    with pytest.raises(StorageError, match="no version 7; versions are 0..2"):
        read_table(spark, path, version=7)


def test_reads_table_written_by_deltalake(spark, tmp_path):
    path = tmp_path / "text"
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    write_deltalake(str(path), pa.table({
        "entity": pa.array([4, 1, 3, 2], pa.int64()),
        "emb": pa.array(list(x), pa.list_(pa.float32())),
        "note": pa.array(["a", "b", "c", "d"]),
    }))
    read = read_modality(spark, path, id_col="entity", features_col="emb")
    assert read.version == 0 and read.df.columns == ["entity", "emb"]
    assert read.df.schema["entity"].dataType.simpleString() == "bigint"
    ids, feats = _arrays(read)
    np.testing.assert_array_equal(ids, [1, 2, 3, 4])
    np.testing.assert_array_equal(feats, x[[1, 3, 2, 0]].astype(np.float64))

    # Partitioned tables (Hive-style directories, URI-encoded in the log) can be read; the
    # partition columns are not returned; writing them is refused (we write unpartitioned).
    parted = tmp_path / "parted"
    write_deltalake(str(parted), pa.table({"id": ["a", "b"], "features": [[1.0], [2.0]],
                                           "day": ["2024-01-01 x", "50%"]}), partition_by=["day"])
    assert sorted(read_table(spark, parted).df.toPandas()["id"]) == ["a", "b"]
    with pytest.raises(StorageError, match="partitioning by \\['day'\\]"):
        write_table(spark, read.df, parted, mode="append")


def test_data_files_referenced_by_absolute_uri_are_read(spark, tmp_path):
    # As in shallow clones: the log names a file outside the table by its file:// URI.
    path, elsewhere = tmp_path / "clone", tmp_path / "source dir [1]"
    write_deltalake(str(path), pa.table({"id": ["a"], "features": [[1.0]]}))
    elsewhere.mkdir()
    commit = next((path / "_delta_log").glob("0*.json"))
    actions = [json.loads(line) for line in commit.read_text().splitlines()]
    for action in actions:
        if "add" in action:
            moved = elsewhere / action["add"]["path"]
            (path / action["add"]["path"]).rename(moved)
            action["add"]["path"] = moved.as_uri()
    commit.write_text("".join(json.dumps(a) + "\n" for a in actions))
    np.testing.assert_array_equal(_arrays(read_modality(spark, path))[1], [[1.0]])


def test_null_feature_vector_is_a_missing_modality(spark, tmp_path):
    from mmgmm_spark.spark.score import read_and_join

    write_deltalake(str(tmp_path / "a"), pa.table({"id": ["x", "y"], "features": [[1.0], [2.0]]}))
    write_deltalake(str(tmp_path / "b"), pa.table({"id": ["x", "y", "z"],
                                                   "features": [[3.0], None, None]}))
    joined, _ = read_and_join(spark, {m: str(tmp_path / m) for m in "ab"})
    rows = {r["id"]: (r["a"], r["b"]) for r in joined.collect()}
    assert rows == {"x": ([1.0], [3.0]), "y": ([2.0], None)}  # z: as if absent everywhere


def test_vector_features_are_converted(spark, tmp_path):
    from pyspark.ml.functions import array_to_vector

    dense = np.array([[1.0, 2.0, 0.0], [0.0, 5.0, 0.0]])
    arrays = _frame(spark, [("a", list(dense[0])), ("b", list(dense[1]))],
                    "id string, features array<double>")
    vectors = arrays.withColumn("features", array_to_vector("features"))
    converted = features_as_double_array(vectors, "memory", "features").toPandas()
    np.testing.assert_array_equal(np.stack(converted["features"]), dense)

    path = tmp_path / "vec"
    write_table(spark, vectors, path, mode="overwrite")
    # deltalake sees the vector's storage struct; our reader turns it back into arrays.
    assert DeltaTable(str(path)).to_pyarrow_table().schema.field("features").type.num_fields == 4
    np.testing.assert_array_equal(_arrays(read_modality(spark, path, check=False))[1], dense)

    # The same struct written by another engine, with a sparse vector (type 0) among them.
    struct = pa.array([
        {"type": 1, "size": None, "indices": None, "values": [1.0, 2.0, 0.0]},
        {"type": 0, "size": 3, "indices": [1], "values": [5.0]},
    ], pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                  ("values", pa.list_(pa.float64()))]))
    write_deltalake(str(tmp_path / "sparse"), pa.table({"id": ["a", "b"], "features": struct}))
    sparse = read_modality(spark, tmp_path / "sparse", check=False)
    np.testing.assert_array_equal(_arrays(sparse)[1], dense)


def test_one_converter_serves_storage_reads_and_spark_inputs(spark):
    """Storage reads and the Spark fit/score inputs accept the same types and refuse the same."""
    from mmgmm_spark.core.batch import DataValidationError
    from mmgmm_spark.spark.data import features_column

    frame = _frame(spark, [("a", [1, 2], "text")],
                   "id string, features array<int>, bad string")
    by_storage = frame.select(features_as_double(frame, "t", "features")).first()[0]
    by_spark = frame.select(features_column(frame, "features", "modality 'm'")).first()[0]
    assert by_storage == by_spark == [1.0, 2.0]
    with pytest.raises(StorageError, match=r"Table 't': column 'bad' has type string"):
        features_as_double(frame, "t", "bad")
    with pytest.raises(DataValidationError,
                       match=r"modality 'm': column 'bad' has type string"):
        features_column(frame, "bad", "modality 'm'")


# ----------------------------------------------------------------------------- transactions


def test_failures_leave_table_unchanged(spark, tmp_path, monkeypatch):
    from pyspark.sql import functions as F  # noqa: N812

    path = tmp_path / "t"
    write_modality_table(spark, path, ["a", "b"], np.eye(2))
    dirs_before = _write_dirs(path)

    def broken_commit(*args, **kwargs):
        raise CommitFailedError("concurrent commit")

    with monkeypatch.context() as patch:
        patch.setattr(DeltaTable, "create_write_transaction", broken_commit)
        with pytest.raises(StorageError, match="nothing was committed.*version 0.*concurrent"):
            write_modality_table(spark, path, ["c"], np.ones((1, 2)), mode="append")

    df = _frame(spark, [("c", [1.0, 1.0])], "id string, features array<double>")
    failing = df.withColumn("features", F.when(F.col("id") == "c", F.raise_error(F.lit("boom")))
                            .otherwise(F.col("features")).cast("array<double>"))
    with pytest.raises(Exception, match="boom"):
        write_table(spark, failing, path, mode="overwrite")

    assert DeltaTable(str(path)).version() == 0
    assert DeltaTable(str(path)).to_pyarrow_table().num_rows == 2
    assert _write_dirs(path) == dirs_before  # staged files deleted
    np.testing.assert_array_equal(_arrays(read_modality(spark, path, check=False))[0],
                                  ["a", "b"])


def test_failure_after_the_commit_keeps_the_committed_files(spark, tmp_path, monkeypatch):
    path = tmp_path / "t"
    write_modality_table(spark, path, ["a"], np.eye(1))
    commit = DeltaTable.create_write_transaction

    def commit_then_fail(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        raise CommitFailedError("post-commit hook failed")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", commit_then_fail)
    with pytest.raises(StorageError, match="committed as version 1, then failed"):
        write_modality_table(spark, path, ["b"], np.ones((1, 1)), mode="append")
    monkeypatch.undo()
    assert _write_dirs(path) == {a["path"].split("/")[0] for a in _log_adds(path)}
    np.testing.assert_array_equal(_arrays(read_modality(spark, path, check=False))[0],
                                  ["a", "b"])


def test_nulls_in_not_null_columns_are_rejected(spark, tmp_path):
    path = tmp_path / "t"
    required = pa.schema([pa.field("entity.id", pa.int64(), nullable=False),
                          pa.field("features", pa.list_(pa.float64()))])
    write_deltalake(str(path), pa.table({"entity.id": [1], "features": [[1.0]]},
                                        schema=required))
    rows = spark.createDataFrame(pd.DataFrame({"entity.id": [None, 3], "features": [[2.0], [3.0]]}),
                                 "`entity.id` long, features array<double>")
    with pytest.raises(StorageError,
                       match=r"NOT NULL column\(s\) would receive nulls \(entity.id: 1 "):
        write_table(spark, rows, path, mode="append")
    assert DeltaTable(str(path)).version() == 0 and not _write_dirs(path)
    write_table(spark, rows.where("`entity.id` IS NOT NULL"), path, mode="append")
    assert _rows(path) == [(1, [1.0]), (3, [3.0])]


def test_schema_mismatch_on_append_is_rejected(spark, tmp_path):
    path = tmp_path / "t"
    write_modality_table(spark, path, [1, 2], np.eye(2))
    other = _frame(spark, [("x", [1.0], 0)], "id string, features array<double>, k int")
    with pytest.raises(StorageError) as err:
        write_table(spark, other, path, mode="append")
    message = str(err.value)
    assert str(path) in message and "unexpected columns ['k']" in message
    assert "column 'id' is string but the table has bigint" in message
    assert DeltaTable(str(path)).version() == 0 and _write_dirs(path) == {
        a["path"].split("/")[0] for a in _log_adds(path)}


def test_replace_where_is_idempotent(spark, tmp_path):
    # Characters that need URI encoding in the log, and that Spark reads as patterns.
    path = tmp_path / "scores #1 50% [a]{b,c}?*"
    schema = "run_id string, id string, score double"
    # One file holding two runs: replacing r1 must keep r2's rows of that file.
    both = _frame(spark, [("r1", "a", 1.0), ("r2", "a", 2.0), ("r2", "b", 3.0)], schema)
    write_table(spark, both.coalesce(1), path, mode="overwrite")

    rerun = _frame(spark, [("r1", "a", 10.0), ("r1", "b", 20.0)], schema)
    for _ in range(2):
        result = write_table(spark, rerun, path, mode="overwrite", replace_where={"run_id": "r1"})
        assert result.files_removed >= 1
    rows = sorted(DeltaTable(str(path)).to_pyarrow_table().to_pylist(),
                  key=lambda r: (r["run_id"], r["id"]))
    assert [(r["run_id"], r["id"], r["score"]) for r in rows] == [
        ("r1", "a", 10.0), ("r1", "b", 20.0), ("r2", "a", 2.0), ("r2", "b", 3.0)]
    version, dirs = DeltaTable(str(path)).version(), _write_dirs(path)

    wrong = _frame(spark, [("r1", "c", 1.0), ("r3", "c", 1.0)], schema)
    with pytest.raises(StorageError, match="1 rows of the data do not satisfy replace_where"):
        write_table(spark, wrong, path, mode="overwrite", replace_where={"run_id": "r1"})
    assert DeltaTable(str(path)).version() == version
    assert _write_dirs(path) == dirs  # nothing staged is left behind
    with pytest.raises(StorageError, match="needs mode='overwrite'"):
        write_table(spark, rerun, path, mode="append", replace_where={"run_id": "r1"})


def _rows(path: Path) -> list[tuple]:
    return sorted(tuple(r.values()) for r in DeltaTable(str(path)).to_pyarrow_table().to_pylist())


def _commit_meanwhile(monkeypatch, other_write) -> None:
    """Make another writer commit after the next write staged its files, before its commit."""
    stage = delta_rs._stage

    def stage_then_other_commits(df, root, directory):
        staged = stage(df, root, directory)
        monkeypatch.setattr(delta_rs, "_stage", stage)
        other_write()
        return staged

    monkeypatch.setattr(delta_rs, "_stage", stage_then_other_commits)


def test_concurrent_writers_neither_duplicate_nor_resurrect_rows(spark, tmp_path, monkeypatch):
    schema = "run_id string, v long"
    first = [("old", 1)]
    r1 = _frame(spark, [("r1", 10)], schema)

    # Two first runs of the same replace: one copy of the run's rows, not two.
    path = tmp_path / "replace"
    write_table(spark, _frame(spark, first, schema), path, mode="overwrite")
    _commit_meanwhile(monkeypatch, lambda: write_table(
        spark, r1, path, mode="overwrite", replace_where={"run_id": "r1"}))
    write_table(spark, r1, path, mode="overwrite", replace_where={"run_id": "r1"})
    assert _rows(path) == [("old", 1), ("r1", 10)]

    # A row of the replaced run appended meanwhile is replaced too.
    _commit_meanwhile(monkeypatch, lambda: write_table(
        spark, _frame(spark, [("r1", 99)], schema), path, mode="append"))
    write_table(spark, r1, path, mode="overwrite", replace_where={"run_id": "r1"})
    assert _rows(path) == [("old", 1), ("r1", 10)]

    # An overwrite based on a stale snapshot fails cleanly instead of keeping others' rows.
    path = tmp_path / "overwrite"
    write_table(spark, _frame(spark, first, schema), path, mode="overwrite")
    _commit_meanwhile(monkeypatch, lambda: write_table(
        spark, _frame(spark, [("b", 2)], schema), path, mode="append"))
    with pytest.raises(StorageError, match="another writer committed.*nothing was committed"):
        write_table(spark, _frame(spark, [("c", 3)], schema), path, mode="overwrite")
    assert _rows(path) == [("b", 2), ("old", 1)]
    assert _write_dirs(path) == {a["path"].split("/")[0] for a in _log_adds(path)}


# ----------------------------------------------------------------------------- validation


def test_missing_table_and_column(spark, tmp_path):
    with pytest.raises(StorageError, match="not found .*write it first"):
        read_modality(spark, tmp_path / "nowhere")
    with pytest.raises(StorageError, match="%XX sequence, which delta-rs decodes"):
        read_modality(spark, tmp_path / "a%20b")
    with pytest.raises(StorageError, match="backslash"):
        read_modality(spark, tmp_path / "a\\b")
    path = tmp_path / "t"
    write_deltalake(str(path), pa.table({"id": ["a"], "emb": [[1.0]]}))
    with pytest.raises(StorageError, match=f"Table '{path}' has no column 'features'"):
        read_modality(spark, path)


def test_bad_ids_and_empty_table(spark, tmp_path):
    cases = {
        "nulls": (["a", None, None, "b"], "2 of 4 rows have a null id in column 'id'"),
        "dups": (["a", "b", "a", "a"],
                 r"2 duplicate rows in id column 'id' \(4 rows, 2 distinct ids; e.g. \['a'\]\)"),
        "empty": ([], "is empty"),
    }
    for name, (ids, message) in cases.items():
        path = tmp_path / name
        features = pa.array([[0.5]] * len(ids), pa.list_(pa.float64()))
        write_deltalake(str(path), pa.table({"id": pa.array(ids, pa.string()),
                                             "features": features}))
        if name == "dups":  # the caller may run the check itself, later
            unchecked = read_modality(spark, path, check=False)
            with pytest.raises(StorageError, match=message):
                check_ids(unchecked.df, unchecked.table, "id")
        else:
            with pytest.raises(StorageError, match=message):
                read_modality(spark, path)


def test_features_type_is_checked(spark, tmp_path):
    path = tmp_path / "t"
    write_deltalake(str(path), pa.table({"id": ["a"], "features": ["not a vector"]}))
    with pytest.raises(StorageError, match="column 'features' has type string"):
        read_modality(spark, path)
