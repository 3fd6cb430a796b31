"""Files (Parquet, CSV, ``.npz``) to per-modality Delta tables, with id and width checks.

Each modality comes from one file, or from a group of columns of a shared file:

* a Parquet/CSV file with an id column and either an array column (``features``) or plain
  numeric columns named ``<prefix><index>`` (a *column group*, e.g. ``image_0 ... image_15``);
* an ``.npz`` file with ``X`` (n, d) and optionally ``ids`` (n,) (default: row numbers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import check_id_types
from mmgmm_spark.storage import TableWrite, check_ids, write_table


@dataclass(frozen=True)
class ModalitySource:
    """Where one modality comes from.

    Attributes:
        name: modality name.
        path: input file (.parquet, .csv or .npz) or a folder of Parquet files.
        table: output Delta table (path or catalog name).
        columns: a column-group prefix (e.g. ``image_``) or an array column name; None means
            ``features`` for Parquet/CSV (or ``X`` for .npz).
    """

    name: str
    path: str
    table: str
    columns: str | None = None


def _read_npz(spark: SparkSession, path: str, id_column: str) -> DataFrame:
    with np.load(path, allow_pickle=False) as arrays:
        if "X" not in arrays:
            raise DataValidationError(f"{path}: no array 'X' (keys: {sorted(arrays)}).")
        x = arrays["X"]
        ids = arrays["ids"] if "ids" in arrays else np.arange(len(x))
    if x.ndim != 2:
        raise DataValidationError(f"{path}: 'X' must be 2-d (rows x features), got {x.shape}.")
    table = arrow_table({"features": x}, ids=ids, id_column=id_column)
    return spark.createDataFrame(table)


def _read_file(spark: SparkSession, path: str, id_column: str) -> DataFrame:
    if "://" not in path and not Path(path).exists():
        raise DataValidationError(f"{path}: no such file or directory; check the --modality path.")
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return _read_npz(spark, path, id_column)
    if suffix == ".csv":  # as text: ids keep their leading zeros; features are cast
        return spark.read.csv(path, header=True)
    if suffix == ".parquet" or Path(path).is_dir():
        return spark.read.parquet(path)
    raise DataValidationError(f"{path}: unsupported file type (use .parquet, .csv or .npz).")


def _column_group(df: DataFrame, prefix: str, source: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    matched = sorted((int(m.group(1)), c) for c in df.columns if (m := pattern.match(c)))
    if not matched:
        raise DataValidationError(
            f"{source}: no array column '{prefix}' and no columns named '{prefix}<number>' "
            f"(columns: {df.columns[:20]}); name the array column or the prefix of numbered "
            "columns: --modality NAME=PATH:COLUMNS (e.g. :embedding or :image_).")
    return [c for _, c in matched]


def features_frame(df: DataFrame, source: ModalitySource, id_column: str) -> DataFrame:
    """(id_column, features array<double>) from a file's DataFrame."""
    origin = f"{source.path} (modality '{source.name}')"
    if id_column not in df.columns:
        raise DataValidationError(
            f"{origin}: no id column '{id_column}' (columns: {df.columns[:20]}).")
    wanted = source.columns or "features"
    if wanted in df.columns:
        features = F.col(wanted).cast("array<double>")
    else:
        group = _column_group(df, wanted, origin)
        features = F.array(*[F.col(c).cast("double") for c in group])
    return df.select(F.col(id_column), features.alias("features"))


def check_width(df: DataFrame, table: str, expected: int | None = None) -> int:
    """The common length of the feature arrays; an error if lengths differ or mismatch."""
    row = df.agg(F.min(F.size("features")).alias("lo"), F.max(F.size("features")).alias("hi"),
                 F.count(F.when(F.size("features") != F.lit(expected or -1), 1)).alias("off")
                 ).first()
    if row["lo"] != row["hi"]:
        raise DataValidationError(
            f"{table}: feature arrays have different lengths ({row['lo']} to {row['hi']}); "
            "every row of a modality needs the same width.")
    if expected is not None and row["lo"] != expected:
        raise DataValidationError(
            f"{table}: feature width is {row['lo']}, the config says dim={expected}.")
    return int(row["lo"])


def ingest(spark: SparkSession, sources: list[ModalitySource], id_column: str = "id",
           engine: str = "auto") -> dict[str, TableWrite]:
    """Validate every source first, then write one Delta table per modality (overwrite)."""
    frames = {}
    for source in sources:
        df = features_frame(_read_file(spark, source.path, id_column), source, id_column)
        check_ids(df, source.path, id_column, "features")
        check_width(df, source.path)
        frames[source.name] = (source, df)
    check_id_types({name: df for name, (_, df) in frames.items()}, id_column)
    return {name: write_table(spark, df, source.table, mode="overwrite", engine=engine)
            for name, (source, df) in frames.items()}
