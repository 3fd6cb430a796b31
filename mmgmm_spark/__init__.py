"""mmgmm-spark: multimodal Gaussian mixture models on Spark for unsupervised anomaly detection."""

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
__version__ = "0.1.0"
