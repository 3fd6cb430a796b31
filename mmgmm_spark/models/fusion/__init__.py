"""Fusion strategies for multimodal anomaly detection, with per-modality preprocessing.

Three ways to turn several feature blocks into one anomaly score, from one configuration
(:class:`FusionConfig`) and one estimator (:class:`FusionModel`), each one object
(:class:`FusionStrategy`) in a module of its own, registered by name in :data:`STRATEGIES`:

``joint`` (:mod:`.joint`)
    The block-diagonal multimodal mixture (:class:`MultimodalGaussianMixture`): components
    are products of per-modality Gaussians; a row missing a modality marginalises it out.
``early`` (:mod:`.early`)
    All (preprocessed) modalities concatenated into one block with one covariance (full by
    default), the scikit-learn approach. Fitted on the rows that observe every modality; a
    row missing a modality is scored by the exact Gaussian marginal over its observed
    coordinates.
``late`` (:mod:`.late`)
    One mixture per modality. Each modality's log-likelihood is standardised by its training
    mean and standard deviation; the fused value is the mean over the modalities the row
    observes.

Each strategy declares what it supports (``resume``, ``sweep``, ``responsibilities``,
``fusion_weights``, ``per_modality``...; see :class:`FusionStrategy`): callers ask
:func:`get_strategy` (an unknown name is an error naming the known ones) or
``FusionConfig.fusion`` / ``FusionModel.fusion`` instead of comparing names. To add a
strategy: a module with a :class:`FusionStrategy` subclass, and its instance in
:data:`STRATEGIES` (:mod:`.registry`).

Every modality is optionally standardised and, when wide, projected by PCA
(:mod:`mmgmm_spark.core.preprocessing`); the discarded directions stay in the density as
isotropic noise and the Jacobians are included, so ``log_likelihood`` of ``joint`` and
``early`` is a log-density of the input rows. The number of components K, the covariance
type, whether to standardise and (optionally) the projection size q are chosen by BIC over a
small grid (:mod:`.selection`): labels are never used. On Spark the preprocessing is fitted
from moments and the model assembled by :mod:`.preprocessing`. Two in-memory options score by
a rank average of several mixtures instead of one (``joint`` and ``early``): every admissible
K x covariance type of the grid (``ensemble``, :mod:`.ensemble`), or mixtures selected on
random subspaces of the features (``subspaces``, :mod:`.subspaces`).

Output columns of :meth:`FusionModel.columns` per strategy:

============================ ================================ ================================
column                       joint / early                    late
============================ ================================ ================================
log_likelihood               log p(row) (input units,         mean over observed modalities of
                             PCA residual included)           (ll_m - mean_m) / std_m (unitless)
cluster                      most probable component          most probable component of the
                                                              first observed modality's mixture
<modality>_log_likelihood    marginal log-density of the      that modality's own mixture
                             modality's block (NaN: missing)  log-density (NaN: missing)
============================ ================================ ================================
"""

from mmgmm_spark.models.fusion.base import EARLY, JOINT, FusionStrategy
from mmgmm_spark.models.fusion.config import (
    FUSION_PARAM,
    PREPROCESSING_PREFIX,
    FusionConfig,
    preprocessing_params,
)
from mmgmm_spark.models.fusion.early import concatenated, early_covariance_type
from mmgmm_spark.models.fusion.files import (
    FusionFile,
    fusion_arrays,
    fusion_document,
    fusion_file_from,
    is_fusion_artefact,
    is_fusion_document,
)
from mmgmm_spark.models.fusion.model import FusionModel
from mmgmm_spark.models.fusion.preprocessing import (
    LatePart,
    Preprocessing,
    late_model,
    observing,
)
from mmgmm_spark.models.fusion.registry import STRATEGIES, either, get_strategy, names_with
from mmgmm_spark.models.fusion.selection import FusionCandidate

__all__ = [
    "EARLY",
    "FUSION_PARAM",
    "JOINT",
    "PREPROCESSING_PREFIX",
    "STRATEGIES",
    "FusionCandidate",
    "FusionConfig",
    "FusionFile",
    "FusionModel",
    "FusionStrategy",
    "LatePart",
    "Preprocessing",
    "concatenated",
    "early_covariance_type",
    "either",
    "fusion_arrays",
    "fusion_document",
    "fusion_file_from",
    "get_strategy",
    "is_fusion_artefact",
    "is_fusion_document",
    "late_model",
    "names_with",
    "observing",
    "preprocessing_params",
]
