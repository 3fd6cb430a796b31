"""``pyspark.ml`` Estimator and Model of the multimodal Gaussian mixture.

:class:`MultimodalGaussianMixture` fits with the project's distributed EM (the same fit as
:meth:`mmgmm_spark.models.mixture.MultimodalGaussianMixture.fit` on the DataFrame) and sets
the anomaly threshold from the exact training-score quantile, both over one cache of the rows;
:class:`MultimodalGaussianMixtureModel` scores lazily in ``mapInArrow`` tasks
(:mod:`mmgmm_spark.ml.transform`) and saves as arrays + JSON
(:mod:`mmgmm_spark.ml.persistence`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable, MLReadable, MLWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.spec import DEFAULT_REG_COVAR
from mmgmm_spark.ml.params import MixtureParams, check_features_cols
from mmgmm_spark.ml.persistence import ModelReader, ModelWriter
from mmgmm_spark.ml.transform import check_input_schema, ml_names, score_frame, transformed_schema
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.fusion import JOINT, FusionModel
from mmgmm_spark.models.mixture import MultimodalGaussianMixture as Mixture
from mmgmm_spark.models.scores import ANOMALY_SCORE, CLUSTER, IS_ANOMALY, LOG_LIKELIHOOD
from mmgmm_spark.spark.data import cached_blocks, features_column
from mmgmm_spark.spark.score import TrainingScores, training_threshold

SPEC_PARAMS = {"n_components": "k", "max_iter": "maxIter", "tol": "tol",
               "reg_covar": "regCovar", "init_params": "initMode"}
"""The mixture's hyperparameter -> the Param that sets it (errors name the Param)."""


def feature_widths(dataset: DataFrame, columns: list[str]) -> list[int]:
    """The width of each features column, read from its first non-null row (one small job
    each; the fit checks every row's width)."""
    widths = []
    for column in columns:
        row = dataset.where(F.col(column).isNotNull()).select(
            F.size(features_column(dataset, column, "the training DataFrame"))).first()
        if row is None:
            raise DataValidationError(
                f"featuresCols column '{column}' is null in every row of the training "
                "DataFrame (or the DataFrame is empty): a modality needs observed rows.")
        widths.append(int(row[0]))
    return widths


class MultimodalGaussianMixtureSummary:
    """Training summary, like MLlib's ``GaussianMixtureSummary``.

    Attributes:
        predictions: the training rows transformed by the model (lazy).
        k: components.
        numIter: EM iterations of the kept initialisation.
        converged: whether EM met ``tol`` before ``maxIter``.
        logLikelihoodHistory: mean log-likelihood per row after every iteration.
        logLikelihood: total log-likelihood of the training rows under the fitted model.
        trainingRows: n.
        threshold: the anomaly-score threshold (the (1 - contamination) training quantile).
    """

    def __init__(self, model: MultimodalGaussianMixtureModel, dataset: DataFrame,
                 scores: TrainingScores) -> None:
        mixture = model.mixture
        self.predictions = model.transform(dataset)
        self.predictionCol = model.getPredictionCol()
        self.probabilityCol = model.getProbabilityCol()
        self.featuresCols = model.getFeaturesCols()
        self.k = mixture.n_components
        self.numIter = mixture.n_iter_
        self.converged = mixture.converged_
        self.logLikelihoodHistory = list(mixture.lower_bounds_)
        self.logLikelihood = scores.mean_log_likelihood * scores.n_rows
        self.trainingRows = scores.n_rows
        self.threshold = scores.threshold

    @cached_property
    def clusterSizes(self) -> list[int]:
        """(K,) training rows per predicted component (one Spark job, on first access)."""
        counts = self.predictions.groupBy(self.predictionCol).count().collect()
        sizes = [0] * self.k
        for row in counts:
            sizes[row[0]] = int(row[1])
        return sizes


