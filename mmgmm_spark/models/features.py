"""A fitted model's mixture features: what :mod:`mmgmm_spark.core.fisher` computes, on the
rows as the mixture sees them (the model's preprocessing applied first).

A plain :class:`MultimodalGaussianMixture` and a :class:`FusionModel` whose strategy has
``fisher_vectors`` (``joint``) have one mixture of per-modality blocks; ``early`` (one
concatenated block fitted on complete rows) and ``late`` (one mixture per modality) do not,
and are refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.fisher import fisher_layout, row_scores
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.preprocessing import ModalityPreprocessor, preprocess_batch
from mmgmm_spark.models.fusion import FusionModel, names_with
from mmgmm_spark.models.mixture import MultimodalGaussianMixture


@dataclass(frozen=True)
class MixtureFeatures:
    """Posteriors and Fisher scores of input rows under one fitted mixture.

    Attributes:
        modalities: the input modalities (the model's, at their input widths).
        mixture: the fitted mixture (its modalities at the preprocessed widths).
        preprocessors: {modality: preprocessor} applied before the mixture ({}: none).
    """

    modalities: tuple[Modality, ...]
    mixture: MultimodalGaussianMixture
    preprocessors: dict[str, ModalityPreprocessor]

    @classmethod
    def of(cls, model: MultimodalGaussianMixture | FusionModel) -> MixtureFeatures:
        """The features of a fitted mixture or fusion model (a ValueError for one without
        a single mixture of per-modality blocks)."""
        if not isinstance(model, FusionModel):
            return cls(tuple(model.modalities), model, {})
        if not model.fusion.fisher_vectors:
            raise ValueError(
                f"Mixture features need one mixture of per-modality blocks; this model uses "
                f"'{model.fusion.name}' fusion ({model.fusion.summary}). Train it with "
                f"model.fusion {' or '.join(names_with('fisher_vectors'))}.")
        (mixture,) = model.mixtures_.values()
        return cls(tuple(model.modalities), mixture, dict(model.preprocessors_))

    @property
    def n_components(self) -> int:
        return int(self.mixture.n_components)

    def layout(self) -> list[tuple[str, int]]:
        """The Fisher vector's blocks (see :func:`mmgmm_spark.core.fisher.fisher_layout`)."""
        return fisher_layout(self.mixture.params, self.mixture.modalities)

    def row_scores(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(responsibilities (n, K), per-row Fisher scores (n, D)) of a validated input batch
        (:func:`mmgmm_spark.core.fisher.row_scores` after the preprocessing)."""
        rows = preprocess_batch(batch, self.preprocessors) if self.preprocessors else batch
        return row_scores(rows, self.mixture.params, self.mixture.modalities)
