"""One storage suite for both engines (delta-rs and Delta Lake's Spark connector), and interop.

References are independent of the engine under test: ``deltalake`` (delta-rs) and Spark's Delta
connector read the tables directly, and the expected rows are tracked here in Python. All tests
run on the one session with Delta's extension (``delta_spark`` in conftest).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import functions as F  # noqa: N812

from mmgmm_spark.spark.session import delta_artifact, delta_package
from mmgmm_spark.storage import StorageError, choose_engine, read_table, write_table
from mmgmm_spark.storage.engines import REGISTRY, delta_rs
from mmgmm_spark.storage.engines import delta_spark as delta_spark_engine

pytestmark = pytest.mark.spark

ENGINES = ["delta-rs", "delta-spark"]
SCHEMA = "run_id string, id long, v double"


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


def frame(spark, rows: list[tuple], schema: str = SCHEMA):
    names = [part.split()[0] for part in schema.split(",")]
    return spark.createDataFrame(pd.DataFrame(rows, columns=names), schema)


def lake_rows(path: Path, version: int | None = None) -> list[tuple]:
    """The rows as deltalake (delta-rs, not our code) reads them."""
    table = DeltaTable(str(path), version=version).to_pyarrow_table()
    return sorted(tuple(r.values()) for r in table.to_pylist())


def connector_rows(spark, path: Path, version: int | None = None) -> list[tuple]:
    """The rows as Delta Lake's Spark connector reads them (``format("delta")`` directly)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return sorted(tuple(r) for r in reader.load(str(path)).collect())


def engine_rows(spark, path, engine: str, version: int | None = None) -> list[tuple]:
    read = read_table(spark, path, version=version, engine=engine)
    assert read.engine == engine
    return sorted(tuple(r) for r in read.df.collect())


def lake_version(path: Path) -> int:
    return DeltaTable(str(path)).version()


# ----------------------------------------------------------------------------- registry


def test_registry_and_delta_package(delta_spark):
    assert list(REGISTRY) == ["delta-spark", "delta-rs"]
    assert choose_engine(delta_spark) == "delta-spark"  # the extension is in this session
    with pytest.raises(StorageError, match="known engines: auto, delta-spark, delta-rs"):
        choose_engine(delta_spark, "iceberg")
    # The artifact follows configure_spark_with_delta_pip (the version may fall back to the
    # newest published patch release, see spark/session.py).
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = configure_spark_with_delta_pip(SparkSession.Builder())
    expected = builder._options["spark.jars.packages"]
    group, artifact, version = delta_package().split(":")
    assert f"{group}:{artifact}" == expected.rsplit(":", 1)[0] == f"io.delta:{delta_artifact()}"
    assert version.rsplit(".", 1)[0] == expected.rsplit(":", 1)[1].rsplit(".", 1)[0]
    jars = delta_spark.sparkContext.getConf().get("spark.jars", "")
    assert f"{artifact}-{version}.jar" in jars  # the session runs the connector named


# ----------------------------------------------------------------------------- reads and writes


def test_reads_pinned_and_latest_after_overwrite_and_append(delta_spark, engine, tmp_path):
    spark, path = delta_spark, tmp_path / "t"
    w0 = write_table(spark, frame(spark, [("a", 1, 1.0), ("a", 2, 2.0)]), path,
                     mode="overwrite", engine=engine)
    w1 = write_table(spark, frame(spark, [("a", 3, 3.0)]), path, mode="append", engine=engine)
    w2 = write_table(spark, frame(spark, [("b", 9, 9.0)]), path, mode="overwrite",
                     engine=engine)
    assert [(w.version, w.engine) for w in (w0, w1, w2)] == [(0, engine), (1, engine),
                                                              (2, engine)]
    assert lake_version(path) == 2
    history = [[("a", 1, 1.0), ("a", 2, 2.0)], [("a", 1, 1.0), ("a", 2, 2.0), ("a", 3, 3.0)],
               [("b", 9, 9.0)]]
    for version, rows in enumerate(history):
        assert lake_rows(path, version) == rows
        assert engine_rows(spark, path, engine, version) == rows
    latest = read_table(spark, path, engine=engine)
    assert latest.version == 2 and sorted(tuple(r) for r in latest.df.collect()) == history[2]
    with pytest.raises(StorageError, match="no version 7"):
        read_table(spark, path, version=7, engine=engine)
    with pytest.raises(StorageError, match="not found"):
        read_table(spark, tmp_path / "absent", engine=engine)


