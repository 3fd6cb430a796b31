"""mmgmm-spark: multimodal Gaussian mixture models on Spark for unsupervised anomaly detection.

The package is layered; each folder imports only the folders above it in this list
(``tests/test_architecture.py`` checks it):

====================  =====================================================================
``core``              numpy/scipy math: modalities, validated batches, covariance types,
                      densities, EM statistics, the EM driver (``core.em.fit_em``), the
                      hyperparameter spec, preprocessing; no Spark, no I/O
``io``                model files and checkpoints: one array codec, one set of validation
                      rules, plain arrays + JSON (never pickle)
``models``            the estimators users hold: the mixture, the fusion strategies, the
                      detector, the scoring output schema, evaluation metrics
``storage``           Delta tables (delta-spark / delta-rs engines); beside ``models``, and
                      neither imports the other
``spark``             session, Arrow conversion, cached blocks, the distributed statistics
                      pass, distributed scoring and thresholds
``tracking``          MLflow: tracked fits, sweeps, late fusion, pyfunc, registry, retries
``ml``                ``pyspark.ml`` Estimator/Model stages and their persistence; beside
                      ``tracking`` (it converts to and from the MLflow model), never imported
                      by it
``sklearn``           scikit-learn estimators over (n, d) arrays (``models`` and ``core`` only)
``app``               configuration, the jobs as library functions, CLI, demo, ingest
====================  =====================================================================

``jobs/`` and ``notebooks/`` call ``app`` only. A lower layer reaches a higher one only through
a registration: ``spark.fit`` registers Spark DataFrames as training data
(``core.training.register_source``), which is why this module imports it — so
``MultimodalGaussianMixture.fit(df)`` works without ``models`` importing Spark.
"""

from importlib.metadata import PackageNotFoundError, version

import mmgmm_spark.spark.fit  # noqa: F401  (registers Spark DataFrames as training data)
from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.em import ConvergenceWarning
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import DegenerateComponentError, DegenerateComponentWarning
from mmgmm_spark.io.model_files import ModelFormatError
from mmgmm_spark.models.mixture import MultimodalGaussianMixture, NotFittedError

__all__ = [
    "ConvergenceWarning",
    "DataValidationError",
    "DegenerateComponentError",
    "DegenerateComponentWarning",
    "Modality",
    "ModelFormatError",
    "MultimodalGaussianMixture",
    "NotFittedError",
]
try:
    __version__ = version("mmgmm-spark")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
