"""Saving and loading the Spark ML model: Spark's metadata + the model file codec, no pickle.

A saved model directory (written by Spark, so any Hadoop file system and Spark Connect work):

* ``metadata/`` — Spark's DefaultParams JSON (class, uid, Spark version, params) with
  ``mmgmmFormat`` (:data:`ML_FORMAT`), as ``PipelineModel.load`` expects of a Python stage;
* ``model/`` — one JSON text line: the detector's document
  (:meth:`~mmgmm_spark.models.detector.AnomalyDetector.to_parts`): for a plain mixture
  :func:`mmgmm_spark.io.model_files.model_document` (format ``mmgmm-spark/1``, modalities,
  hyperparameters, fit history, contamination, threshold and calibration); for a fusion model
  (preprocessing, ``early`` or ``late``) :func:`mmgmm_spark.models.fusion.fusion_document`
  (format ``mmgmm-spark-fusion/1``: ``fusion.json`` with each mixture's model document);
* ``arrays/`` — Parquet rows ``(name, shape, values)``: the detector's arrays (a fusion
  model's named ``<part>/<name>``), float64 values in C order.

The layout is the same for both kinds (the document names its own format), so
:data:`ML_FORMAT` is unchanged and models saved before fusion stages existed load as before.
Loading checks the format, then validates the JSON and every array as model files do
(:meth:`~mmgmm_spark.models.detector.AnomalyDetector.from_parts`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter
from pyspark.sql import SparkSession

from mmgmm_spark.io.model_files import ModelFormatError
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.spark.session import has_rdd_api

ML_FORMAT = "mmgmm-spark-ml/1"
FORMAT_KEY = "mmgmmFormat"
SKIPPED_PARAMS = ("initialModel",)
"""Params whose value is not JSON (a model): never written to the metadata."""


class SavedModel(Protocol):
    """What the writer needs of a model (the Spark ML model, without importing it here)."""

    detector: AnomalyDetector
    uid: str


def json_params(instance: Any) -> dict[str, Any]:
    """The explicitly set Params of ``instance`` that go to the metadata JSON."""
    return {p.name: v for p, v in instance._paramMap.items() if p.name not in SKIPPED_PARAMS}


class ModelWriter(MLWriter):
    """Writes a fitted model as described in the module docstring."""

    def __init__(self, instance: SavedModel) -> None:
        super().__init__()
        self.instance = instance

    def _handleOverwrite(self, path: str) -> None:
        if has_rdd_api(self.sparkSession):
            super()._handleOverwrite(path)
            return
        from pyspark.ml.connect.readwrite import RemoteMLWriter

        RemoteMLWriter.handleOverwrite(path, True)

    def saveImpl(self, path: str) -> None:
        spark = self.sparkSession
        DefaultParamsWriter.saveMetadata(self.instance, path, spark,
                                         extraMetadata={FORMAT_KEY: ML_FORMAT},
                                         paramMap=json_params(self.instance))
        document, arrays = self.instance.detector.to_parts()
        spark.createDataFrame([(json.dumps(document),)], "value string") \
            .coalesce(1).write.text(os.path.join(path, "model"))
        spark.createDataFrame(arrays_table(arrays)).coalesce(1).write.parquet(
            os.path.join(path, "arrays"))


def arrays_table(arrays: dict[str, np.ndarray]) -> pa.Table:
    """One row per array: name, shape (list of int64), values (float64, C order)."""
    names = sorted(arrays)
    return pa.table({
        "name": pa.array(names, pa.string()),
        "shape": pa.array([list(arrays[n].shape) for n in names], pa.list_(pa.int64())),
        "values": pa.array([np.ascontiguousarray(arrays[n], np.float64).ravel() for n in names],
                           pa.list_(pa.float64()))})


def table_arrays(table: pa.Table, where: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`arrays_table` (a :class:`ModelFormatError` naming ``where``)."""
    arrays = {}
    for row in table.to_pylist():
        values, shape = np.asarray(row["values"], np.float64), tuple(row["shape"] or ())
        if row["name"] in arrays or values.size != int(np.prod(shape)):
            raise ModelFormatError(f"{where}: array '{row['name']}' is repeated or its "
                                   f"{values.size} values do not fill shape {shape}.")
        arrays[row["name"]] = values.reshape(shape)
    return arrays


class ModelReader(MLReader):
    """Reads what :class:`ModelWriter` wrote, validating format, JSON and arrays."""

    def __init__(self, cls: type[SavedModel]) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> SavedModel:
        spark = self.sparkSession
        metadata = DefaultParamsReader.loadMetadata(path, spark)
        if metadata.get(FORMAT_KEY) != ML_FORMAT:
            raise ModelFormatError(f"{path}/metadata is not an {ML_FORMAT} model (found "
                                   f"{FORMAT_KEY}={metadata.get(FORMAT_KEY)!r}).")
        instance = self.cls(read_detector(spark, path))
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


def read_detector(spark: SparkSession, path: str) -> AnomalyDetector:
    """The detector stored under ``path/model`` and ``path/arrays``."""
    where = os.path.join(path, "model")
    with missing_part(where):
        line = spark.read.text(where).first()
    try:
        document = json.loads(line[0])
    except (TypeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{where} is not one line of model JSON: {e}") from None
    arrays_dir = os.path.join(path, "arrays")
    with missing_part(arrays_dir):
        table = spark.read.parquet(arrays_dir).toArrow()
    return AnomalyDetector.from_parts(document, table_arrays(table, arrays_dir), path)


@contextlib.contextmanager
def missing_part(where: str) -> Iterator[None]:
    """Spark's error for an absent or unreadable part of a saved model as a ModelFormatError."""
    try:
        yield
    except AnalysisException as e:
        raise ModelFormatError(
            f"{where} cannot be read ({e.getCondition() or 'AnalysisException'}): the "
            "directory is not a complete saved mmgmm-spark Spark ML model; save it again.") \
            from None
