"""The Spark ML model and the registered MLflow (pyfunc) model convert into each other.

Both hold the same :class:`~mmgmm_spark.models.detector.AnomalyDetector` (mixture + threshold),
so a model fitted with ``pyspark.ml`` can be logged and registered like the jobs' models, and a
registered model (``models:/name@champion``) can be a stage of a ``pyspark.ml`` Pipeline. Only
plain ``joint`` mixtures convert: a :class:`~mmgmm_spark.models.fusion.FusionModel`
(preprocessing, ``early`` or ``late`` fusion) has no single mixture to expose as a Spark ML model.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from mmgmm_spark.ml.estimator import MultimodalGaussianMixtureModel
from mmgmm_spark.models.mixture import MultimodalGaussianMixture
from mmgmm_spark.tracking.pyfunc import input_example, load_detector, log_detector

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

EXAMPLE_ROWS = 3


def from_mlflow(model_uri: str) -> MultimodalGaussianMixtureModel:
    """The Spark ML model of a logged or registered detector (``models:/name@alias``, ``runs:/
    ...``); its ``featuresCols`` are the model's modality names."""
    detector = load_detector(model_uri)
    if not isinstance(detector.model, MultimodalGaussianMixture):
        raise TypeError(
            f"{model_uri} is a '{detector.fusion.name}' fusion model with preprocessing or "
            "several mixtures; only a plain joint mixture converts to a Spark ML model. Score "
            "it with `mmgmm score` or mmgmm_spark.tracking.score_udf instead.")
    return MultimodalGaussianMixtureModel(detector)


def to_mlflow(model: MultimodalGaussianMixtureModel, *, name: str = "model",
              registered_model_name: str | None = None) -> ModelInfo:
    """Log ``model`` to the active MLflow run as the jobs' pyfunc model (and register it if a
    name is given); its input example is rows sampled from the mixture."""
    example, _ = model.mixture.sample(EXAMPLE_ROWS)
    with tempfile.TemporaryDirectory(prefix="mmgmm-ml-") as staging:
        return log_detector(model.detector, input_example(example), name=name,
                            registered_model_name=registered_model_name, staging_dir=staging)
