"""Random-subspace ensemble (``FusionConfig.subspaces``): feature bagging of mixtures.

Each of R members draws, for every modality of d features, ceil(fraction x d) of them
(at most d - 1; all when d <= 2) without replacement, and runs the whole model selection
(preprocessing, covariance type and K by BIC, admissibility) on those columns alone. A row is
scored like the :mod:`~mmgmm_spark.models.fusion.ensemble`: the mean over members of the
normal score of its member log-density among the training rows'.

Why: one mixture over every feature can buy likelihood from a few features (a point mass of
discrete values, a component fitted to a cluster of anomalies) and then rank rows by those
alone; members that do not see a feature cannot, and the rank average keeps the evidence
most members agree on (Lazarevic & Kumar, "Feature bagging for outlier detection", KDD 2005).
The draws follow ``FusionConfig.random_state``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.fusion.base import TrainingSet
from mmgmm_spark.models.fusion.ensemble import Member, Subspace, fit_member, restricted
from mmgmm_spark.models.fusion.selection import Grid, select


def subspace_width(d: int, fraction: float) -> int:
    """Features a member keeps of a modality's ``d``: ceil(fraction x d) (fraction in (0, 1]),
    at most d - 1 when d > 2, else d."""
    return d if d <= 2 else min(d - 1, math.ceil(fraction * d))


def draw_features(modalities: list[Modality], fraction: float,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{modality: (subspace_width,) sorted column indices} of one member."""
    return {m.name: np.sort(rng.choice(m.dim, subspace_width(m.dim, fraction), replace=False))
            for m in modalities}


def fit_subspace_members(grid: Grid, training: TrainingSet) -> list[Member]:
    """``grid.config.subspaces`` members, each selected by ``grid`` on its own subspace of
    ``training``'s rows ({modality: (n, d_m)})."""
    config = grid.config
    rng = np.random.default_rng(config.random_state)
    members = []
    for _ in range(config.subspaces):
        features = draw_features(training.modalities, config.subspace_fraction, rng)
        modalities = [replace(m, dim=len(features[m.name])) for m in training.modalities]
        best, _ = select(grid, TrainingSet(training.key, modalities,
                                           restricted(training.data, features)))
        subspace = Subspace(features, modalities, best.preprocessors)
        members.append(fit_member(grid.fusion, modalities, best.preprocessors, training.key,
                                  best.mixture, training.data, config.n_quantiles, subspace))
    return members