def test_scoring_rerun_replaces_its_own_rows(delta_spark, engine, tmp_path):
    spark, path = delta_spark, tmp_path / "scores"
    both = frame(spark, [("r1", 1, 1.0), ("r2", 1, 2.0), ("r2", 2, 3.0)])
    write_table(spark, both.coalesce(1), path, mode="overwrite", engine=engine)
    rerun = frame(spark, [("r1", 1, 10.0), ("r1", 2, 20.0)])
    versions = [write_table(spark, rerun, path, mode="overwrite", replace_where={"run_id": "r1"},
                            engine=engine).version for _ in range(2)]
    assert versions == [1, 2] and lake_version(path) == 2
    expected = [("r1", 1, 10.0), ("r1", 2, 20.0), ("r2", 1, 2.0), ("r2", 2, 3.0)]
    assert lake_rows(path) == connector_rows(spark, path) == expected

    wrong = frame(spark, [("r1", 3, 1.0), ("r3", 3, 1.0)])
    with pytest.raises(StorageError, match="do not satisfy replace_where"):
        write_table(spark, wrong, path, mode="overwrite", replace_where={"run_id": "r1"},
                    engine=engine)
    assert lake_version(path) == 2 and lake_rows(path) == expected


def test_schema_is_checked_before_the_write(delta_spark, engine, tmp_path):
    spark, path = delta_spark, tmp_path / "t"
    write_table(spark, frame(spark, [("a", 1, 1.0)]), path, mode="overwrite", engine=engine)
    other = frame(spark, [("a", "x", 1.0, 0)], "run_id string, id string, v double, k int")
    for kwargs in ({"mode": "append"}, {"mode": "overwrite", "replace_where": {"run_id": "a"}}):
        with pytest.raises(StorageError) as err:
            write_table(spark, other, path, engine=engine, **kwargs)
        message = str(err.value)
        assert str(path) in message and "unexpected columns ['k']" in message
        assert "column 'id' is string but the table has bigint" in message
    assert lake_version(path) == 0 and lake_rows(path) == [("a", 1, 1.0)]
    # overwrite replaces the schema
    write_table(spark, other, path, mode="overwrite", engine=engine)
    assert lake_rows(path) == [("a", "x", 1.0, 0)]


def test_nulls_in_not_null_columns_are_rejected(delta_spark, engine, tmp_path):
    import pyarrow as pa

    spark, path = delta_spark, tmp_path / "t"
    schema = pa.schema([pa.field("eid", pa.int64(), nullable=False),
                        pa.field("v", pa.float64())])
    write_deltalake(str(path), pa.table({"eid": [1], "v": [1.0]}, schema=schema))
    rows = frame(spark, [(None, 2.0), (3, 3.0)], "eid long, v double")
    with pytest.raises(StorageError, match=r"NOT NULL column\(s\) would receive nulls.*eid"):
        write_table(spark, rows, path, mode="append", engine=engine)
    assert lake_version(path) == 0
    write_table(spark, rows.where("eid IS NOT NULL"), path, mode="append", engine=engine)
    assert lake_rows(path) == [(1, 1.0), (3, 3.0)]


def test_catalog_names(delta_spark, engine, tmp_path):
    spark, name = delta_spark, f"mmgmm_catalog_{engine.replace('-', '_')}"
    df = frame(spark, [("a", 1, 1.0)])
    if engine == "delta-rs":
        with pytest.raises(StorageError, match="catalog name, which needs Spark's Delta"):
            write_table(spark, df, name, mode="overwrite", engine=engine)
        return
    w0 = write_table(spark, df, name, mode="overwrite", engine=engine)
    w1 = write_table(spark, frame(spark, [("a", 2, 2.0)]), name, mode="append", engine=engine)
    assert (w0.version, w1.version, w1.table) == (0, 1, name)
    detail = spark.sql(f"DESCRIBE DETAIL {name}").first()
    location = Path(detail["location"].removeprefix("file:"))
    warehouse = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:"))
    assert detail["format"] == "delta" and location.parent == warehouse  # a managed table
    assert lake_rows(location) == [("a", 1, 1.0), ("a", 2, 2.0)]
    assert engine_rows(spark, name, engine, version=0) == [("a", 1, 1.0)]
    assert read_table(spark, f"default.{name}", engine=engine).version == 1


def test_failed_job_leaves_the_table_as_it_was(delta_spark, engine, tmp_path):
    spark, path = delta_spark, tmp_path / "t"
    write_table(spark, frame(spark, [("a", 1, 1.0)]), path, mode="overwrite", engine=engine)
    before = sorted(p.name for p in path.iterdir())
    failing = frame(spark, [("a", 2, 2.0)]).withColumn(
        "v", F.when(F.col("id") == 2, F.raise_error(F.lit("boom"))).otherwise(F.col("v"))
        .cast("double"))
    for mode in ("append", "overwrite"):
        with pytest.raises(Exception, match="boom"):
            write_table(spark, failing, path, mode=mode, engine=engine)
    assert lake_version(path) == 0 and lake_rows(path) == [("a", 1, 1.0)]
    if engine == "delta-rs":  # its staged files are deleted (Delta Spark leaves VACUUM-able ones)
        assert sorted(p.name for p in path.iterdir()) == before


