"""Per-modality Delta tables: one interface, two engines (``engines.REGISTRY``).

* ``delta-spark``: Spark's own Delta (``format("delta")``), chosen by ``engine="auto"`` when
  the session has the Delta extension (or runs on Databricks); tables by path or catalog name.
* ``delta-rs`` (embedded default): Spark reads/writes the Parquet files, ``deltalake`` reads
  the snapshot and commits the log (one commit per write). Local paths / ``file://`` URIs.

A modality table holds an id column (string or long) and a features column (array<double>,
array<float> or a Spark ML vector); other columns are ignored by :func:`read_modality`.
"""

from mmgmm_spark.storage.api import (
    read_changes,
    read_modality,
    read_table,
    write_modality_table,
    write_table,
)
from mmgmm_spark.storage.changes import NetChanges, TableChanges, net_changes
from mmgmm_spark.storage.engines import ENGINE_NAMES, Engine, choose_engine, get_engine
from mmgmm_spark.storage.engines.delta_spark import has_delta_spark
from mmgmm_spark.storage.tables import (
    FEATURE_TYPES_HINT,
    StorageError,
    TableRead,
    TableRef,
    TableWrite,
    check_ids,
    double_array_or_none,
    features_as_double,
    features_as_double_array,
    resolve_table,
)

__all__ = [
    "ENGINE_NAMES",
    "FEATURE_TYPES_HINT",
    "Engine",
    "NetChanges",
    "StorageError",
    "TableRead",
    "TableChanges",
    "TableRef",
    "TableWrite",
    "check_ids",
    "choose_engine",
    "double_array_or_none",
    "features_as_double",
    "features_as_double_array",
    "get_engine",
    "has_delta_spark",
    "net_changes",
    "read_changes",
    "read_modality",
    "read_table",
    "resolve_table",
    "write_modality_table",
    "write_table",
]
