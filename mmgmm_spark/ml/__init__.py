"""``pyspark.ml`` face of the mixture: an Estimator, its Model and their persistence.

:class:`MultimodalGaussianMixture` (``pyspark.ml.Estimator``) fits with the project's
distributed EM; :class:`MultimodalGaussianMixtureModel` (``pyspark.ml.Model``) appends the
score columns of :mod:`mmgmm_spark.models.scores` in Spark ML's naming; both are Pipeline
stages, saved as arrays + JSON (never pickle). :func:`from_mlflow` / :func:`to_mlflow` convert
to and from the registered MLflow model. This folder sits beside ``tracking`` (layer 4) and may
import it; ``tracking`` never imports ``ml``.
"""

from mmgmm_spark.ml.estimator import (
    MultimodalGaussianMixture,
    MultimodalGaussianMixtureModel,
    MultimodalGaussianMixtureSummary,
)
from mmgmm_spark.ml.mlflow_models import from_mlflow, to_mlflow

__all__ = [
    "MultimodalGaussianMixture",
    "MultimodalGaussianMixtureModel",
    "MultimodalGaussianMixtureSummary",
    "from_mlflow",
    "to_mlflow",
]