# ----------------------------------------------------------------------------- concurrency


class HeldWrite:
    """A write whose Spark job blocks (in a Python UDF) until released, run in a thread: the
    engine has read its snapshot, another writer commits, then the held write commits."""

    def __init__(self, spark, tmp_path: Path, rows: list[tuple], path: Path, **kwargs):
        tmp_path.mkdir()
        self.started, self.release = tmp_path / "started", tmp_path / "release"
        started, release = str(self.started), str(self.release)

        def hold(v):
            import os
            import time

            open(started, "a").close()
            deadline = time.time() + 120
            while not os.path.exists(release) and time.time() < deadline:
                time.sleep(0.05)
            return v

        df = frame(spark, rows).coalesce(1).withColumn("v", F.udf(hold, "double")("v"))
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(spark, df, path, kwargs))

    def _run(self, spark, df, path, kwargs):
        try:
            self.result = write_table(spark, df, path, **kwargs)
        except Exception as exc:  # reported to the test
            self.error = exc

    def __enter__(self):
        self.thread.start()
        for _ in range(1200):
            if self.started.exists():
                return self
            self.thread.join(0.05)
        raise AssertionError(f"the held write never started its job: {self.error}")

    def __exit__(self, *exc_info):
        self.release.touch()
        self.thread.join(180)


def test_concurrent_writers(delta_spark, engine, tmp_path):
    spark = delta_spark
    path = tmp_path / "t"
    write_table(spark, frame(spark, [("old", 1, 1.0)]), path, mode="overwrite", engine=engine)

    # Replace run r1 while another writer appends a row of r1: one copy of r1, no duplicate.
    with HeldWrite(spark, tmp_path / "a", [("r1", 10, 10.0)], path, mode="overwrite",
                   replace_where={"run_id": "r1"}, engine=engine) as held:
        write_table(spark, frame(spark, [("r1", 99, 99.0)]), path, mode="append", engine=engine)
    assert held.error is None and held.result.version == 2  # retried after version 1
    assert lake_rows(path) == [("old", 1, 1.0), ("r1", 10, 10.0)]

    # Two appends at once: no lost row.
    with HeldWrite(spark, tmp_path / "b", [("x", 2, 2.0)], path, mode="append",
                   engine=engine) as held:
        other = write_table(spark, frame(spark, [("y", 3, 3.0)]), path, mode="append",
                            engine=engine)
    assert held.error is None and {held.result.version, other.version} == {3, 4}
    assert lake_rows(path) == [("old", 1, 1.0), ("r1", 10, 10.0), ("x", 2, 2.0), ("y", 3, 3.0)]

    # An overwrite on a stale snapshot fails with a clear error; the other's row is kept.
    with HeldWrite(spark, tmp_path / "c", [("z", 4, 4.0)], path, mode="overwrite",
                   engine=engine) as held:
        write_table(spark, frame(spark, [("w", 5, 5.0)]), path, mode="append", engine=engine)
    assert isinstance(held.error, StorageError)
    assert "another writer committed" in str(held.error)
    assert "nothing was committed" in str(held.error)
    assert lake_version(path) == 5 and ("w", 5, 5.0) in lake_rows(path)
    assert ("z", 4, 4.0) not in lake_rows(path)


def test_reported_version_is_this_writes_commit(delta_spark, engine, tmp_path, monkeypatch):
    """Another commit lands after ours, before the engine looks its version up."""
    spark, path = delta_spark, tmp_path / "t"
    write_table(spark, frame(spark, [("a", 1, 1.0)]), path, mode="overwrite", engine=engine)
    module, name = ((delta_rs, "_landed_version") if engine == "delta-rs"
                    else (delta_spark_engine, "committed_version"))
    lookup, interrupted = getattr(module, name), []

    def other_commit_first(*args):
        if not interrupted:
            interrupted.append(True)
            write_table(spark, frame(spark, [("b", 2, 2.0)]), path, mode="append",
                        engine=engine)
        return lookup(*args)

    monkeypatch.setattr(module, name, other_commit_first)
    ours = write_table(spark, frame(spark, [("c", 3, 3.0)]), path, mode="append", engine=engine)
    assert interrupted and lake_version(path) == 2
    assert ours.version == 1  # not the latest (2, the other writer's)
    assert lake_rows(path, 1) == [("a", 1, 1.0), ("c", 3, 3.0)]


# ----------------------------------------------------------------------------- interop


