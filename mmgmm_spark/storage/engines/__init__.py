"""The storage engines: one protocol, one registry (the only place to add an engine).

To add an engine: write a module here with an object satisfying :class:`Engine` and list it in
``REGISTRY`` (in the order ``auto`` tries them); ``storage.engine`` in the config names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pyspark.sql import DataFrame, SparkSession

from mmgmm_spark.storage.changes import TableChanges
from mmgmm_spark.storage.engines.delta_rs import DELTA_RS
from mmgmm_spark.storage.engines.delta_spark import DELTA_SPARK
from mmgmm_spark.storage.tables import StorageError, TableRef, TableWrite


class Engine(Protocol):
    """What every storage engine does; ``api.py`` calls nothing else."""

    name: str

    def available(self, spark: SparkSession) -> bool:
        """Whether this engine can run in ``spark`` (``auto`` takes the first that can)."""
        ...

    def unavailable_reason(self) -> str:
        """Why it cannot, and what to do: the error when the engine is forced."""
        ...

    def read(self, spark: SparkSession, ref: TableRef,
             version: int | None) -> tuple[DataFrame, int]:
        """The table at ``version`` (None: latest) and the version actually read."""
        ...

    def write(self, spark: SparkSession, df: DataFrame, ref: TableRef, mode: str,
              replace_where: Mapping[str, str | int] | None) -> TableWrite:
        """One transaction; ``TableWrite.version`` is the version this write committed."""
        ...

    def changes(self, spark: SparkSession, ref: TableRef, since: int,
                until: int) -> TableChanges:
        """Rows added and removed between versions ``since`` and ``until`` (see
        :mod:`mmgmm_spark.storage.changes`), reading as little as the table allows."""
        ...


REGISTRY: dict[str, Engine] = {engine.name: engine for engine in (DELTA_SPARK, DELTA_RS)}
"""Engine name -> engine, in the order ``auto`` tries them."""

ENGINE_NAMES = ("auto", *REGISTRY)


def get_engine(spark: SparkSession, engine: str = "auto") -> Engine:
    """The engine called ``engine``, or for ``auto`` the first available one.

    An unknown name is an error naming the known ones; forcing an engine that cannot run in
    this session is an error saying what it needs.
    """
    if engine == "auto":
        return next(e for e in REGISTRY.values() if e.available(spark))
    if engine not in REGISTRY:
        raise StorageError(
            f"Unknown storage engine {engine!r}; known engines: {', '.join(ENGINE_NAMES)}."
        )
    chosen = REGISTRY[engine]
    if not chosen.available(spark):
        raise StorageError(chosen.unavailable_reason())
    return chosen


def choose_engine(spark: SparkSession, engine: str = "auto") -> str:
    """The name of :func:`get_engine`'s engine (``auto``: delta-spark when the session has
    Delta Lake's extension or runs on Databricks, else the embedded delta-rs)."""
    return get_engine(spark, engine).name
