"""The model's ``transform``: distributed scoring that appends the output columns.

The score columns, their order and types are :mod:`mmgmm_spark.models.scores`' (renamed to
Spark ML's camelCase: ``log_likelihood`` -> ``logLikelihood``, ``cluster`` -> the
``predictionCol``, ``<modality>_log_likelihood`` -> ``<modality>LogLikelihood``), computed by
:meth:`~mmgmm_spark.models.detector.AnomalyDetector.score_batch` in ``mapInArrow`` tasks; the
probability vector is the detector's responsibilities. Every input column passes through
unchanged (vectors included); nothing is collected. A fusion model whose strategy has no
responsibilities (``late``) has no probability vector: ``probabilityCol`` must be "".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pyarrow as pa
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.scores import ScoreColumn, modality_column
from mmgmm_spark.spark.arrow import batch_from_arrow, list_column
from mmgmm_spark.spark.data import features_column
from mmgmm_spark.spark.tasks import spark_task
from mmgmm_spark.storage.tables import NUMERIC_ELEMENTS

MODALITY_SUFFIX = "LogLikelihood"
INPUT_PREFIX = "__mmgmm_input_"
PROBABILITY_ARRAY = "__mmgmm_probability"


def camel_case(name: str) -> str:
    """``anomaly_score`` -> ``anomalyScore``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def ml_names(detector: AnomalyDetector, named: Mapping[str, str]) -> dict[str, str]:
    """{score column: output column} in the schema's order; an empty name is not output.

    ``named`` maps score column names to the Params' output names; a modality's column is
    ``<modality>LogLikelihood`` and any other column its camelCase name.
    """
    modalities = {modality_column(m.name): m.name + MODALITY_SUFFIX for m in detector.modalities}
    names = {c.name: named.get(c.name, modalities.get(c.name) or camel_case(c.name))
             for c in detector.output_schema()}
    return {score: name for score, name in names.items() if name}


def check_input_schema(schema: T.StructType, columns: list[str], outputs: list[str]) -> None:
    """Every features column present and of a features type; no output column present."""
    for column in columns:
        if column not in schema.names:
            raise DataValidationError(
                f"featuresCols column '{column}' is not in the DataFrame (columns: "
                f"{schema.names}); set featuresCols to the modality columns.")
        kind = schema[column].dataType
        if not (isinstance(kind, VectorUDT) or isinstance(kind, T.ArrayType)
                and isinstance(kind.elementType, NUMERIC_ELEMENTS)):
            raise DataValidationError(
                f"featuresCols column '{column}' has type {kind.simpleString()}; features "
                "must be array<double>, array<float> or a Spark ML vector.")
    clashes = sorted(set(outputs) & set(schema.names))
    if clashes:
        raise DataValidationError(
            f"Output column(s) {clashes} already exist in the DataFrame; drop them or set "
            "other output column Params (e.g. setPredictionCol).")


def output_fields(detector: AnomalyDetector, names: Mapping[str, str]) -> list[T.StructField]:
    """The score columns as Spark fields under their output names."""
    schema = {c.name: c for c in detector.output_schema()}
    return [_field(schema[score], name) for score, name in names.items()]


def _field(column: ScoreColumn, name: str) -> T.StructField:
    return T.StructField.fromJson({**column.spark_field(), "name": name})


def transformed_schema(schema: T.StructType, detector: AnomalyDetector,
                       names: Mapping[str, str], probability_col: str) -> T.StructType:
    """``schema`` plus the output columns (the probability vector last, if named)."""
    if probability_col and not detector.fusion.responsibilities:
        raise ValueError(
            f"Param probabilityCol is '{probability_col}' but a '{detector.fusion.name}' "
            "fusion model has no component probabilities (one mixture per modality): "
            "setProbabilityCol('').")
    check_input_schema(schema, [m.name for m in detector.modalities],
                       [*names.values(), *([probability_col] if probability_col else [])])
    fields = [*schema.fields, *output_fields(detector, names)]
    if probability_col:
        fields.append(T.StructField(probability_col, VectorUDT(), True))
    return T.StructType(fields)


def score_frame(dataset: DataFrame, detector: AnomalyDetector, names: Mapping[str, str],
                probability_col: str, source: str = "DataFrame") -> DataFrame:
    """``dataset`` with the output columns appended (lazy; see the module docstring).

    Args:
        dataset: rows with one features column per modality, named after it (null = missing).
        detector: the fitted detector.
        names: {score column: output column}, see :func:`ml_names`.
        probability_col: output column of the (K,) probability vector ("" = none).
        source: the data's name in errors.
    """
    schema = transformed_schema(dataset.schema, detector, names, probability_col)
    modalities = detector.modalities
    inputs = [f"{INPUT_PREFIX}{i}" for i in range(len(modalities))]
    frame = dataset.select("*", *[features_column(dataset, m.name, source).alias(column)
                                  for m, column in zip(modalities, inputs, strict=True)])
    passed = len(dataset.columns)
    fields = list(schema.fields[:passed + len(names)])
    if probability_col:
        fields.append(T.StructField(PROBABILITY_ARRAY, T.ArrayType(T.DoubleType(), False)))
    out_names = [f.name for f in fields]

    @spark_task
    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            if record_batch.num_rows == 0:
                continue
            features = pa.RecordBatch.from_arrays(
                [record_batch.column(c) for c in inputs], names=[m.name for m in modalities])
            batch = batch_from_arrow(features, modalities, source)
            columns = detector.score_batch(batch)
            arrays = [*record_batch.columns[:passed], *(pa.array(columns[s]) for s in names)]
            if probability_col:
                arrays.append(list_column(detector.responsibilities(batch)))  # (n, K)
            yield pa.RecordBatch.from_arrays(arrays, names=out_names)

    scored = frame.mapInArrow(score_partition, T.StructType(fields))
    if not probability_col:
        return scored
    return scored.withColumn(probability_col, array_to_vector(F.col(PROBABILITY_ARRAY))).drop(
        PROBABILITY_ARRAY)