@pytest.mark.parametrize("writer", ENGINES)
def test_tables_written_by_one_engine_are_read_by_the_other(delta_spark, writer, tmp_path):
    spark, path = delta_spark, tmp_path / "t"
    reader = next(e for e in ENGINES if e != writer)
    history: list[list[tuple]] = []

    def commit(rows, **kwargs):
        result = write_table(spark, frame(spark, rows), path, engine=writer, **kwargs)
        assert result.version == len(history)
        current = history[-1] if history else []
        if kwargs.get("replace_where"):
            current = [r for r in current if r[0] != kwargs["replace_where"]["run_id"]]
        elif kwargs["mode"] == "overwrite":
            current = []
        history.append(sorted(current + rows))

    commit([("r1", 1, 1.0), ("r2", 2, 2.0)], mode="overwrite")  # create
    commit([("r2", 3, 3.0)], mode="append")
    commit([("r1", 4, 4.0), ("r2", 5, 5.0)], mode="overwrite")
    commit([("r1", 6, 6.0)], mode="overwrite", replace_where={"run_id": "r1"})
    for i in range(7, 15):
        commit([(f"r{i}", i, float(i))], mode="append")  # versions 4..11
    if writer == "delta-rs":
        DeltaTable(str(path)).create_checkpoint()  # Delta Spark writes one every 10 commits
    assert list((path / "_delta_log").glob("*.checkpoint*.parquet"))
    assert len(history) == 12

    read_other = lake_rows if writer == "delta-spark" else (
        lambda p, v=None: connector_rows(spark, p, v))
    for version, rows in enumerate(history):
        assert read_other(path, version) == rows, version
        assert engine_rows(spark, path, reader, version) == rows, version
    assert read_other(path) == engine_rows(spark, path, reader) == history[-1]

    # and the other engine writes on top (appends and a replace) of what this one wrote
    write_table(spark, frame(spark, [("r1", 20, 20.0)]), path, mode="overwrite",
                replace_where={"run_id": "r1"}, engine=reader)
    expected = sorted([r for r in history[-1] if r[0] != "r1"] + [("r1", 20, 20.0)])
    assert engine_rows(spark, path, writer) == lake_rows(path) == expected


def test_readme_spark_submit_names_the_derived_package():
    """README's spark-submit line prints the package with the helper, and names the rule."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = readme[readme.index("**spark-submit**"):readme.index("**Databricks**")]
    assert "print(delta_package())" in line and "delta-spark_2.13:4.0.0" not in line
    assert "`io.delta:delta-spark_<pyspark major.minor>_2.13:<delta-spark version>`" in line
    assert delta_package().startswith(f"io.delta:{delta_artifact()}:")


def test_jar_version_falls_back_to_a_published_patch_of_the_same_minor(monkeypatch):
    from mmgmm_spark.spark import session

    monkeypatch.setattr(session.importlib.metadata, "version", lambda name: "4.4.1")
    assert session.delta_jar_version(["4.4.0", "4.4.1"]) == "4.4.1"
    assert session.delta_jar_version(["4.3.1", "4.4.0", "4.5.0"]) == "4.4.0"
    assert session.delta_jar_version(["4.3.1", "4.4.2"]) == "4.4.1"  # none older, same minor
    assert session.delta_jar_version([]) == "4.4.1"


def test_prefetch_fetches_with_maven_the_jars_spark_resolver_finds_missing(monkeypatch):
    """Ivy trusts a POM-only entry of ~/.m2 (Maven mediated another version) and fails on its
    jar: the prefetch fetches exactly those jars, without their dependencies, and asks again."""
    from mmgmm_spark.spark import session

    ivy_failure = ("[download failed: org.slf4j#slf4j-api;2.0.13!slf4j-api.jar, download "
                   "failed: org.apache.parquet#parquet-hadoop;1.16.0!parquet-hadoop.jar]")
    calls, resolver_runs = [], iter([(False, ivy_failure), (True, "")])

    def run(command):
        calls.append(command)
        return next(resolver_runs) if command[0] == session.sys.executable else (True, "")

    monkeypatch.setattr(session, "_run", run)
    monkeypatch.setattr(session.shutil, "which", lambda name: "/usr/bin/mvn")
    assert session._fetch("io.delta:delta-spark_4.2_2.13:4.4.0")
    maven = [c for c in calls if c[0] == "mvn"]
    assert [c[-1] for c in maven] == ["-Dartifact=org.apache.parquet:parquet-hadoop:1.16.0",
                                      "-Dartifact=org.slf4j:slf4j-api:2.0.13"]
    assert all("-Dtransitive=false" in c for c in maven) and len(calls) == 4
    monkeypatch.setattr(session.shutil, "which", lambda name: None)
    resolver_runs = iter([(False, ivy_failure)])
    assert not session._fetch("io.delta:delta-spark_4.2_2.13:4.4.0")   # no Maven: no repair
