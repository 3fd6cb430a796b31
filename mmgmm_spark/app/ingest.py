"""Files (Parquet, CSV, ``.npz``) to per-modality Delta tables, with id, value and width checks.

Each modality comes from one file, or from a group of columns of a shared file:

* a Parquet/CSV file with an id column and the modality's features as
  - an array column (default ``features``; ``:embedding`` names another),
  - named numeric columns, in the order given (``:row_sum,col_sum,ink``),
  - a glob of column names, in file order (``:profile_*``),
  - numbered columns ``<prefix><index>`` in index order (``:image_`` for ``image_0 ...``);
* an ``.npz`` file with ``X`` (n, d) and optionally ``ids`` (n,) (default: row numbers).

Every source is validated before any table is written; a bad value is an error naming the
file, the column, an example id and the fix. A row whose features are all missing (empty CSV
cells, NaN) is a missing modality (null features); a row missing only some is an error.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import check_id_types
from mmgmm_spark.storage import TableWrite, check_ids, write_table

ID_TYPES = {"string": "string", "long": "bigint"}
"""``--id-type`` / ``data.id_type`` values and the Spark type each casts the ids to."""
FEATURES = "features"
COLUMNS_HELP = ("--modality NAME=PATH:COLUMNS with COLUMNS an array column (:embedding), "
                "named columns (:col_a,col_b), a glob (:col_*) or a prefix of numbered "
                "columns (:image_ for image_0, image_1, ...)")


@dataclass(frozen=True)
class ModalitySource:
    """Where one modality comes from.

    Attributes:
        name: modality name.
        path: input file (.parquet, .csv or .npz) or a folder of Parquet files.
        table: output Delta table (path or catalog name).
        columns: an array column name, comma-separated column names, a glob of column
            names or a numbered-column prefix (see the module doc); None means ``features``
            for Parquet/CSV (or ``X`` for .npz).
    """

    name: str
    path: str
    table: str
    columns: str | None = None

    @property
    def origin(self) -> str:
        """How messages name the source."""
        return f"{self.path} (modality '{self.name}')"


@dataclass(frozen=True)
class IngestedModality:
    """One written modality: where from, where to, and what it holds."""

    source: ModalitySource
    write: TableWrite
    n_rows: int
    dim: int
    columns: str


@dataclass(frozen=True)
class FeatureColumns:
    """The file columns a modality's features come from: one array column or scalars."""

    array: str | None = None
    scalars: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.array is not None:
            return f"array column '{self.array}'"
        names = self.scalars
        shown = ", ".join(names) if len(names) <= 4 else f"{names[0]} .. {names[-1]}"
        return f"{len(names)} column(s) {shown}"


# ----------------------------------------------------------------------------- reading
def _read_npz(spark: SparkSession, path: str, id_column: str) -> DataFrame:
    with np.load(path, allow_pickle=False) as arrays:
        if "X" not in arrays:
            raise DataValidationError(f"{path}: no array 'X' (keys: {sorted(arrays)}).")
        x = arrays["X"]
        ids = arrays["ids"] if "ids" in arrays else np.arange(len(x))
    if x.ndim != 2:
        raise DataValidationError(f"{path}: 'X' must be 2-d (rows x features), got {x.shape}.")
    table = arrow_table({FEATURES: x}, ids=ids, id_column=id_column)
    return spark.createDataFrame(table)


def read_file(spark: SparkSession, path: str, id_column: str) -> DataFrame:
    """The rows of a .npz, .csv (all columns as text) or Parquet file or folder."""
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