class MultimodalGaussianMixture(Estimator, MixtureParams, DefaultParamsReadable,
                                DefaultParamsWritable):
    """Spark ML estimator of a multimodal Gaussian mixture (one modality per features column).

    >>> gmm = MultimodalGaussianMixture(featuresCols=["image", "text"], k=4,
    ...                                 covarianceTypes=["full", "diag"])
    >>> model = gmm.fit(df)       # df: one array/vector column per modality, null = missing
    >>> model.transform(df)       # + prediction, probability, logLikelihood, anomalyScore,
    ...                           #   isAnomaly, imageLogLikelihood, textLogLikelihood
    """

    @keyword_only
    def __init__(self, *, featuresCols: list[str] | None = None, k: int = 2,
                 covarianceTypes: list[str] | None = None,
                 fusionWeights: list[float] | None = None, maxIter: int = 100,
                 tol: float = 1e-3, regCovar: float = DEFAULT_REG_COVAR, seed: int = 0,
                 initMode: str = "kmeans", contamination: float = 0.01,
                 weightCol: str | None = None,
                 initialModel: MultimodalGaussianMixtureModel | None = None,
                 predictionCol: str = "prediction", probabilityCol: str = "probability",
                 logLikelihoodCol: str = "logLikelihood", anomalyScoreCol: str = "anomalyScore",
                 isAnomalyCol: str = "isAnomaly") -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> MultimodalGaussianMixture:
        """Set any of the constructor's Params by keyword."""
        return self._set(**self._input_kwargs)

    def setFeaturesCols(self, value: list[str]) -> MultimodalGaussianMixture:
        return self._set(featuresCols=value)

    def setK(self, value: int) -> MultimodalGaussianMixture:
        return self._set(k=value)

    def setCovarianceTypes(self, value: list[str]) -> MultimodalGaussianMixture:
        return self._set(covarianceTypes=value)

    def setFusionWeights(self, value: list[float]) -> MultimodalGaussianMixture:
        return self._set(fusionWeights=value)

    def setMaxIter(self, value: int) -> MultimodalGaussianMixture:
        return self._set(maxIter=value)

    def setTol(self, value: float) -> MultimodalGaussianMixture:
        return self._set(tol=value)

    def setRegCovar(self, value: float) -> MultimodalGaussianMixture:
        return self._set(regCovar=value)

    def setSeed(self, value: int) -> MultimodalGaussianMixture:
        return self._set(seed=value)

    def setInitMode(self, value: str) -> MultimodalGaussianMixture:
        return self._set(initMode=value)

    def setContamination(self, value: float) -> MultimodalGaussianMixture:
        return self._set(contamination=value)

    def setWeightCol(self, value: str) -> MultimodalGaussianMixture:
        """Numeric row-weight column: integer weights fit as if each row were repeated."""
        return self._set(weightCol=value)

    def setInitialModel(self, value: MultimodalGaussianMixtureModel) -> MultimodalGaussianMixture:
        """A fitted model of the same columns, widths, covariance types and k: EM starts
        from exactly its parameters (no initialisation)."""
        return self._set(initialModel=value)

    def _weight_column(self) -> str | None:
        return self.getWeightCol() if self.isDefined(self.weightCol) else None

    def _initial_mixture(self) -> Mixture | None:
        initial = self.getInitialModel() if self.isDefined(self.initialModel) else None
        if initial is not None and not isinstance(initial, MultimodalGaussianMixtureModel):
            raise TypeError(f"Param initialModel must be a fitted "
                            f"MultimodalGaussianMixtureModel, got {type(initial).__name__}.")
        return None if initial is None else initial.mixture

    def unfitted_mixture(self, dims: list[int]) -> Mixture:
        """The unfitted in-memory estimator these Params describe, for columns of ``dims``."""
        mixture = Mixture(self.modalities(dims), self.getK(), tol=self.getTol(),
                          reg_covar=self.getRegCovar(), max_iter=self.getMaxIter(),
                          init_params=self.getInitMode(), random_state=self.random_state())
        try:
            mixture.spec().validate()
        except ValueError as error:
            message = str(error)
            for name, param in SPEC_PARAMS.items():
                message = message.replace(f"{name} must", f"Param {param} must")
            raise ValueError(message) from None
        return mixture

    def _fit(self, dataset: DataFrame) -> MultimodalGaussianMixtureModel:
        columns = check_features_cols(self)
        weight = self._weight_column()
        check_input_schema(dataset.schema, columns, [])
        contamination = self.getContamination()
        if not 0.0 < contamination < 0.5:
            raise ValueError(f"Param contamination must be in (0, 0.5), got {contamination!r}.")
        mixture = self.unfitted_mixture(feature_widths(dataset, columns))
        source = "the training DataFrame"
        with cached_blocks(dataset, mixture.modalities, source=source,
                           weight_column=weight) as blocks:
            mixture.fit(blocks, initial_model=self._initial_mixture())
            scores = training_threshold(mixture, blocks, contamination)
        model = self._copyValues(MultimodalGaussianMixtureModel(
            AnomalyDetector(mixture, contamination, scores.threshold, scores.calibration)))
        model._resetUid(self.uid)
        model.training_summary = MultimodalGaussianMixtureSummary(model, dataset, scores)
        return model


