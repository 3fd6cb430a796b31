"""The anomaly detector: a fitted mixture plus the anomaly threshold, scored row by row.

This is what is saved, logged to MLflow, registered and loaded for scoring. The anomaly
score of a row is its negative log-likelihood; the threshold is the (1 - contamination)
quantile of the training scores, stored with the model so scoring needs no second pass.

``model`` may also be a :class:`mmgmm_spark.models.fusion.FusionModel` (per-modality preprocessing
+ ``joint``/``early``/``late`` fusion): the artefact then covers preprocessing, strategy,
mixture(s) and threshold, and :meth:`AnomalyDetector.score_batch` returns the same columns
(see :mod:`mmgmm_spark.models.fusion` for their meaning under ``late``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mmgmm_spark.core.batch import Batch, batch_from_arrays
from mmgmm_spark.core.densities import (
    modality_log_likelihoods,
    normalise_log_prob,
    weighted_log_prob,
)
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.fusion import (
    JOINT,
    FusionModel,
    FusionStrategy,
    get_strategy,
    is_fusion_artefact,
)
from mmgmm_spark.models.mixture import MultimodalGaussianMixture, load_model, save_model
from mmgmm_spark.models.scores import (
    CLUSTER,
    LOG_LIKELIHOOD,
    ScoreColumn,
    output_schema,
    score_columns,
)

__all__ = ["AnomalyDetector"]


class AnomalyDetector:
    """A fitted :class:`MultimodalGaussianMixture` with its anomaly threshold.

    Args:
        model: a fitted mixture, or a fitted :class:`FusionModel`.
        contamination: expected fraction of anomalies in the training data, in (0, 0.5).
        threshold: anomaly-score threshold; set by :meth:`set_threshold` from training scores.
    """

    def __init__(self, model: MultimodalGaussianMixture | FusionModel,
                 contamination: float = 0.01,
                 threshold: float | None = None) -> None:
        if not 0.0 < contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5), got {contamination!r}.")
        self.model = model
        self.contamination = contamination
        self.threshold = threshold

    @property
    def modalities(self) -> list[Modality]:
        return self.model.modalities

    @property
    def fusion(self) -> FusionStrategy:
        """The model's fusion strategy (a plain mixture is ``joint``)."""
        if isinstance(self.model, FusionModel):
            return self.model.fusion
        return get_strategy(JOINT)

    def output_schema(self, responsibilities: bool = False) -> list[ScoreColumn]:
        """The columns scoring returns, in order (see :mod:`mmgmm_spark.models.scores`)."""
        return output_schema([m.name for m in self.modalities], responsibilities)

    def output_columns(self) -> list[str]:
        """Names of the columns :meth:`score_batch` returns, in order."""
        return [c.name for c in self.output_schema()]

    def set_threshold(self, training_scores: np.ndarray) -> float:
        """Threshold = (1 - contamination) quantile of the training anomaly scores (n,)."""
        self.threshold = float(np.quantile(training_scores, 1.0 - self.contamination))
        return self.threshold

    def score_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        """Per row: log-likelihood, anomaly score, flag, most probable component, and the
        marginal log-likelihood of each modality (NaN where missing); each (n,)."""
        if isinstance(self.model, FusionModel):
            values = self.model.batch_columns(batch)
            return score_columns(values[LOG_LIKELIHOOD.name], values[CLUSTER.name],
                                 {m.name: values[m.name] for m in self.modalities},
                                 self.threshold)
        params, modalities = self.model.params, self.modalities
        log_likelihood, log_resp = normalise_log_prob(weighted_log_prob(batch, params, modalities))
        return score_columns(log_likelihood, log_resp.argmax(axis=1),
                             modality_log_likelihoods(batch, params, modalities), self.threshold)

    def responsibilities(self, batch: Batch) -> np.ndarray:
        """(n, K) posterior probability of each mixture component per row."""
        if isinstance(self.model, FusionModel):
            return self.model.responsibilities(batch)
        params, modalities = self.model.params, self.modalities
        return np.exp(normalise_log_prob(weighted_log_prob(batch, params, modalities))[1])

    def score(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`score_batch` on a dict of (n, d_m) arrays (NaN rows = missing)."""
        return self.score_batch(batch_from_arrays(data, self.modalities))

    @classmethod
    def fit(cls, model: MultimodalGaussianMixture | FusionModel,
            data: Mapping[str, np.ndarray], contamination: float = 0.01) -> AnomalyDetector:
        """Fit ``model`` on in-memory data and set the threshold from its training scores."""
        model.fit(data)
        detector = cls(model, contamination)
        detector.set_threshold(-model.score_samples(data))
        return detector

    def extra(self) -> dict[str, dict[str, float | None]]:
        """The JSON metadata a saved model keeps for the detector: contamination, threshold."""
        return {"anomaly": {"contamination": self.contamination, "threshold": self.threshold}}

    def save(self, path: str) -> None:
        """Arrays + JSON (see :mod:`mmgmm_spark.io.model_files`), threshold included."""
        if isinstance(self.model, FusionModel):
            self.model.save(path, extra=self.extra())
            return
        save_model(self.model, path, extra=self.extra())

    @classmethod
    def load(cls, path: str) -> AnomalyDetector:
        return cls.of_loaded(FusionModel.load(path) if is_fusion_artefact(path)
                             else load_model(path))

    @classmethod
    def of_loaded(cls, model: MultimodalGaussianMixture | FusionModel) -> AnomalyDetector:
        """The detector of a loaded model, from the :meth:`extra` metadata it was saved with."""
        anomaly = model.extra_.get("anomaly", {})
        return cls(model, float(anomaly.get("contamination", 0.01)), anomaly.get("threshold"))
