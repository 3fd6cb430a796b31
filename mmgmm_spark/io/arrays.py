"""The one codec of mixture parameters as named float64 arrays, and its validation rules.

Model files and checkpoints store parameters the same way — ``<prefix>weights`` (K,) and, per
modality index i, ``<prefix>m<i>_means`` (K, d), ``<prefix>m<i>_covariances`` and
``<prefix>m<i>_precisions_cholesky`` (the covariance type's shape) — and read them back under
the same rules: exactly those arrays, finite float64 of the expected shapes, weights > 0
summing to 1, precisions consistent with the covariances.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import (
    DegenerateComponentError,
    GaussianBlock,
    MixtureParams,
    covariance_shape,
    precisions_cholesky_from_covariances,
    stored_array,
)

BLOCK_FIELDS = ("means", "covariances", "precisions_cholesky")


class ArrayFormatError(ValueError):
    """Parameter arrays that break a rule; the message names the array and the rule."""


def param_keys(modalities: tuple[Modality, ...], prefix: str = "") -> set[str]:
    """The names of every array :func:`param_arrays` writes."""
    return {f"{prefix}weights"} | {f"{prefix}m{i}_{name}" for i in range(len(modalities))
                                   for name in BLOCK_FIELDS}


def param_arrays(params: MixtureParams, modalities: tuple[Modality, ...],
                 prefix: str = "") -> dict[str, np.ndarray]:
    """``params`` as named float64 arrays (see the module docstring)."""
    arrays = {f"{prefix}weights": np.asarray(params.weights, dtype=np.float64)}
    for index, m in enumerate(modalities):
        block = params.blocks[m.name]
        for name in BLOCK_FIELDS:
            arrays[f"{prefix}m{index}_{name}"] = np.asarray(getattr(block, name), np.float64)
    return arrays


def _finite_array(arrays: Mapping[str, np.ndarray], key: str,
                  shape: tuple[int, ...]) -> np.ndarray:
    try:
        return stored_array(arrays, key, shape)
    except ValueError as error:
        raise ArrayFormatError(str(error)) from None


def _block(arrays: Mapping[str, np.ndarray], key: str, modality: Modality,
           k: int) -> GaussianBlock:
    kind = modality.covariance_type
    shape = covariance_shape(kind, k, modality.dim)
    means = _finite_array(arrays, f"{key}_means", (k, modality.dim))
    covariances = _finite_array(arrays, f"{key}_covariances", shape)
    cholesky = _finite_array(arrays, f"{key}_precisions_cholesky", shape)
    try:
        expected = precisions_cholesky_from_covariances(kind, covariances, modality.name)
    except DegenerateComponentError as error:
        raise ArrayFormatError(str(error)) from None
    block = GaussianBlock(kind, means, covariances, cholesky)
    if not np.allclose(block.precisions(),
                       GaussianBlock(kind, means, covariances, expected).precisions(),
                       rtol=1e-6, atol=0):
        raise ArrayFormatError(f"modality '{modality.name}' precisions do not match its "
                               "covariances; the arrays were modified or corrupted.")
    return block


def read_params(arrays: Mapping[str, np.ndarray], modalities: tuple[Modality, ...],
                n_components: int, prefix: str = "") -> MixtureParams:
    """The validated parameters stored under ``prefix`` (:class:`ArrayFormatError` if not)."""
    weights = _finite_array(arrays, f"{prefix}weights", (n_components,))
    if np.any(weights <= 0) or not np.isclose(weights.sum(), 1.0):
        raise ArrayFormatError("weights must be positive and sum to 1.")
    blocks = {m.name: _block(arrays, f"{prefix}m{index}", m, n_components)
              for index, m in enumerate(modalities)}
    return MixtureParams(weights, blocks)
