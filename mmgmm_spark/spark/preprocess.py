"""Preprocessing on Spark: the per-modality moments of cached rows in one aggregation pass.

:class:`mmgmm_spark.models.fusion.Preprocessing` fits standardisation and PCA from these moments
exactly as :class:`mmgmm_spark.core.preprocessing.ModalityPreprocessor.fit` does on arrays.
"""

from __future__ import annotations

import numpy as np

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.preprocessing import Moments, batch_moments, merge_moments
from mmgmm_spark.models.fusion import FusionConfig, Preprocessing
from mmgmm_spark.spark.data import CachedBlocks


def modality_moments(data: CachedBlocks, tree_depth: int = 2) -> dict[str, Moments]:
    """{modality: count, sum (d,) and centred scatter (d, d) of the rows observing it},
    weighted by the cached row weights (count = their sum)."""
    modalities = data.modalities
    zero = {m.name: Moments(0, np.zeros(m.dim), np.zeros((m.dim, m.dim))) for m in modalities}

    def to_arrays(moments: dict[str, Moments]) -> tuple[np.ndarray, ...]:
        return tuple(a for m in modalities for a in (
            np.array([moments[m.name].count]), moments[m.name].total, moments[m.name].scatter))

    def from_arrays(arrays: tuple[np.ndarray, ...]) -> dict[str, Moments]:
        return {m.name: Moments(float(arrays[3 * i][0]), arrays[3 * i + 1], arrays[3 * i + 2])
                for i, m in enumerate(modalities)}

    return data.aggregate(batch_moments, merge_moments, zero, (to_arrays, from_arrays),
                          tree_depth)


def fit_preprocessing(data: CachedBlocks, config: FusionConfig, source: str,
                      tree_depth: int = 2) -> Preprocessing:
    """Per-modality preprocessing fitted on all cached rows (one Spark pass)."""
    return fit_preprocessing_options(data, [config], source, tree_depth)[0]


def fit_preprocessing_options(data: CachedBlocks, configs: list[FusionConfig], source: str,
                              tree_depth: int = 2) -> list[Preprocessing]:
    """The preprocessing of each config, all fitted from one Spark pass's moments."""
    moments = modality_moments(data, tree_depth)
    try:
        return [Preprocessing.from_moments(list(data.modalities), moments, config)
                for config in configs]
    except ValueError as error:
        raise DataValidationError(
            f"{source}: {error} Add training rows that observe it, drop the modality, or "
            "remove the preprocessing section.") from None
