"""The detector as an MLflow pyfunc model: arrays + JSON artifacts, nothing pickled.

The model directory logged to MLflow holds the :meth:`AnomalyDetector.save` directory as the
artifact ``detector`` and this package's ``pyfunc_entry.py`` as "model from code", so MLflow
pickles nothing; :meth:`AnomalyDetectorPyfunc.load_context` reads the arrays back with
:meth:`AnomalyDetector.load` (which validates them).

Input: a pandas DataFrame with one column per modality, each cell a sequence of ``d_m``
floats or ``None`` (modality missing for that row). Output: a DataFrame with the columns of
:meth:`AnomalyDetector.output_columns` (``log_likelihood``, ``anomaly_score``, ``is_anomaly``,
``cluster``, ``<modality>_log_likelihood``; names and types: :mod:`mmgmm_spark.models.scores`).

On Spark, ``mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")`` infers the struct
result type from the signature; call it with the modality columns in signature order::

    udf = mlflow.pyfunc.spark_udf(spark, "models:/mmgmm@champion", env_manager="local")
    scored = df.withColumn("score", udf(*[F.col(m) for m in modality_names]))
    scored.select("id", "score.*")

(:func:`score_udf` does exactly this.) The Spark-native batch scorer is
:func:`mmgmm_spark.spark.score.score_dataframe`, which skips the pandas conversion.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import Array, ColSpec, DataType, Schema

from mmgmm_spark.core.batch import Batch, check_batch
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.spark.arrow import block_from_arrow

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from pyspark.sql import Column, SparkSession

DETECTOR_ARTIFACT = "detector"
ENTRY_FILE = os.path.join(os.path.dirname(__file__), "pyfunc_entry.py")


def frame_to_batch(frame: pd.DataFrame, modalities: tuple[Modality, ...],
                   source: str = "pyfunc input") -> Batch:
    """Validated :class:`Batch` from a DataFrame with one array column per modality.

    A cell that is ``None`` (or a column that is absent) means the modality is missing.
    """
    blocks = {}
    for m in modalities:
        if m.name in frame.columns:
            cells = [None if _is_missing(v) else np.asarray(v, dtype=np.float64)
                     for v in frame[m.name]]
        else:
            cells = [None] * len(frame)
        column = pa.array(cells, type=pa.list_(pa.float64()))
        blocks[m.name] = block_from_arrow(column, m, source)
    return check_batch(len(frame), blocks, source)


def _is_missing(value: Any) -> bool:
    return value is None or (np.isscalar(value) and pd.isna(value))


def predict_frame(detector: AnomalyDetector, frame: pd.DataFrame) -> pd.DataFrame:
    """(n rows) -> DataFrame of :meth:`AnomalyDetector.output_columns`, each (n,)."""
    columns = detector.score_batch(frame_to_batch(frame, detector.modalities))
    return pd.DataFrame({name: columns[name] for name in detector.output_columns()},
                        index=frame.index)


class AnomalyDetectorPyfunc(PythonModel):
    """pyfunc wrapper; holds no state until :meth:`load_context` reads the artifact."""

    def __init__(self) -> None:
        self.detector: AnomalyDetector | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self.detector = AnomalyDetector.load(context.artifacts[DETECTOR_ARTIFACT])

    def predict(self, context: PythonModelContext | None, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.detector is None:
            raise RuntimeError("AnomalyDetectorPyfunc.predict before load_context.")
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return predict_frame(self.detector, model_input)


def model_signature(detector: AnomalyDetector) -> ModelSignature:
    """Inputs: one optional ``array<double>`` column per modality; outputs: the score columns
    with the MLflow types of :mod:`mmgmm_spark.models.scores`."""
    inputs = Schema([ColSpec(Array(DataType.double), m.name, required=False)
                     for m in detector.modalities])
    outputs = Schema([ColSpec(DataType[c.mlflow_type], c.name)
                      for c in detector.output_schema()])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(data: Mapping[str, np.ndarray], n_rows: int = 3) -> pd.DataFrame:
    """First ``n_rows`` rows of a dict of (n, d_m) arrays as pyfunc input (NaN row -> None)."""
    return pd.DataFrame({name: [None if np.isnan(row).all() else row.tolist()
                                for row in np.asarray(values)[:n_rows]]
                         for name, values in data.items()})


def pip_requirements() -> list[str]:
    """Pinned runtime requirements (explicit, so MLflow does not import-trace the model)."""
    from importlib.metadata import version

    packages = ("mlflow", "numpy", "pandas", "pyarrow", "mmgmm-spark")
    return [f"{name}=={version(name)}" for name in packages]


def entry_file(staging_dir: str) -> str:
    """A real file holding ``pyfunc_entry.py``: MLflow's "model from code" needs a path, and
    the package may be imported from a zip (``spark-submit --py-files``), where
    :data:`ENTRY_FILE` is not a file; then the source is copied into ``staging_dir``."""
    if os.path.isfile(ENTRY_FILE):
        return ENTRY_FILE
    copy = os.path.join(staging_dir, "pyfunc_entry.py")
    source = importlib.resources.files("mmgmm_spark.tracking").joinpath("pyfunc_entry.py")
    with open(copy, "w", encoding="utf-8") as out:
        out.write(source.read_text(encoding="utf-8"))
    return copy


def log_detector(detector: AnomalyDetector, example: pd.DataFrame, *, name: str = "model",
                 registered_model_name: str | None = None, staging_dir: str) -> ModelInfo:
    """Log ``detector`` to the active run as a pyfunc model (and register it if a name is given).

    Args:
        example: a few input rows (see :func:`input_example`), stored with the model.
        staging_dir: an empty local directory for the ``AnomalyDetector.save`` files.
    """
    detector_dir = os.path.join(staging_dir, DETECTOR_ARTIFACT)
    detector.save(detector_dir)
    return mlflow.pyfunc.log_model(
        name=name, python_model=entry_file(staging_dir),
        artifacts={DETECTOR_ARTIFACT: detector_dir},
        signature=model_signature(detector), input_example=example,
        registered_model_name=registered_model_name, pip_requirements=pip_requirements())


def load_detector(model_uri: str) -> AnomalyDetector:
    """The :class:`AnomalyDetector` inside a logged model (``models:/name@alias``...)."""
    python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(python_model, AnomalyDetectorPyfunc) or python_model.detector is None:
        raise TypeError(f"{model_uri} is not an mmgmm-spark anomaly detector model.")
    return python_model.detector


def score_udf(spark: SparkSession, model_uri: str, modality_names: list[str]) -> Column:
    """The struct column of scores for columns named after the modalities (env_manager local)."""
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local")
    return udf(*[F.col(name) for name in modality_names])
