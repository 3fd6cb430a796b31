"""The anomaly detector: a fitted mixture plus the anomaly threshold, scored row by row.

This is what is saved, logged to MLflow, registered and loaded for scoring. The anomaly
score of a row is its negative log-likelihood; the threshold is the (1 - contamination)
quantile of the training scores, stored with the model so scoring needs no second pass.
The calibrated score is the training tail probability of the anomaly score within the row's
missingness pattern (:mod:`mmgmm_spark.core.calibration`, table stored with the model); rows
are flagged when it is below ``contamination``, the same false-positive rate for every
pattern. A model saved before calibration existed loads without a table: its calibrated score
is NaN and rows are flagged by the raw threshold, as when it was trained.

``model`` may also be a :class:`mmgmm_spark.models.fusion.FusionModel` (per-modality preprocessing
+ ``joint``/``early``/``late`` fusion): the artefact then covers preprocessing, strategy,
mixture(s) and threshold, and :meth:`AnomalyDetector.score_batch` returns the same columns
(see :mod:`mmgmm_spark.models.fusion` for their meaning under ``late``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch, batch_from_arrays
from mmgmm_spark.core.calibration import Calibration, fit_calibration, pattern_codes
from mmgmm_spark.core.densities import (
    log_prob_terms,
    normalise_log_prob,
    weighted_log_prob,
)
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.quantiles import weighted_quantile
from mmgmm_spark.io.model_files import model_arrays, model_document, model_file_from
from mmgmm_spark.models.fusion import (
    JOINT,
    FusionModel,
    FusionStrategy,
    fusion_arrays,
    fusion_document,
    fusion_file_from,
    get_strategy,
    is_fusion_artefact,
    is_fusion_document,
)
from mmgmm_spark.models.mixture import (
    MultimodalGaussianMixture,
    load_model,
    model_file,
    model_from_file,
    save_model,
)
from mmgmm_spark.models.scores import (
    ANOMALY_SCORE,
    CALIBRATED_SCORE,
    CLUSTER,
    LOG_LIKELIHOOD,
    ScoreColumn,
    output_schema,
    score_columns,
)

__all__ = ["AnomalyDetector"]

log = logging.getLogger(__name__)


class AnomalyDetector:
    """A fitted :class:`MultimodalGaussianMixture` with its anomaly threshold.

    Args:
        model: a fitted mixture, or a fitted :class:`FusionModel`.
        contamination: expected fraction of anomalies in the training data, in (0, 0.5).
        threshold: anomaly-score threshold; set by :meth:`set_threshold` from training scores.
        calibration: the per-pattern tail tables of the training scores (None: uncalibrated).
    """

    def __init__(self, model: MultimodalGaussianMixture | FusionModel,
                 contamination: float = 0.01,
                 threshold: float | None = None,
                 calibration: Calibration | None = None) -> None:
        if not 0.0 < contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5), got {contamination!r}.")
        self.model = model
        self.contamination = contamination
        self.threshold = threshold
        self.calibration = calibration

    @property
    def calibrated_threshold(self) -> float:
        """-log10(contamination): the calibrated score above which a row is flagged."""
        return float(-np.log10(self.contamination))

    def ranking(self) -> tuple[str, float | None]:
        """The output column that ranks rows and its threshold: ``calibrated_score`` and
        -log10(contamination), or (uncalibrated model) ``anomaly_score`` and the raw one."""
        if self.calibration is None:
            return ANOMALY_SCORE.name, self.threshold
        return CALIBRATED_SCORE.name, self.calibrated_threshold

    def patterns(self, batch: Batch) -> np.ndarray:
        """(n,) missingness pattern of each row (:func:`pattern_codes`, model order)."""
        return pattern_codes([batch.blocks[m.name].observed for m in self.modalities])

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

    def set_threshold(self, training_scores: np.ndarray, patterns: np.ndarray | None = None,
                      weights: np.ndarray | None = None) -> float:
        """Threshold = (1 - contamination) quantile of the training anomaly scores (n,) with
        row ``weights`` (n,) (None: all 1; integer weights = rows repeated); with the rows'
        patterns (n,) also the calibration table."""
        self.threshold = float(weighted_quantile(training_scores, 1.0 - self.contamination,
                                                 weights))
        if patterns is not None:
            self.calibration = fit_calibration(training_scores, patterns,
                                               [m.name for m in self.modalities],
                                               weights=weights)
        return self.threshold

    def score_batch(self, batch: Batch) -> dict[str, np.ndarray]:
        """Per row: log-likelihood, anomaly score, calibrated score, flag, most probable
        component, and the marginal log-likelihood of each modality (NaN where missing);
        each (n,)."""
        if isinstance(self.model, FusionModel):
            values = self.model.batch_columns(batch)
            log_likelihood, cluster = values[LOG_LIKELIHOOD.name], values[CLUSTER.name]
            per_modality = {m.name: values[m.name] for m in self.modalities}
        else:
            params, modalities = self.model.params, self.modalities
            log_prob, per_modality = log_prob_terms(batch, params, modalities, per_modality=True)
            log_likelihood, log_resp = normalise_log_prob(log_prob)
            cluster = log_resp.argmax(axis=1)
        calibrated = (None if self.calibration is None
                      else self.calibration.score(-log_likelihood, self.patterns(batch)))
        return score_columns(log_likelihood, cluster, per_modality, self.threshold, calibrated,
                             self.calibrated_threshold)

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
        """Fit ``model`` on in-memory data; set the threshold and the calibration from its
        training scores."""
        model.fit(data)
        detector = cls(model, contamination)
        detector.set_threshold(-model.score_samples(data),
                               detector.patterns(batch_from_arrays(data, detector.modalities)))
        return detector

    def extra(self) -> dict[str, dict]:
        """The JSON metadata a saved model keeps for the detector: contamination, threshold
        and calibration table."""
        calibration = None if self.calibration is None else self.calibration.to_dict()
        return {"anomaly": {"contamination": self.contamination, "threshold": self.threshold,
                            "calibration": calibration}}

    def save(self, path: str) -> None:
        """Arrays + JSON (see :mod:`mmgmm_spark.io.model_files`), threshold and calibration
        table included."""
        if isinstance(self.model, FusionModel):
            self.model.save(path, extra=self.extra())
            return
        save_model(self.model, path, extra=self.extra())

    @classmethod
    def load(cls, path: str) -> AnomalyDetector:
        """Load a saved detector; one saved without a calibration table loads uncalibrated
        (a warning says so)."""
        return cls.of_loaded(FusionModel.load(path) if is_fusion_artefact(path)
                             else load_model(path), path)

    def to_parts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The saved detector in flat form: one JSON document and named float64 arrays (the
        codec of :meth:`save`; the Spark ML stage writes these through Spark). A plain
        mixture's are :mod:`mmgmm_spark.io.model_files`', a fusion model's
        :mod:`mmgmm_spark.models.fusion.files`'."""
        if isinstance(self.model, FusionModel):
            content = self.model.to_file(self.extra())
            return fusion_document(content), fusion_arrays(content)
        plain = model_file(self.model, self.extra())
        return model_document(plain), model_arrays(plain)

    @classmethod
    def from_parts(cls, document: Any, arrays: dict[str, np.ndarray],
                   where: str) -> AnomalyDetector:
        """Inverse of :meth:`to_parts`, validated as :meth:`load` validates (a
        ``ModelFormatError`` naming ``where``)."""
        if is_fusion_document(document):
            content = fusion_file_from(document, arrays, where)
            return cls.of_loaded(FusionModel.from_file(content, where), where)
        return cls.of_loaded(model_from_file(model_file_from(document, arrays, where)), where)

    @classmethod
    def of_loaded(cls, model: MultimodalGaussianMixture | FusionModel,
                  source: str = "(in memory)") -> AnomalyDetector:
        """The detector of a loaded model, from the :meth:`extra` metadata it was saved with."""
        anomaly = model.extra_.get("anomaly", {})
        table = anomaly.get("calibration")
        if table is None:
            log.warning("Model %s has no calibration table (saved by an older version): "
                        "calibrated_score is NaN and is_anomaly uses the raw threshold. "
                        "Retrain it for scores comparable across missing modalities.", source)
        return cls(model, float(anomaly.get("contamination", 0.01)), anomaly.get("threshold"),
                   None if table is None else Calibration.from_dict(table))