def _root_cause(error: Exception) -> str:
    """The first line of the innermost Java cause (or of the Python error)."""
    cause = getattr(error, "java_exception", None)
    while cause is not None and cause.getCause() is not None:
        cause = cause.getCause()
    text = str(cause.getMessage() if cause is not None else error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


@contextmanager
def spark_errors(origin: str) -> Iterator[None]:
    """A Spark failure while reading or checking ``origin`` as one user error (exit 2)."""
    try:
        yield
    except (PySparkException, Py4JJavaError) as error:
        raise DataValidationError(
            f"{origin}: Spark could not read it ({_root_cause(error)}); check that the file "
            "is a valid Parquet/CSV/.npz file with a header row.") from None


# ----------------------------------------------------------------------------- ids
def cast_ids(df: DataFrame, id_column: str, id_type: str | None, origin: str) -> DataFrame:
    """``df`` with its ids cast to ``id_type`` (``string`` or ``long``; None: as read)."""
    if id_column not in df.columns:
        raise DataValidationError(
            f"{origin}: no id column '{id_column}' (columns: {df.columns[:20]}); name it with "
            "--set data.id_column=NAME.")
    if id_type is None:
        return df
    if id_type not in ID_TYPES:
        raise DataValidationError(f"id type {id_type!r}: use one of {sorted(ID_TYPES)}.")
    original, cast = F.col(id_column), F.col(id_column).try_cast(ID_TYPES[id_type])
    bad = df.where(original.isNotNull() & cast.isNull())
    example = bad.select(original.cast("string")).first()
    if example is not None:
        raise DataValidationError(
            f"{origin}: id {example[0]!r} in column '{id_column}' cannot be cast to "
            f"{id_type} ({bad.count()} such ids); use --id-type string, or fix those ids.")
    return df.withColumn(id_column, cast)


# ----------------------------------------------------------------------------- columns
def _is_array(data_type: T.DataType) -> bool:
    return isinstance(data_type, T.ArrayType) or type(data_type).__name__ == "VectorUDT"


def _numbered(columns: list[str], prefix: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    matched = sorted((int(m.group(1)), c) for c in columns if (m := pattern.match(c)))
    return [c for _, c in matched]


def _matched_columns(df: DataFrame, spec: str, id_column: str, origin: str) -> list[str]:
    """The scalar columns ``spec`` names (a comma list, a glob or a numbered prefix)."""
    candidates = [c for c in df.columns if c != id_column]
    if "," in spec:
        names = [name.strip() for name in spec.split(",") if name.strip()]
        missing = [name for name in names if name not in df.columns]
        if missing:
            raise DataValidationError(
                f"{origin}: no column(s) {missing} (columns: {df.columns[:20]}); list existing "
                "columns: --modality NAME=PATH:col_a,col_b,...")
        return names
    if any(ch in spec for ch in "*?["):
        names = [c for c in candidates if fnmatch.fnmatchcase(c, spec)]
        kind = f"columns matching '{spec}'"
    else:
        names = _numbered(candidates, spec)
        kind = f"array column '{spec}' and no columns named '{spec}<number>'"
    if not names:
        raise DataValidationError(
            f"{origin}: no {kind} (columns: {df.columns[:20]}); name the features: "
            f"{COLUMNS_HELP}.")
    return names


def feature_columns(df: DataFrame, spec: str | None, id_column: str,
                    origin: str) -> FeatureColumns:
    """Resolve ``--modality``'s COLUMNS against the file's columns (see the module doc)."""
    wanted = spec or FEATURES
    if "," not in wanted and wanted in df.columns:
        data_type = df.schema[wanted].dataType
        if not _is_array(data_type):
            raise DataValidationError(
                f"{origin}: column '{wanted}' holds one {data_type.simpleString()} per row, "
                "not an array of features; list the feature columns instead "
                f"(:{wanted},other_column,... or :{wanted}, for a one-feature modality).")
        return FeatureColumns(array=wanted)
    names = _matched_columns(df, wanted, id_column, origin)
    for name in names:
        data_type = df.schema[name].dataType
        if not isinstance(data_type, T.NumericType | T.StringType):
            raise DataValidationError(
                f"{origin}: feature column '{name}' is {data_type.simpleString()}, not a "
                "number; list only numeric columns.")
    return FeatureColumns(scalars=tuple(names))


def _not_a_number(name: str) -> Column:
    return F.col(name).isNotNull() & F.col(name).try_cast("double").isNull()


def check_numeric_text(df: DataFrame, columns: FeatureColumns, id_column: str,
                       origin: str) -> None:
    """Every text feature value (CSV) parses as a number; else an error with an example."""
    text = [c for c in columns.scalars if isinstance(df.schema[c].dataType, T.StringType)]
    if not text:
        return
    bad = _not_a_number
    row = df.agg(*[F.min(F.when(bad(c), F.struct(F.col(id_column).cast("string").alias("id"),
                                                 F.col(c).alias("value")))).alias(c)
                   for c in text]).first()
    for name in text:
        if row[name] is not None:
            n_bad = df.where(bad(name)).count()
            raise DataValidationError(
                f"{origin}: column '{name}' has {n_bad} value(s) that are not numbers, e.g. "
                f"{row[name]['value']!r} for id {row[name]['id']!r}; leave missing values "
                "empty (a row with every feature empty is a missing modality) or fix them.")


def features_frame(df: DataFrame, source: ModalitySource, id_column: str
                   ) -> tuple[DataFrame, FeatureColumns]:
    """(id_column, features array<double>) from a file's DataFrame, and the columns used."""
    columns = feature_columns(df, source.columns, id_column, source.origin)
    check_numeric_text(df, columns, id_column, source.origin)
    if columns.array is not None:
        if type(df.schema[columns.array].dataType).__name__ == "VectorUDT":
            from pyspark.ml.functions import vector_to_array

            features = vector_to_array(F.col(columns.array))
        else:
            features = F.col(columns.array).try_cast("array<double>")
    else:
        features = F.array(*[F.col(c).try_cast("double") for c in columns.scalars])
    return df.select(F.col(id_column), features.alias(FEATURES)), columns


# ----------------------------------------------------------------------------- values
def _missing(x: Column) -> Column:
    return x.isNull() | F.isnan(x)


def _position_names(columns: FeatureColumns, values: list) -> str:
    positions = [i for i, v in enumerate(values) if v is None or v != v]
    if columns.array is not None:
        return f"column '{columns.array}' (positions {positions[:5]})"
    return f"column(s) {[columns.scalars[i] for i in positions[:5]]}"


def check_values(df: DataFrame, columns: FeatureColumns, id_column: str,
                 origin: str) -> DataFrame:
    """Rows with every feature missing become null (a missing modality); a row missing only
    some features, or with an infinite value, is an error naming an example id."""
    partly = F.exists(FEATURES, _missing) & ~F.forall(FEATURES, _missing)
    infinite = F.exists(FEATURES, lambda x: F.abs(x) == F.lit(float("inf")))
    for condition, what, fix in (
            (partly, "some but not all features missing (empty or NaN)",
             "fill them, or leave every feature of the row empty to mark the modality missing"),
            (infinite, "an infinite value", "replace it with a finite number")):
        example = df.where(condition).select(id_column, FEATURES).first()
        if example is not None:
            n_bad = df.where(condition).count()
            where = (_position_names(columns, example[FEATURES]) if condition is partly
                     else columns.describe())
            raise DataValidationError(
                f"{origin}: {n_bad} row(s) have {what}, e.g. id {example[id_column]!r} in "
                f"{where}; {fix}.")
    return df.withColumn(FEATURES, F.when(F.forall(FEATURES, _missing), F.lit(None))
                         .otherwise(F.col(FEATURES)))


def check_width(df: DataFrame, table: str, expected: int | None = None) -> int:
    """The common length of the feature arrays; an error if lengths differ or mismatch."""
    observed = df.where(F.col(FEATURES).isNotNull())
    row = observed.agg(F.min(F.size(FEATURES)).alias("lo"),
                       F.max(F.size(FEATURES)).alias("hi")).first()
    if row["lo"] is None:
        raise DataValidationError(
            f"{table}: every row's features are missing; check the --modality columns.")
    if row["lo"] != row["hi"]:
        raise DataValidationError(
            f"{table}: feature arrays have different lengths ({row['lo']} to {row['hi']}); "
            "every row of a modality needs the same width.")
    if expected is not None and row["lo"] != expected:
        raise DataValidationError(
            f"{table}: feature width is {row['lo']}, the config says dim={expected}.")
    return int(row["lo"])


# ----------------------------------------------------------------------------- ingest
@dataclass(frozen=True)
class _Validated:
    source: ModalitySource
    df: DataFrame
    columns: FeatureColumns
    n_rows: int
    dim: int


def validate_source(spark: SparkSession, source: ModalitySource, id_column: str,
                    id_type: str | None) -> _Validated:
    """Read one source and run every check on it (ids cast first)."""
    with spark_errors(source.origin):
        raw = cast_ids(read_file(spark, source.path, id_column), id_column, id_type,
                       source.origin)
        df, columns = features_frame(raw, source, id_column)
        df = check_values(df, columns, id_column, source.origin).cache()
        try:
            n_rows = check_ids(df, source.path, id_column, FEATURES)
            dim = check_width(df, source.path)
        except Exception:
            df.unpersist()
            raise
    return _Validated(source, df, columns, n_rows, dim)


def check_same_id_type(checked: dict[str, _Validated], id_column: str) -> None:
    """One id type across the sources, or an error saying how to cast them at ingest."""
    try:
        check_id_types({name: v.df for name, v in checked.items()}, id_column)
    except DataValidationError as error:
        mismatch = str(error).split("; ")[0]
        raise DataValidationError(
            f"{mismatch}; pass --id-type string (or --id-type long, or set data.id_type) to "
            "cast every file's ids to one type before the checks.") from None


def ingest(spark: SparkSession, sources: list[ModalitySource], id_column: str = "id",
           engine: str = "auto", id_type: str | None = None) -> dict[str, IngestedModality]:
    """Validate every source first, then write one Delta table per modality (overwrite).

    ``id_type`` (``string`` or ``long``) casts every source's ids before the uniqueness and
    join checks (e.g. CSV ids, read as text, next to Parquet integer ids).
    """
    checked: dict[str, _Validated] = {}
    try:
        for source in sources:
            checked[source.name] = validate_source(spark, source, id_column, id_type)
        check_same_id_type(checked, id_column)
        return {name: IngestedModality(v.source, write_table(spark, v.df, v.source.table,
                                                             mode="overwrite", engine=engine),
                                       v.n_rows, v.dim, v.columns.describe())
                for name, v in checked.items()}
    finally:
        for v in checked.values():
            v.df.unpersist()
