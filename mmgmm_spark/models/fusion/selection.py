"""In-memory model selection: every grid point fitted, the admissible one with lowest BIC kept.

The grid is (standardise x projection) x covariance type x K (see :class:`FusionConfig`);
the strategy shapes each candidate's mixture (:meth:`FusionStrategy.mixture_inputs`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import DegenerateComponentError, relative_variances
from mmgmm_spark.core.preprocessing import ModalityPreprocessor
from mmgmm_spark.models.fusion.base import Arrays, FusionStrategy, TrainingSet
from mmgmm_spark.models.fusion.config import FusionConfig, capped
from mmgmm_spark.models.mixture import MultimodalGaussianMixture

log = logging.getLogger(__name__)


@dataclass
class FusionCandidate:
    """One fitted point of the selection grid (``mixture`` is dropped once selection ends)."""

    n_components: int
    covariance_type: str
    standardise: bool
    projection: dict[str, int]
    bic: float
    min_weight: float
    min_variance: float
    admissible: bool
    mixture: MultimodalGaussianMixture | None = field(default=None, repr=False)
    preprocessors: dict[str, ModalityPreprocessor] | None = field(default=None, repr=False)

    def summary(self) -> dict:
        return {"n_components": self.n_components, "covariance_type": self.covariance_type,
                "standardise": self.standardise, "projection": self.projection, "bic": self.bic,
                "min_weight": self.min_weight, "min_variance": self.min_variance,
                "admissible": self.admissible}


@dataclass(frozen=True)
class Grid:
    """What a selection needs besides the data: the config, the strategy and extra keyword
    arguments of every :class:`MultimodalGaussianMixture` (e.g. ``weights_init``)."""

    config: FusionConfig
    fusion: FusionStrategy
    mixture_options: dict[str, Any]


def select(grid: Grid, training: TrainingSet) -> tuple[FusionCandidate, list[FusionCandidate]]:
    """(the admissible candidate with lowest BIC, every fitted candidate) on ``training``."""
    c = grid.config
    candidates = []
    standardise = (True, False) if c.standardise == "auto" else (c.standardise,)
    for scaled, q in product(standardise, c.projection_grid or (c.projection,)):
        preprocessors = {m.name: fit_preprocessor(c, training.data[m.name], q, scaled)
                         for m in training.modalities}
        if c.standardise == "auto" and not scaled and all(
                p.output_dim == p.input_dim for p in preprocessors.values()):
            continue            # nothing projected: the standardised candidates cover it
        candidates += _fit_points(grid, training, preprocessors, scaled)
    admissible = [candidate for candidate in candidates if candidate.admissible]
    if not admissible:
        raise DegenerateComponentError(
            f"No admissible mixture for '{training.key}' in the grid K={c.n_components}, "
            f"covariance_types={c.covariance_types}: raise reg_covar.")
    return min(admissible, key=lambda candidate: candidate.bic), candidates


def fit_preprocessor(config: FusionConfig, x: np.ndarray, q: int | str | None,
                     standardise: bool) -> ModalityPreprocessor:
    """The preprocessing of (n, d) rows ``x`` at projection ``q`` (capped at d)."""
    q = capped(q, x.shape[1])
    options = {**config.preprocessor_options(), **config.marginal_options()}
    fitted = ModalityPreprocessor.fit(x, q, standardise=standardise, **options)
    if not standardise and config.standardise == "auto" and fitted.output_dim == x.shape[1]:
        # Without a projection, raw scales only change the k-means start of a full
        # mixture, not the model: BIC would merely pick a start, so standardise.
        fitted = ModalityPreprocessor.fit(x, q, standardise=True, **options)
    return fitted


def _fit_points(grid: Grid, training: TrainingSet,
                preprocessors: dict[str, ModalityPreprocessor],
                scaled: bool) -> list[FusionCandidate]:
    """The fitted candidates of every covariance type x K for one preprocessing."""
    projected = {name: p.transform(training.data[name]) for name, p in preprocessors.items()}
    residual = residual_sum(preprocessors, training.data, training.modalities)
    out = []
    for covariance_type in grid.config.covariance_types:
        modalities, data = grid.fusion.mixture_inputs(training.modalities, preprocessors,
                                                      projected, covariance_type)
        for k in grid.config.n_components:
            candidate = _fit_point(grid, modalities, data, preprocessors, residual, int(k),
                                   scaled)
            if candidate is not None:
                out.append(candidate)
    return out


def _fit_point(grid: Grid, modalities: list[Modality], data: Arrays,
               preprocessors: dict[str, ModalityPreprocessor], residual: np.ndarray, k: int,
               standardise: bool) -> FusionCandidate | None:
    """One candidate: the mixture of ``data`` (mixture ``modalities``) with K=``k`` and its
    BIC in input units (None when EM fails)."""
    c = grid.config
    covariance_type = modalities[0].covariance_type
    # BIC, which charges every parameter, chooses among the candidates: a small data set
    # picks a small K rather than being refused (the rows-per-parameter floor guards fits of
    # a fixed K: the estimator and the jobs)
    mixture = MultimodalGaussianMixture(
        modalities, k, tol=c.tol, reg_covar=c.reg_covar, max_iter=c.max_iter,
        n_init=c.n_init, init_params=c.init_params, random_state=c.random_state,
        **{"allow_small_data": True, "reg_covar_mode": c.reg_covar_mode,
           **grid.mixture_options})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mixture.fit(data, on_iteration=None)
    except (DegenerateComponentError, ValueError) as e:
        log.info("Skipping K=%d %s: %s", k, covariance_type, e)
        return None
    log_likelihood = float(mixture.score_samples(data).sum() + residual.sum())
    n_params = mixture.n_parameters() + sum(p.n_parameters() for p in preprocessors.values())
    bic = -2.0 * log_likelihood + n_params * np.log(len(residual))
    weight, variance = float(mixture.weights_.min()), float(
        relative_variances(mixture.params).min())
    admissible = k == 1 or (weight >= c.min_weight and variance >= c.min_variance)
    return FusionCandidate(k, covariance_type, standardise,
                           {name: p.output_dim for name, p in preprocessors.items()},
                           float(bic), weight, variance, admissible, mixture, preprocessors)


def residual_sum(preprocessors: dict[str, ModalityPreprocessor], data: Arrays,
                 modalities: list[Modality]) -> np.ndarray:
    """(n,) sum over modalities of the preprocessing log-density terms (0 where missing)."""
    total = np.zeros(len(data[modalities[0].name]))
    for m in modalities:
        total += np.nan_to_num(preprocessors[m.name].residual_log_density(data[m.name]))
    return total
