"""``joint``: the block-diagonal multimodal mixture (:class:`MultimodalGaussianMixture`).

Components are products of per-modality Gaussians; a row missing a modality marginalises it
out; ``Modality.weight`` is the fusion weight of its log-density.
"""

from __future__ import annotations

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.fusion.base import (
    CLUSTER,
    JOINT,
    LOG_LIKELIHOOD,
    Arrays,
    FittedFusion,
    FusionStrategy,
    TrainingSet,
    dense,
    projected_rows,
    residual_terms,
)


class JointFusion(FusionStrategy):
    """One mixture of per-modality blocks, fitted on every row (missing blocks marginalised)."""

    name = JOINT
    summary = "fits one mixture of per-modality blocks"
    fusion_weights = True
    plain_mixture = True
    fisher_vectors = True

    def mixture_keys(self, modalities: list[Modality] | tuple[Modality, ...]) -> list[str]:
        return [JOINT]

    def training_sets(self, modalities: list[Modality], batch: Batch) -> list[TrainingSet]:
        return [TrainingSet(JOINT, list(modalities), dense(batch))]

    def columns(self, model: FittedFusion, data: Arrays) -> Arrays:
        mixture = model.mixtures_[JOINT]
        x, extra = projected_rows(model, data), residual_terms(model, data)
        total, log_resp = mixture.log_prob(x)
        out = {CLUSTER: log_resp.argmax(axis=1).astype(np.int32)}
        for m in model.modalities:
            total = total + m.weight * np.nan_to_num(extra[m.name])
        out[LOG_LIKELIHOOD] = total
        for name, column in mixture.modality_log_likelihoods(x).items():
            out[name] = column + extra[name]
        return out

    def log_responsibilities(self, model: FittedFusion, data: Arrays) -> np.ndarray:
        return model.mixtures_[JOINT].log_prob(projected_rows(model, data))[1]


JOINT_FUSION = JointFusion()
