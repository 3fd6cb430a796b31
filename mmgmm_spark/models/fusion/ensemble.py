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
class Subspace:
    """The features one member sees and its own preprocessing of them.

    Attributes:
        features: {modality: (d_sub,) sorted column indices into the modality's features}.
        modalities: the input modalities restricted to ``features`` (widths d_sub).
        preprocessors: the member's preprocessing of each restricted modality.
    """

    features: dict[str, np.ndarray]
    modalities: list[Modality]
    preprocessors: dict[str, ModalityPreprocessor]

    def rows(self, dense: Arrays) -> Arrays:
        """{modality: (n, d_sub)} the member's columns of input rows ``dense``."""
        return restricted(dense, self.features)


def restricted(dense: Arrays, features: dict[str, np.ndarray]) -> Arrays:
    """{modality: (n, len(features[modality]))} the ``features`` columns of ``dense``."""
    return {name: dense[name][:, columns] for name, columns in features.items()}


@dataclass(frozen=True)
class Member:
    """One mixture of the ensemble and the distribution of its training log-densities.

    Attributes:
        mixture: the fitted mixture.
        ranks: :class:`NormalScores` of its (n_train, 1) training log-densities.
        subspace: the member's features and preprocessing (``FusionConfig.subspaces``), or
            None: every feature, through the model's preprocessing (``ensemble``).
    """

    mixture: MultimodalGaussianMixture
    ranks: NormalScores
    subspace: Subspace | None = None


@dataclass
class _MemberView:
    """The fitted state a strategy's hooks read, with one member as the mixture of ``key``."""

    modalities: list[Modality]
    preprocessors_: dict[str, ModalityPreprocessor]
    mixtures_: dict[str, MultimodalGaussianMixture]
    late_stats_: Stats


def member_log_density(fusion: FusionStrategy, modalities: list[Modality],
                       preprocessors: dict[str, ModalityPreprocessor], key: str,
                       mixture: MultimodalGaussianMixture, dense: Arrays,
                       subspace: Subspace | None = None) -> np.ndarray:
    """(n,) ``log_likelihood`` of input rows ``dense`` ({modality: (n, d_m)}) under
    ``mixture`` as the strategy's mixture ``key``; with a ``subspace``, of the rows' subspace
    columns, through its modalities and preprocessing instead of ``modalities`` and
    ``preprocessors``."""
    if subspace is not None:
        modalities, preprocessors = subspace.modalities, subspace.preprocessors
        dense = subspace.rows(dense)
    view = _MemberView(list(modalities), preprocessors, {key: mixture}, {})
    return fusion.columns(view, dense)[LOG_LIKELIHOOD]


def fit_member(fusion: FusionStrategy, modalities: list[Modality],
               preprocessors: dict[str, ModalityPreprocessor], key: str,
               mixture: MultimodalGaussianMixture, training: Arrays, n_quantiles: int,
               subspace: Subspace | None = None) -> Member:
    """A :class:`Member`: ``mixture`` with the quantiles of its log-densities of the
    training rows ``training`` ({modality: (n, d_m)}; see :func:`member_log_density` for
    ``subspace``)."""
    log_density = member_log_density(fusion, modalities, preprocessors, key, mixture, training,
                                     subspace)
    return Member(mixture, NormalScores.fit(log_density[:, None], n_quantiles), subspace)


def ensemble_log_likelihood(fusion: FusionStrategy, modalities: list[Modality],
                            preprocessors: dict[str, ModalityPreprocessor], key: str,
                            members: list[Member], dense: Arrays) -> np.ndarray:
    """(n,) the mean over ``members`` of the normal score of each row's log-density."""
    scores = [m.ranks.transform(member_log_density(fusion, modalities, preprocessors, key,
                                                   m.mixture, dense, m.subspace)[:, None])[:, 0]
              for m in members]
    return np.mean(scores, axis=0)
