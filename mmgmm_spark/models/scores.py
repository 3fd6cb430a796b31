"""The scoring output schema: every column a scored row has, declared once.

In-memory scoring (:meth:`mmgmm_spark.models.detector.AnomalyDetector.score_batch`), Spark
scoring (:func:`mmgmm_spark.spark.score.score_dataframe`, which builds its Spark schema from
:attr:`ScoreColumn.spark_type`), the MLflow pyfunc signature
(:func:`mmgmm_spark.tracking.pyfunc.model_signature`, from :attr:`ScoreColumn.mlflow_type`),
the pipeline, the demo and the notebooks read the names and types from here. To add an output
column: declare it here (in :data:`SCORE_COLUMNS`) and compute it in :func:`score_columns`.

Types are given by name so this module needs neither Spark nor MLflow: ``spark_type`` is the
type in Spark's JSON form (``pyspark.sql.types.StructField.fromJson``), ``mlflow_type`` the
name of an ``mlflow.types.DataType`` (None: not in the pyfunc output).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ScoreColumn:
    """One output column of scoring.

    Attributes:
        name: column name.
        dtype: numpy dtype of its (n,) array (``responsibilities``: of the (n, K) array).
        spark_type: Spark SQL type in Spark's JSON form (``"double"``, ``{"type": "array",
            ...}``).
        mlflow_type: ``mlflow.types.DataType`` name in the pyfunc signature, or None when the
            pyfunc model does not return it.
        description: what it holds.
    """

    name: str
    dtype: type[np.generic]
    spark_type: str | dict[str, Any]
    mlflow_type: str | None
    description: str

    def spark_field(self) -> dict[str, Any]:
        """The column as a Spark ``StructField`` JSON value (nullable)."""
        return {"name": self.name, "type": self.spark_type, "nullable": True, "metadata": {}}


LOG_LIKELIHOOD = ScoreColumn(
    "log_likelihood", np.float64, "double", "double",
    "log p(row) under the model, preprocessing included (late fusion: the fused, unitless "
    "mean of the standardised per-modality log-likelihoods)")
ANOMALY_SCORE = ScoreColumn("anomaly_score", np.float64, "double", "double",
                            "-log_likelihood: higher is more anomalous")
CALIBRATED_SCORE = ScoreColumn(
    "calibrated_score", np.float64, "double", "double",
    "-log10 of the training tail probability of anomaly_score among training rows with the "
    "same observed modalities (see mmgmm_spark.core.calibration; NaN: a model saved without "
    "a calibration table)")
IS_ANOMALY = ScoreColumn("is_anomaly", np.bool_, "boolean", "boolean",
                         "calibrated_score > -log10(contamination): the same false-positive "
                         "rate for every missingness pattern (a model without a calibration "
                         "table: anomaly_score > its training threshold)")
CLUSTER = ScoreColumn("cluster", np.int32, "integer", "integer",
                      "most probable mixture component (late: of the first observed modality)")
RESPONSIBILITIES = ScoreColumn(
    "responsibilities", np.float64,
    {"type": "array", "elementType": "double", "containsNull": False}, None,
    "(K,) posterior probability of each component (optional; not for late fusion)")

SCORE_COLUMNS = (LOG_LIKELIHOOD, ANOMALY_SCORE, CALIBRATED_SCORE, IS_ANOMALY, CLUSTER)
"""The columns every scored row has, in order, before the per-modality columns."""

MODALITY_SUFFIX = "_log_likelihood"

MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORING_RUN_ID = "scoring_run_id"
SCORED_AT = "scored_at"
"""Columns the Delta output table adds to each scored row: the registered model's name and
version, the scoring run id (the unit a re-run replaces) and the UTC time (timestamp_ntz)."""


def modality_column(name: str) -> str:
    """Output column of modality ``name``'s marginal log-likelihood."""
    return f"{name}{MODALITY_SUFFIX}"


def modality_score_column(name: str) -> ScoreColumn:
    """The :class:`ScoreColumn` of modality ``name``'s marginal log-likelihood."""
    return ScoreColumn(modality_column(name), np.float64, "double", "double",
                       f"marginal log-density of modality '{name}' (NaN: missing)")


def output_schema(modality_names: Iterable[str], responsibilities: bool = False
                  ) -> list[ScoreColumn]:
    """The output columns, in order, of a model of these modalities."""
    columns = [*SCORE_COLUMNS, *(modality_score_column(name) for name in modality_names)]
    return [*columns, RESPONSIBILITIES] if responsibilities else columns


def score_columns(log_likelihood: np.ndarray, cluster: np.ndarray,
                  modality_values: Mapping[str, np.ndarray], threshold: float | None,
                  calibrated: np.ndarray | None = None,
                  calibrated_threshold: float | None = None) -> dict[str, np.ndarray]:
    """The output columns (without responsibilities), each (n,), in order.

    Args:
        log_likelihood: (n,) the model's log-likelihood of each row.
        cluster: (n,) most probable component.
        modality_values: {modality: (n,) its marginal log-likelihood}, in modality order.
        threshold: the raw anomaly-score threshold, used to flag rows when there is no
            calibrated score (None: nothing is flagged).
        calibrated: (n,) calibrated scores, or None (the column is NaN).
        calibrated_threshold: the calibrated-score threshold, used with ``calibrated``.
    """
    anomaly_score = -log_likelihood
    if calibrated is None:
        calibrated = np.full(anomaly_score.shape, np.nan)
        flagged = anomaly_score > (np.inf if threshold is None else threshold)
    else:
        flagged = calibrated > calibrated_threshold
    values = {LOG_LIKELIHOOD.name: log_likelihood, ANOMALY_SCORE.name: anomaly_score,
              CALIBRATED_SCORE.name: calibrated, IS_ANOMALY.name: flagged,
              CLUSTER.name: cluster}
    values.update({modality_column(name): v for name, v in modality_values.items()})
    schema = output_schema(modality_values)
    return {c.name: np.asarray(values[c.name]).astype(c.dtype, copy=False) for c in schema}
