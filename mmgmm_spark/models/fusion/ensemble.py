"""Rank-averaged ensemble of the selection grid's mixtures (``FusionConfig.ensemble``).

BIC keeps one mixture; on unlabelled data with anomalies among the training rows the best
K is uncertain and a wrong choice can be costly (a component fitted to a cluster of
anomalies, or one Gaussian for a multi-modal normal class). The ensemble keeps every
admissible candidate that shares the chosen preprocessing (every K x covariance type of the
grid) and scores a row by the mean over members of the *normal score* of its log-density
among the training rows' (the member's training log-densities' empirical CDF, from stored
quantiles, then Phi^-1: :class:`mmgmm_spark.core.marginals.NormalScores`). That is a
Gaussian-rank average: unitless, higher = more normal, and each member counts equally
whatever its scale. On Spark the quantiles are one ``approxQuantile`` of each member's
scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmgmm_spark.core.marginals import NormalScores
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.preprocessing import ModalityPreprocessor
from mmgmm_spark.models.fusion.base import LOG_LIKELIHOOD, Arrays, FusionStrategy, Stats
from mmgmm_spark.models.mixture import MultimodalGaussianMixture


@dataclass(frozen=True)
class Member:
    """One mixture of the ensemble and the distribution of its training log-densities.

    Attributes:
        mixture: the fitted mixture (the ensemble's preprocessing feeds it).
        ranks: :class:`NormalScores` of its (n_train, 1) training log-densities.
    """

    mixture: MultimodalGaussianMixture
    ranks: NormalScores


@dataclass
class _MemberView:
    """The fitted state a strategy's hooks read, with one member as the mixture of ``key``."""

    modalities: list[Modality]
    preprocessors_: dict[str, ModalityPreprocessor]
    mixtures_: dict[str, MultimodalGaussianMixture]
    late_stats_: Stats


def member_log_density(fusion: FusionStrategy, modalities: list[Modality],
                       preprocessors: dict[str, ModalityPreprocessor], key: str,
                       mixture: MultimodalGaussianMixture, dense: Arrays) -> np.ndarray:
    """(n,) ``log_likelihood`` of input rows ``dense`` ({modality: (n, d_m)}) under
    ``mixture`` as the strategy's mixture ``key``."""
    view = _MemberView(list(modalities), preprocessors, {key: mixture}, {})
    return fusion.columns(view, dense)[LOG_LIKELIHOOD]


def fit_member(fusion: FusionStrategy, modalities: list[Modality],
               preprocessors: dict[str, ModalityPreprocessor], key: str,
               mixture: MultimodalGaussianMixture, training: Arrays,
               n_quantiles: int) -> Member:
    """A :class:`Member`: ``mixture`` with the quantiles of its log-densities of the
    training rows ``training`` ({modality: (n, d_m)})."""
    log_density = member_log_density(fusion, modalities, preprocessors, key, mixture, training)
    return Member(mixture, NormalScores.fit(log_density[:, None], n_quantiles))


def ensemble_log_likelihood(fusion: FusionStrategy, modalities: list[Modality],
                            preprocessors: dict[str, ModalityPreprocessor], key: str,
                            members: list[Member], dense: Arrays) -> np.ndarray:
    """(n,) the mean over ``members`` of the normal score of each row's log-density."""
    scores = [m.ranks.transform(member_log_density(fusion, modalities, preprocessors, key,
                                                   m.mixture, dense)[:, None])[:, 0]
              for m in members]
    return np.mean(scores, axis=0)
