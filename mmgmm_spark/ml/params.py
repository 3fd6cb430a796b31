"""The typed Params of the Spark ML estimator and model, in Spark's naming.

Both :class:`~mmgmm_spark.ml.estimator.MultimodalGaussianMixture` and its model carry every
Param (as MLlib's ``GaussianMixture`` and ``GaussianMixtureModel`` do), so a fitted model knows
how it was fitted and which columns it writes.
"""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasMaxIter,
    HasPredictionCol,
    HasProbabilityCol,
    HasSeed,
    HasTol,
    HasWeightCol,
)

from mmgmm_spark.core.init import INIT_METHODS
from mmgmm_spark.core.modality import COVARIANCE_TYPES, Modality
from mmgmm_spark.core.spec import DEFAULT_REG_COVAR

SEED_RANGE = 2 ** 32
"""numpy seeds are in [0, 2**32): a Spark seed (any long) is taken modulo this."""


def _param(name: str, doc: str, converter: Any = None) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class MixtureParams(HasPredictionCol, HasProbabilityCol, HasMaxIter, HasTol, HasSeed,
                    HasWeightCol):
    """Params shared by the estimator and the model (defaults: MLlib's where it has one)."""

    featuresCols = _param(
        "featuresCols", "one array<double>/array<float>/vector column per modality, the "
        "modality named after its column; a null cell = the modality is missing for the row",
        TypeConverters.toListString)
    k = _param("k", "number of mixture components (> 0)", TypeConverters.toInt)
    covarianceTypes = _param(
        "covarianceTypes", f"one covariance type per features column, each one of "
        f"{COVARIANCE_TYPES} (default: full for every column)", TypeConverters.toListString)
    fusionWeights = _param(
        "fusionWeights", "one fusion weight (> 0) per features column, multiplying its "
        "log-density (default: 1 for every column)", TypeConverters.toListFloat)
    regCovar = _param("regCovar", "added to the diagonal of every covariance (>= 0)",
                      TypeConverters.toFloat)
    initMode = _param("initMode", f"initialisation, one of {INIT_METHODS}",
                      TypeConverters.toString)
    initialModel = _param(
        "initialModel", "a fitted MultimodalGaussianMixtureModel of the same columns, widths, "
        "covariance types and k whose parameters EM starts from (no initialisation)")
    contamination = _param(
        "contamination", "expected fraction of anomalies in the training rows, in (0, 0.5): "
        "the model flags rows whose anomaly score exceeds that quantile of the training "
        "scores", TypeConverters.toFloat)
    logLikelihoodCol = _param("logLikelihoodCol", "output column: log p(row)",
                              TypeConverters.toString)
    anomalyScoreCol = _param("anomalyScoreCol", "output column: -log p(row)",
                             TypeConverters.toString)
    isAnomalyCol = _param("isAnomalyCol", "output column: calibrated score > -log10(contamination)",
                          TypeConverters.toString)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(k=2, maxIter=100, tol=1e-3, regCovar=DEFAULT_REG_COVAR, seed=0,
                         initMode="kmeans", contamination=0.01, predictionCol="prediction",
                         probabilityCol="probability", logLikelihoodCol="logLikelihood",
                         anomalyScoreCol="anomalyScore", isAnomalyCol="isAnomaly")

    # ------------------------------------------------------------------------- getters
    def getFeaturesCols(self) -> list[str]:
        return self.getOrDefault(self.featuresCols)

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getCovarianceTypes(self) -> list[str]:
        """One per features column (``full`` for every column unless set)."""
        if self.isDefined(self.covarianceTypes):
            return self.getOrDefault(self.covarianceTypes)
        return ["full"] * len(self.getFeaturesCols())

    def getFusionWeights(self) -> list[float]:
        """One per features column (1 for every column unless set)."""
        if self.isDefined(self.fusionWeights):
            return self.getOrDefault(self.fusionWeights)
        return [1.0] * len(self.getFeaturesCols())

    def getRegCovar(self) -> float:
        return self.getOrDefault(self.regCovar)

    def getInitMode(self) -> str:
        return self.getOrDefault(self.initMode)

    def getInitialModel(self) -> Any:
        return self.getOrDefault(self.initialModel)

    def getContamination(self) -> float:
        return self.getOrDefault(self.contamination)

    def getLogLikelihoodCol(self) -> str:
        return self.getOrDefault(self.logLikelihoodCol)

    def getAnomalyScoreCol(self) -> str:
        return self.getOrDefault(self.anomalyScoreCol)

    def getIsAnomalyCol(self) -> str:
        return self.getOrDefault(self.isAnomalyCol)

    # ----------------------------------------------------------------- output setters
    def setPredictionCol(self, value: str) -> MixtureParams:
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value: str) -> MixtureParams:
        """An empty name skips the probability vector (saves one exp per component)."""
        return self._set(probabilityCol=value)

    def setLogLikelihoodCol(self, value: str) -> MixtureParams:
        return self._set(logLikelihoodCol=value)

    def setAnomalyScoreCol(self, value: str) -> MixtureParams:
        return self._set(anomalyScoreCol=value)

    def setIsAnomalyCol(self, value: str) -> MixtureParams:
        return self._set(isAnomalyCol=value)

    # ------------------------------------------------------------------------ checks
    def modalities(self, dims: list[int]) -> list[Modality]:
        """The modalities of ``featuresCols`` with these widths (one per column)."""
        columns = self.getFeaturesCols()
        for name in ("covarianceTypes", "fusionWeights"):
            values = getattr(self, f"get{name[0].upper()}{name[1:]}")()
            if len(values) != len(columns):
                raise ValueError(f"Param {name} has {len(values)} value(s) {values} but "
                                 f"featuresCols has {len(columns)} column(s) {columns}: give "
                                 "one per column.")
        return [Modality(column, dim, kind, weight) for column, dim, kind, weight in
                zip(columns, dims, self.getCovarianceTypes(), self.getFusionWeights(),
                    strict=True)]

    def random_state(self) -> int:
        """The numpy seed of ``seed`` (a Spark long, taken modulo 2**32)."""
        return int(self.getOrDefault(self.seed)) % SEED_RANGE


def check_features_cols(params: MixtureParams) -> list[str]:
    """``featuresCols``, which must be set to at least one distinct column."""
    if not params.isDefined(params.featuresCols) or not params.getFeaturesCols():
        raise ValueError("Param featuresCols is not set: give one features column per "
                         "modality, e.g. setFeaturesCols(['image', 'text']).")
    columns = params.getFeaturesCols()
    if len(set(columns)) != len(columns):
        raise ValueError(f"Param featuresCols names a column twice: {columns}.")
    return columns
