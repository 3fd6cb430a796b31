"""Labels for ``mmgmm evaluate``: a Delta table, a Parquet file/folder or a CSV file with the
id column and a label column (``is_anomaly`` by default: bool, or 0/1; in a CSV also
true/false), and optionally a column naming each anomaly's kind.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mmgmm_spark.app.config import AppConfig
from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.storage import read_table

LABEL_TEXT = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}
"""Text labels (CSV) accepted by :func:`read_labels`: anything else is refused."""


def _labels_frame(spark: SparkSession, config: AppConfig, labels: str) -> DataFrame:
    """The rows of a labels Delta table, Parquet file/folder or CSV file (text columns)."""
    path = Path(labels)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet") and "://" not in labels and not path.exists():
        raise DataValidationError(f"Labels file {labels!r} not found: check --labels.")
    if suffix == ".csv":
        return spark.read.csv(labels, header=True)
    if suffix == ".parquet" or (path.is_dir() and not (path / "_delta_log").is_dir()):
        return spark.read.parquet(labels)
    return read_table(spark, labels, engine=config.storage.engine).df


def _label_values(labels: DataFrame, column: str, source: str, id_column: str) -> Column:
    """``column`` as booleans; an error naming an example when it is not bool or 0/1."""
    value, data_type = F.col(column), labels.schema[column].dataType
    if isinstance(data_type, T.BooleanType):
        parsed = value
    elif isinstance(data_type, T.NumericType):
        parsed = F.when(value.isin(0, 1), value == 1)
    elif isinstance(data_type, T.StringType):
        text = F.lower(F.trim(value))
        parsed = F.when(text.isin(*LABEL_TEXT), text.isin(*[k for k, v in LABEL_TEXT.items() if v]))
    else:
        parsed = F.lit(None).cast("boolean")
    bad = labels.where(parsed.isNull())
    example = bad.select(F.col(id_column).cast("string"), value.cast("string")).first()
    if example is not None:
        raise DataValidationError(
            f"Labels {source!r}: column {column!r} ({data_type.simpleString()}) must hold bool "
            f"or 0/1 (true/false or 0/1 in a CSV), but {bad.count()} row(s) do not, e.g. "
            f"{example[1]!r} for id {example[0]!r}; name the 0/1 column with --label-column "
            "(and a column of anomaly kinds with --kind-column).")
    return parsed


def read_labels(spark: SparkSession, config: AppConfig, labels: str, id_type: T.DataType,
                label_column: str = "is_anomaly", kind_column: str | None = None
                ) -> DataFrame:
    """(id, label boolean[, kind string]) of ``labels``, ids cast to ``id_type``; without
    ``kind_column`` a ``kind`` column is kept when present."""
    frame, id_column = _labels_frame(spark, config, labels), config.data.id_column
    for option, column in (("--label-column", label_column), ("--kind-column", kind_column)):
        if column is not None and column not in frame.columns:
            raise DataValidationError(
                f"Labels {labels!r} have no column {column!r} (columns: {frame.columns}); "
                f"name it with {option}.")
    if id_column not in frame.columns:
        raise DataValidationError(
            f"Labels {labels!r} have no id column {id_column!r} (columns: {frame.columns}); "
            "they need the same id column as the feature tables (data.id_column).")
    kind = kind_column or ("kind" if "kind" in frame.columns else None)
    return frame.select(F.col(id_column).try_cast(id_type).alias(id_column),
                        _label_values(frame, label_column, labels, id_column).alias("label"),
                        *([F.col(kind).cast("string").alias("kind")] if kind else []))