class MultimodalGaussianMixtureModel(Model, MixtureParams, MLReadable, MLWritable):
    """A fitted :class:`MultimodalGaussianMixture`, or any logged or registered detector
    (:func:`~mmgmm_spark.ml.from_mlflow`): scores rows, saves as arrays + JSON.

    The detector's model is a plain mixture (what this estimator fits) or a
    :class:`~mmgmm_spark.models.fusion.FusionModel` (preprocessing, ``early`` or ``late``
    fusion, as the jobs register with ``model.fusion`` / ``preprocessing.*``). ``transform``,
    ``transformSchema``, saving and loading are the same for both; for a fusion model:

    * ``k`` is the number of components of its one mixture (``joint`` / ``early``: the length
      of the probability vector). ``late`` fits one mixture per modality: ``getK`` is an error
      naming :attr:`mixtures`, and ``probabilityCol`` is "" (a name is an error at transform).
    * :attr:`weights`, :attr:`means` and :attr:`covariances` (one mixture over the input
      columns) are errors: its mixtures live in preprocessed coordinates. Per-mixture access
      is :attr:`mixtures` (``weights_``, ``means_``, ``covariances_`` of each) and the
      preprocessing is :attr:`fusionModel`'s ``preprocessors_``.

    Args:
        detector: the fitted detector with its threshold (None only while loading).
    """

    def __init__(self, detector: AnomalyDetector | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.training_summary: MultimodalGaussianMixtureSummary | None = None
        if detector is not None:
            self._set(featuresCols=[m.name for m in detector.modalities],
                      contamination=detector.contamination)
            if not detector.fusion.per_modality:
                self._set(k=next(iter(self.mixtures.values())).n_components)
            if not detector.fusion.responsibilities:
                self._set(probabilityCol="")

    @property
    def fusionModel(self) -> FusionModel | None:
        """The detector's fusion model (preprocessing + strategy), None for a plain mixture."""
        model = self.detector.model
        return model if isinstance(model, FusionModel) else None

    @property
    def mixtures(self) -> dict[str, Mixture]:
        """{key: fitted mixture}: ``{"joint": mixture}`` for a plain mixture; a fusion model's
        ``mixtures_`` (``joint`` or ``early``, or one per modality for ``late``), over its
        preprocessed coordinates."""
        fusion = self.fusionModel
        return {JOINT: self.detector.model} if fusion is None else dict(fusion.mixtures_)

    @property
    def mixture(self) -> Mixture:
        """The fitted in-memory mixture (a plain mixture only, see the class docstring)."""
        fusion = self.fusionModel
        if fusion is not None:
            raise TypeError(
                f"This model is a '{fusion.strategy}' fusion model (preprocessing and "
                f"mixture(s) {sorted(fusion.mixtures_)} in preprocessed coordinates), not one "
                "mixture over the input columns: use model.mixtures[key] for each mixture's "
                "weights_, means_ and covariances_, and model.fusionModel.preprocessors_.")
        return self.detector.model

    def getK(self) -> int:
        """Components of the model's one mixture (a ``late`` fusion model has none)."""
        if self.detector is not None and self.detector.fusion.per_modality:
            sizes = {key: m.n_components for key, m in self.mixtures.items()}
            raise ValueError(f"Param k is undefined for a '{self.detector.fusion.name}' fusion "
                             f"model: it has one mixture per modality, with K {sizes}; see "
                             "model.mixtures.")
        return super().getK()

    @property
    def weights(self) -> list[float]:
        """(K,) component weights."""
        return self.mixture.weights_.tolist()

    @property
    def means(self) -> dict[str, np.ndarray]:
        """{modality: (K, d) means}."""
        return self.mixture.means_

    @property
    def covariances(self) -> dict[str, np.ndarray]:
        """{modality: covariances in its type's shape ((K, d, d) for full, ...)}."""
        return self.mixture.covariances_

    @property
    def threshold(self) -> float | None:
        """Raw anomaly-score threshold (the training quantile); ``isAnomaly`` is
        ``calibratedScore > -log10(contamination)`` (one rate per missingness pattern)."""
        return self.detector.threshold

    @property
    def hasSummary(self) -> bool:
        """Whether this model was fitted in this session (a loaded model has no summary)."""
        return self.training_summary is not None

    @property
    def summary(self) -> MultimodalGaussianMixtureSummary:
        if self.training_summary is None:
            raise RuntimeError("No training summary: this model was loaded, not fitted here.")
        return self.training_summary

    def output_names(self) -> dict[str, str]:
        """{score column: output column} of the current Params (see :func:`ml_names`)."""
        return ml_names(self.detector, {
            LOG_LIKELIHOOD.name: self.getLogLikelihoodCol(),
            ANOMALY_SCORE.name: self.getAnomalyScoreCol(),
            IS_ANOMALY.name: self.getIsAnomalyCol(), CLUSTER.name: self.getPredictionCol()})

    def transformSchema(self, schema: T.StructType) -> T.StructType:
        """``schema`` plus the output columns :meth:`transform` appends."""
        return transformed_schema(schema, self.detector, self.output_names(),
                                  self.getProbabilityCol())

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return score_frame(dataset, self.detector, self.output_names(),
                           self.getProbabilityCol())

    def write(self) -> ModelWriter:
        return ModelWriter(self)

    @classmethod
    def read(cls) -> ModelReader:
        return ModelReader(cls)
