"""``late``: one mixture per modality, fitted on the rows observing it.

Each modality's log-likelihood is standardised by its training mean and (population)
standard deviation; the fused ``log_likelihood`` is the mean over the modalities a row
observes (unitless). Its log-density is that of independent modalities (the sum of each
modality's own log-density), so strategies compare in the same units when every weight is 1.
"""

from __future__ import annotations

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.fusion.base import (
    CLUSTER,
    LOG_LIKELIHOOD,
    Arrays,
    FittedFusion,
    FusionStrategy,
    Stats,
    TrainingSet,
    dense,
    observed,
    projected_rows,
    residual_terms,
)

MIN_STD = 1e-12
"""Floor of a modality's log-likelihood standard deviation (a constant column)."""


class LateFusion(FusionStrategy):
    """One mixture per modality; standardised log-likelihoods averaged."""

    name = "late"
    summary = "fits one mixture per modality"
    resume = False
    sweep = False
    responsibilities = False
    per_modality = True

    def mixture_keys(self, modalities: list[Modality] | tuple[Modality, ...]) -> list[str]:
        return [m.name for m in modalities]

    def training_sets(self, modalities: list[Modality], batch: Batch) -> list[TrainingSet]:
        values = dense(batch)
        return [TrainingSet(m.name, [m], {m.name: values[m.name][batch.blocks[m.name].observed]})
                for m in modalities]

    def fitted_stats(self, model: FittedFusion, data: Arrays) -> Stats:
        """{modality: (mean, std)} of its log-likelihood over the rows observing it."""
        values, _ = modality_log_likelihoods(model, data)
        out = {}
        for name, column in values.items():
            seen = column[~np.isnan(column)]
            out[name] = (float(seen.mean()), float(max(seen.std(), MIN_STD)))
        return out

    def preprocessed_names(self, key: str, modalities: list[Modality]) -> list[str]:
        return [key]

    def columns(self, model: FittedFusion, data: Arrays) -> Arrays:
        values, cluster = modality_log_likelihoods(model, data)
        standardised = np.stack([(values[name] - mean) / std
                                 for name, (mean, std) in model.late_stats_.items()], axis=1)
        fused = np.nansum(standardised, axis=1) / (~np.isnan(standardised)).sum(axis=1)
        return {LOG_LIKELIHOOD: fused, CLUSTER: cluster, **values}

    def log_responsibilities(self, model: FittedFusion, data: Arrays) -> np.ndarray:
        raise ValueError("Responsibilities are not defined for 'late' models (one mixture "
                         "per modality); set scoring.include_responsibilities false.")

    def log_density(self, model: FittedFusion, columns: Arrays) -> np.ndarray:
        """(n,) sum over observed modalities of their own mixtures' log-densities."""
        return np.nansum(np.stack([columns[m.name] for m in model.modalities], axis=1), axis=1)

    def consistency_error(self, model: FittedFusion) -> str | None:
        expected = set(self.mixture_keys(model.modalities))
        if set(model.mixtures_) != expected or set(model.late_stats_) != expected:
            return (f"fusion artefact for '{self.name}' has mixtures "
                    f"{sorted(model.mixtures_)}, expected {sorted(expected)}.")
        return None


LATE_FUSION = LateFusion()


def modality_log_likelihoods(model: FittedFusion, data: Arrays) -> tuple[Arrays, np.ndarray]:
    """Each modality's own mixture log-density (n,) (NaN where missing), and (n,) the most
    probable component of the first observed modality's mixture (-1: none)."""
    x, extra = projected_rows(model, data), residual_terms(model, data)
    out = {}
    cluster = np.full(len(next(iter(data.values()))), -1, dtype=np.int32)
    for m in reversed(model.modalities):                 # the first observed one wins
        column = np.full(len(x[m.name]), np.nan)
        rows = observed(x[m.name])
        if rows.any():
            log_likelihood, log_resp = model.mixtures_[m.name].log_prob(
                {m.name: x[m.name][rows]})
            column[rows] = log_likelihood + extra[m.name][rows]
            cluster[rows] = log_resp.argmax(axis=1)
        out[m.name] = column
    return {m.name: out[m.name] for m in model.modalities}, cluster
