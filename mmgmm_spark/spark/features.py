"""Mixture features on Spark: per-entity posteriors and improved Fisher vectors, to Delta.

* :func:`entity_features`: one row per input row (entity) — ``mapInArrow`` over the joined
  modality rows, each task computing :meth:`MixtureFeatures.row_scores` on its Arrow batches.
* :func:`bag_features`: one row per bag (entity) of many rows (descriptors: image patches,
  log events, sensor windows). Each task sums its rows' Fisher scores per bag
  (:func:`mmgmm_spark.core.fisher.sum_by_key`), so only (bag, count, sums) partials are
  shuffled; ``groupBy(bag).applyInArrow`` adds a bag's partials and normalises. No row
  reaches the driver. A bag's ``responsibilities`` is its rows' mean posterior (a soft
  bag-of-components histogram).
* :func:`features_to_delta`: the feature rows plus model name/version, written as one Delta
  transaction replacing the table (a failure leaves it as it was).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.fisher import improved_fisher_vectors, sum_by_key
from mmgmm_spark.models.features import MixtureFeatures
from mmgmm_spark.models.scores import MODEL_NAME, MODEL_VERSION, RESPONSIBILITIES
from mmgmm_spark.spark.arrow import batch_from_arrow, dense_list_column
from mmgmm_spark.spark.data import features_column, translated_errors
from mmgmm_spark.spark.tasks import spark_task
from mmgmm_spark.storage import TableWrite, write_table

FISHER_VECTOR = "fisher_vector"
N_ROWS = "n_rows"
"""Columns of the features table besides the id (or bag) column and ``responsibilities``."""

VECTOR = T.ArrayType(T.DoubleType(), containsNull=False)
PARTIALS = "partial_sums"


def _modality_frame(df: DataFrame, key: str, features: MixtureFeatures,
                    source: str) -> DataFrame:
    """``key`` and one array<double> column per input modality."""
    if key not in df.columns:
        raise DataValidationError(f"{source}: no column '{key}' (columns: {df.columns}).")
    return df.select(F.col(key), *[features_column(df, m.name, source).alias(m.name)
                                   for m in features.modalities])


def _arrow_schema(schema: T.StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_type

    return pa.schema([pa.field(f.name, to_arrow_type(f.dataType)) for f in schema.fields])


def entity_features(df: DataFrame, features: MixtureFeatures, *, id_column: str = "id",
                    source: str = "DataFrame") -> DataFrame:
    """(lazy) ``id_column``, ``responsibilities`` (K,) and ``fisher_vector`` (D,) per row of
    ``df`` (``id_column`` + one column per modality, null = missing)."""
    frame = _modality_frame(df, id_column, features, source)
    schema = T.StructType([frame.schema[id_column],
                           T.StructField(RESPONSIBILITIES.name, VECTOR, False),
                           T.StructField(FISHER_VECTOR, VECTOR, False)])
    arrow_schema, modalities = _arrow_schema(schema), features.modalities

    @spark_task
    def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            if record_batch.num_rows == 0:
                continue
            resp, scores = features.row_scores(batch_from_arrow(record_batch, modalities,
                                                                source))
            vectors = improved_fisher_vectors(scores, np.ones(len(scores)))
            yield pa.RecordBatch.from_arrays(
                [record_batch.column(id_column), dense_list_column(resp),
                 dense_list_column(vectors)], schema=arrow_schema)

    return frame.mapInArrow(partition, schema)


def bag_features(df: DataFrame, features: MixtureFeatures, *, bag_column: str,
                 source: str = "DataFrame") -> DataFrame:
    """(lazy) ``bag_column``, ``n_rows``, ``responsibilities`` (K,: the mean posterior) and
    ``fisher_vector`` (D,) per distinct value of ``bag_column`` of ``df``'s rows."""
    frame = _modality_frame(df, bag_column, features, source)
    key_field = frame.schema[bag_column]
    partial_schema = T.StructType([key_field, T.StructField(N_ROWS, T.LongType(), False),
                                   T.StructField(PARTIALS, VECTOR, False)])
    result_schema = T.StructType([key_field, T.StructField(N_ROWS, T.LongType(), False),
                                  T.StructField(RESPONSIBILITIES.name, VECTOR, False),
                                  T.StructField(FISHER_VECTOR, VECTOR, False)])
    partials = frame.mapInArrow(
        _partial_sums(features, bag_column, _arrow_schema(partial_schema), source),
        partial_schema)
    return partials.groupBy(bag_column).applyInArrow(
        _finish_bags(features.n_components, bag_column, _arrow_schema(result_schema)),
        result_schema)


def _partial_sums(features: MixtureFeatures, bag_column: str, schema: pa.Schema, source: str):
    """A ``mapInArrow`` function: rows -> (bag, rows, sums of [responsibilities, scores])."""
    modalities = features.modalities

    @spark_task
    def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            if record_batch.num_rows == 0:
                continue
            keys = record_batch.column(bag_column)
            if keys.null_count:
                raise DataValidationError(
                    f"{source}: {keys.null_count} row(s) with a null bag column "
                    f"'{bag_column}'; give every row its entity, or drop those rows.")
            resp, scores = features.row_scores(batch_from_arrow(record_batch, modalities,
                                                                source))
            distinct, sums, counts = sum_by_key(keys.to_numpy(zero_copy_only=False),
                                                np.hstack([resp, scores]))
            yield pa.RecordBatch.from_arrays(
                [pa.array(distinct, type=schema.field(bag_column).type), pa.array(counts),
                 dense_list_column(sums)], schema=schema)

    return partition


def _finish_bags(n_components: int, bag_column: str, schema: pa.Schema):
    """An ``applyInArrow`` function: one bag's partials -> its row of features."""

    @spark_task
    def finish_bag(table: pa.Table) -> pa.Table:
        column = table.column(PARTIALS).combine_chunks()
        sums = column.flatten().to_numpy().reshape(len(column), -1).sum(axis=0, keepdims=True)
        count = np.array([table.column(N_ROWS).to_numpy().sum()])
        vectors = improved_fisher_vectors(sums[:, n_components:], count)
        return pa.Table.from_arrays(
            [table.column(bag_column).slice(0, 1), pa.array(count),
             dense_list_column(sums[:, :n_components] / count[:, None]),
             dense_list_column(vectors)], schema=schema)

    def finish(table: pa.Table) -> pa.Table:
        # applyInArrow counts the function's named arguments, which spark_task's wrapper hides
        return finish_bag(table)

    return finish


def features_to_delta(spark: SparkSession, frame: DataFrame, table: str, *, model_name: str,
                      model_version: str, engine: str = "auto") -> TableWrite:
    """Write feature rows (:func:`entity_features` / :func:`bag_features`) with
    ``model_name`` and ``model_version`` columns to Delta ``table``, replacing its rows and
    schema in one transaction."""
    rows = frame.select("*", F.lit(model_name).alias(MODEL_NAME),
                        F.lit(str(model_version)).alias(MODEL_VERSION))
    with translated_errors():
        return write_table(spark, rows, table, mode="overwrite", engine=engine)
