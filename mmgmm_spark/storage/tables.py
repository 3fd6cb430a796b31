"""Table references, results and validation shared by the storage engines.

Nothing here touches the Delta log: the engines in ``engines/`` do, behind the ``Engine``
protocol (``read(spark, ref, version) -> (df, version)`` and ``write(...) -> TableWrite``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql import types as T  # noqa: N812

# One to three dot-separated parts (catalog.schema.table); each part a plain SQL identifier.
_CATALOG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class StorageError(ValueError):
    """A table cannot be read or written as asked; the message names table, column and fix."""


@dataclass(frozen=True)
class TableRef:
    """Where a table lives.

    Attributes:
        display: the table as the caller gave it, for messages and logs.
        path: location for Spark (``file:///abs/dir`` for local tables, else the URI as given);
            None for catalog tables.
        local_path: absolute local directory for local tables, else None.
        catalog_name: backquoted multi-part identifier (``\\`main\\`.\\`features\\`.\\`image\\```)
            for catalog tables, else None.
    """

    display: str
    path: str | None = None
    local_path: str | None = None
    catalog_name: str | None = None


@dataclass(frozen=True)
class TableRead:
    """A snapshot read: ``df`` is the content of ``table`` at Delta ``version`` (log this)."""

    df: DataFrame
    table: str
    version: int
    engine: str


@dataclass(frozen=True)
class TableWrite:
    """One committed write: ``version`` is the Delta version the commit created."""

    table: str
    version: int
    mode: str
    engine: str
    files_added: int = 0
    files_removed: int = 0


def resolve_table(table: str | os.PathLike[str]) -> TableRef:
    """Classify ``table`` as a path or a catalog name.

    ``pathlib.Path`` objects, strings containing ``/`` or ``\\``, strings starting with ``.`` or
    ``~`` and URIs (``file:///...``, ``s3://...``) are paths; a relative path without a slash
    must be written ``./name``. Anything else must be a catalog identifier with 1-3 parts of
    letters, digits and underscores (``main.features.image``).
    """
    if isinstance(table, os.PathLike):
        table = os.fspath(table)
    if not isinstance(table, str) or not table.strip():
        raise StorageError(f"A table must be a path or a catalog name, got {table!r}.")
    if table.startswith("file:"):
        local = unquote(urlparse(table).path)
        if not local:
            raise StorageError(f"Table {table!r}: the file:// URI has no path.")
        return _local_ref(table, local)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", table):
        return TableRef(display=table, path=table)
    if any(c in table for c in "/\\") or table.startswith((".", "~")):
        return _local_ref(table, table)
    if _CATALOG_NAME.match(table):
        quoted = ".".join(f"`{part}`" for part in table.split("."))
        return TableRef(display=table, catalog_name=quoted)
    raise StorageError(
        f"Table {table!r} is neither a path (use ./{table} for a relative directory) nor a "
        "catalog name of the form catalog.schema.table (letters, digits, underscores)."
    )


def _local_ref(display: str, local: str) -> TableRef:
    absolute = str(Path(local).expanduser().resolve())
    return TableRef(display=display, path="file://" + absolute, local_path=absolute)


# ----------------------------------------------------------------------------- validation


def require_columns(df: DataFrame, table: str, columns: list[str]) -> None:
    """Raise naming ``table`` and the first missing column of ``columns``."""
    present = df.columns
    for column in columns:
        if column not in present:
            raise StorageError(
                f"Table {table!r} has no column {column!r} (columns: {present}); pass the "
                "right id_col/features_col or rewrite the table with that column."
            )


def check_ids(df: DataFrame, table: str, id_col: str = "id",
              features_col: str | None = None) -> int:
    """Validate the rows of a modality table with one Spark aggregation; return the row count.

    Raises :class:`StorageError` when the table is empty, when ``id_col`` has nulls or duplicate
    values (with the counts, and up to 5 example duplicates, found by a second query only on
    failure), or when ``features_col`` (if given) is not a column. A null feature vector is
    allowed: that entity's modality is missing, as if the row were absent.
    """
    require_columns(df, table, [id_col] + ([features_col] if features_col else []))
    aggs = [F.count(F.lit(1)).alias("n"), F.count(F.col(id_col)).alias("n_ids"),
            F.count_distinct(F.col(id_col)).alias("n_distinct")]
    row = df.agg(*aggs).first()
    n, n_ids, n_distinct = int(row["n"]), int(row["n_ids"]), int(row["n_distinct"])
    if n == 0:
        raise StorageError(f"Table {table!r} is empty (0 rows); write the modality data first.")
    if n_ids < n:
        raise StorageError(
            f"Table {table!r}: {n - n_ids} of {n} rows have a null id in column {id_col!r}; "
            "every row needs an id (drop or fill those rows)."
        )
    if n_distinct < n:
        examples = [r[0] for r in df.groupBy(id_col).count().where(F.col("count") > 1)
                    .limit(5).collect()]
        raise StorageError(
            f"Table {table!r}: {n - n_distinct} duplicate rows in id column {id_col!r} "
            f"({n} rows, {n_distinct} distinct ids; e.g. {examples}); ids must be unique."
        )
    return n


def _is_vector_udt(data_type: T.DataType) -> bool:
    return isinstance(data_type, T.UserDefinedType) and type(data_type).__name__ == "VectorUDT"


def _is_vector_struct(data_type: T.DataType) -> bool:
    """The struct Spark ML vectors are stored as (Delta keeps the struct, not the UDT)."""
    return isinstance(data_type, T.StructType) and [
        (f.name, f.dataType.simpleString()) for f in data_type.fields
    ] == [("type", "tinyint"), ("size", "int"), ("indices", "array<int>"),
          ("values", "array<double>")]


def _vector_struct_to_array(col: Column) -> Column:
    """``type`` 1 = dense (``values``); 0 = sparse (``size``, ``indices``, ``values``)."""
    lookup = F.map_from_arrays(col["indices"], col["values"])
    sparse = F.transform(F.sequence(F.lit(0), col["size"] - 1),
                         lambda i: F.coalesce(F.try_element_at(lookup, i), F.lit(0.0)))
    sparse = F.when(col["size"] > 0, sparse).otherwise(F.array().cast("array<double>"))
    return F.when(col.isNull(), F.lit(None)).when(col["type"] == 1, col["values"]) \
        .otherwise(sparse)


NUMERIC_ELEMENTS = (T.DoubleType, T.FloatType, T.LongType, T.IntegerType, T.ShortType)


def double_array_or_none(df: DataFrame, column: str) -> Column | None:
    """``column`` of ``df`` as an ``array<double>`` column (a null stays null), or None.

    Accepted: arrays of double (unchanged), float (exact) or integers, a Spark ML ``VectorUDT``
    and the vector struct ``struct<type,size,indices,values>`` that Delta tables written from
    vectors hold. None for any other type: the caller raises its own error, in its own terms.
    This is the one features-column converter (storage reads and Spark fit/score inputs).
    """
    data_type = df.schema[column].dataType
    col = F.col(column)
    if isinstance(data_type, T.ArrayType) and isinstance(data_type.elementType, T.DoubleType):
        return col
    if isinstance(data_type, T.ArrayType) and isinstance(data_type.elementType, NUMERIC_ELEMENTS):
        return col.cast(T.ArrayType(T.DoubleType()))
    if _is_vector_udt(data_type):
        from pyspark.ml.functions import vector_to_array

        # vector_to_array rejects nulls, and a null vector is a missing modality
        return F.when(col.isNotNull(), vector_to_array(col, "float64"))
    if _is_vector_struct(data_type):
        return _vector_struct_to_array(col)
    return None


FEATURE_TYPES_HINT = "features must be array<double>, array<float> or a Spark ML vector."


def features_as_double(df: DataFrame, table: str, features_col: str) -> Column:
    """:func:`double_array_or_none` of ``features_col``; an unsupported type names ``table``."""
    require_columns(df, table, [features_col])
    converted = double_array_or_none(df, features_col)
    if converted is None:
        data_type = df.schema[features_col].dataType.simpleString()
        raise StorageError(
            f"Table {table!r}: column {features_col!r} has type {data_type}; {FEATURE_TYPES_HINT}")
    return converted


def features_as_double_array(df: DataFrame, table: str, features_col: str) -> DataFrame:
    """Return ``df`` with ``features_col`` converted by :func:`features_as_double`."""
    return df.withColumn(features_col, features_as_double(df, table, features_col))


def id_column(df: DataFrame, table: str, id_col: str) -> DataFrame:
    """Check ``id_col`` is a string or integer column; integers are widened to long."""
    require_columns(df, table, [id_col])
    data_type = df.schema[id_col].dataType
    if isinstance(data_type, T.StringType | T.LongType):
        return df
    if isinstance(data_type, T.IntegerType | T.ShortType | T.ByteType):
        return df.withColumn(id_col, F.col(id_col).cast(T.LongType()))
    raise StorageError(
        f"Table {table!r}: id column {id_col!r} has type {data_type.simpleString()}; ids must "
        "be string or long."
    )


# ----------------------------------------------------------------------------- schemas


def _plain_type(data_type: T.DataType) -> str:
    """Type string without nullability, UDTs replaced by their storage type."""
    if isinstance(data_type, T.UserDefinedType):
        return _plain_type(data_type.sqlType())
    return data_type.simpleString()


SCHEMA_MISMATCH = "Schema of the data does not match table"
SCHEMA_MISMATCH_HINT = (" Align the columns, or use mode='overwrite' to replace the table and "
                        "its schema.")


def schema_mismatch(table: str, table_schema: T.StructType, df_schema: T.StructType) -> str | None:
    """A message describing how ``df_schema`` differs from ``table_schema``, or None.

    Compares column names and types; nullability and column order are ignored (Delta resolves
    columns by name).
    """
    expected = {f.name: _plain_type(f.dataType) for f in table_schema.fields}
    got = {f.name: _plain_type(f.dataType) for f in df_schema.fields}
    problems = []
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    problems += [f"column {c!r} is {got[c]} but the table has {expected[c]}"
                 for c in expected if c in got and got[c] != expected[c]]
    if not problems:
        return None
    return (f"{SCHEMA_MISMATCH} {table!r}: " + "; ".join(problems)
            + "." + SCHEMA_MISMATCH_HINT)


def replace_predicate(replace_where: Mapping[str, str | int]) -> Column:
    """Null-safe conjunction ``col1 <=> v1 AND col2 <=> v2 ...`` (true/false, never null)."""
    check_replace_where(replace_where)
    predicate = F.lit(True)
    for column, value in replace_where.items():
        predicate = predicate & F.col(column).eqNullSafe(F.lit(value))
    return predicate


def check_replace_where(replace_where: Mapping[str, str | int]) -> None:
    if not replace_where:
        raise StorageError("replace_where must name at least one column, e.g. {'run_id': 'r1'}.")
    for column, value in replace_where.items():
        if not isinstance(column, str) or not _COLUMN.match(column):
            raise StorageError(f"replace_where column {column!r} is not a plain column name.")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise StorageError(
                f"replace_where[{column!r}] must be a string or an integer, got {value!r}."
            )
