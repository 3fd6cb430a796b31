"""scikit-learn faces of the package's mixture (layer 4: imports ``models`` and ``core`` only).

:class:`MultimodalGaussianMixture` is a density estimator with
``sklearn.mixture.GaussianMixture``'s conventions, :class:`MultimodalAnomalyDetector` an
outlier detector with ``IsolationForest``'s; both take (n, d) arrays whose columns are one
modality, or several as column groups (NaN over a group = that modality missing for the row).
"""

from mmgmm_spark.sklearn.estimators import (
    MultimodalAnomalyDetector,
    MultimodalGaussianMixture,
    weighted_quantile,
)

__all__ = ["MultimodalAnomalyDetector", "MultimodalGaussianMixture", "weighted_quantile"]
