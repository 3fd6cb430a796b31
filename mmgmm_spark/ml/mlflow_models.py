"""The Spark ML model and the registered MLflow (pyfunc) model convert into each other.

Both hold the same :class:`~mmgmm_spark.models.detector.AnomalyDetector` (model + threshold +
calibration), so a model fitted with ``pyspark.ml`` can be logged and registered like the
jobs' models, and any registered model (``models:/name@champion``) can be a stage of a
``pyspark.ml`` Pipeline: a plain ``joint`` mixture, or a
:class:`~mmgmm_spark.models.fusion.FusionModel` (preprocessing, ``early`` or ``late`` fusion;
see :class:`~mmgmm_spark.ml.estimator.MultimodalGaussianMixtureModel` for what its ``k``,
``probabilityCol`` and parameter properties are then).
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import numpy as np

from mmgmm_spark.ml.estimator import MultimodalGaussianMixtureModel
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.fusion import FusionModel
from mmgmm_spark.tracking.pyfunc import input_example, load_detector, log_detector

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

EXAMPLE_ROWS = 3


def from_mlflow(model_uri: str) -> MultimodalGaussianMixtureModel:
    """The Spark ML model of a logged or registered detector (``models:/name@alias``, ``runs:/
    ...``), plain mixture or fusion model; its ``featuresCols`` are the model's modality
    names."""
    return MultimodalGaussianMixtureModel(load_detector(model_uri))


def example_rows(detector: AnomalyDetector) -> dict[str, np.ndarray]:
    """{modality: (EXAMPLE_ROWS, d_m)} rows for the logged model's input example: sampled from
    a plain mixture; a fusion model has no sampler, so its preprocessing's centre (the
    training mean where standardised, else zeros), repeated."""
    model = detector.model
    if isinstance(model, FusionModel):
        return {m.name: np.tile(model.preprocessors_[m.name].mean, (EXAMPLE_ROWS, 1))
                for m in detector.modalities}
    return model.sample(EXAMPLE_ROWS)[0]


def to_mlflow(model: MultimodalGaussianMixtureModel, *, name: str = "model",
              registered_model_name: str | None = None) -> ModelInfo:
    """Log ``model``'s detector (plain mixture or fusion model) to the active MLflow run as the
    jobs' pyfunc model (and register it if a name is given); its input example is
    :func:`example_rows`."""
    with tempfile.TemporaryDirectory(prefix="mmgmm-ml-") as staging:
        return log_detector(model.detector, input_example(example_rows(model.detector)),
                            name=name, registered_model_name=registered_model_name,
                            staging_dir=staging)
