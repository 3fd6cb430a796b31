"""Mixture parameters: component weights and, per modality, a block of Gaussian parameters.

Shapes follow scikit-learn's ``GaussianMixture`` for each covariance type; what depends on
the type is the type's object in :mod:`mmgmm_spark.core.covariance`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mmgmm_spark.core.covariance import (
    CovarianceType,
    DegenerateComponentError,
    covariance_type,
)
from mmgmm_spark.core.modality import Modality

__all__ = ["DegenerateComponentError", "DegenerateComponentWarning", "GaussianBlock",
           "MixtureParams", "check_initial_params", "check_param_shapes", "covariance_shape",
           "covariances_from_precisions", "precisions_cholesky_from_covariances",
           "relative_variances", "stored_array"]


def stored_array(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...],
                 what: str = "array") -> np.ndarray:
    """``arrays[key]`` if it is finite float64 of ``shape``; else a ValueError naming it."""
    if key not in arrays:
        raise ValueError(f"lacks {what} '{key}'.")
    value = arrays[key]
    if value.dtype != np.float64 or value.shape != shape or not np.all(np.isfinite(value)):
        raise ValueError(f"{what} '{key}' must be finite float64 of shape {shape}, got "
                         f"{value.dtype} {value.shape}.")
    return value


RegCovar = float | Mapping[str, float | np.ndarray]
"""``reg_covar``: one value for every modality, or {modality: value} (relative mode), or
{modality: (d,) one value per feature} (dequantise mode)."""


def block_reg_covar(reg_covar: RegCovar, modality: str) -> float | np.ndarray:
    """The value of ``reg_covar`` for ``modality``: a number, or (d,) per feature."""
    return float(reg_covar) if isinstance(reg_covar, int | float) else reg_covar[modality]


def quantisation_variances(values: np.ndarray) -> np.ndarray:
    """(d,) step_j^2 / 12 per feature of ``values`` (n, d): the variance of uniform noise over
    feature j's quantisation step (the smallest gap between its distinct values; 0 when it has
    fewer than two), which fitting on x + U(-step/2, step/2) would add in expectation."""
    out = np.zeros(values.shape[1])
    for j in range(values.shape[1]):
        distinct = np.unique(values[:, j])
        if len(distinct) > 1:
            out[j] = float(np.diff(distinct).min()) ** 2 / 12.0
    return out


class DegenerateComponentWarning(UserWarning):
    """A component collapsed (almost no rows) but the fit could go on thanks to ``reg_covar``."""


def covariance_shape(kind: str, n_components: int, dim: int) -> tuple[int, ...]:
    """Shape of ``covariances``/``precisions_cholesky`` for a covariance type."""
    return covariance_type(kind).shape(n_components, dim)


def precisions_cholesky_from_covariances(kind: str, covariances: np.ndarray,
                                         modality: str = "?",
                                         reg_covar: float | None = None) -> np.ndarray:
    """C with C @ C.T = inv(covariance), per scikit-learn's ``_compute_precision_cholesky``."""
    return covariance_type(kind).precisions_cholesky(covariances, modality, reg_covar)


def covariances_from_precisions(kind: str, precisions: np.ndarray,
                                modality: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """(covariances, precisions_cholesky) from precision matrices (as ``precisions_init``)."""
    return covariance_type(kind).from_precisions(precisions, modality)


@dataclass(frozen=True)
class GaussianBlock:
    """One modality's Gaussian parameters for all K components (shapes: module docstring).

    Attributes:
        covariance_type: "full", "tied", "diag" or "spherical".
        means: (K, d).
        covariances: per-type shape.
        precisions_cholesky: per-type shape.
    """

    covariance_type: str
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    @classmethod
    def from_covariances(cls, covariance_type: str, means: np.ndarray, covariances: np.ndarray,
                         modality: str = "?", reg_covar: float | None = None) -> GaussianBlock:
        chol = precisions_cholesky_from_covariances(covariance_type, covariances, modality,
                                                    reg_covar)
        return cls(covariance_type, means, covariances, chol)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def kind(self) -> CovarianceType:
        """The registered object of this block's covariance type."""
        return covariance_type(self.covariance_type)

    def log_det_precision_cholesky(self) -> np.ndarray:
        """(K,) or scalar (tied): log det C, i.e. half the log-determinant of the precision."""
        return self.kind.log_det(self.precisions_cholesky, self.dim)

    def precisions(self) -> np.ndarray:
        """Inverse covariances, in the covariance type's shape (C @ C.T, or C**2)."""
        return self.kind.precisions(self.precisions_cholesky)

    @cached_property
    def pair_precisions(self) -> np.ndarray:
        """(K, d(d+1)/2) of a full block: P_ij for i <= j (:func:`numpy.triu_indices` order),
        off-diagonal entries doubled, so that x^T P_k x = pair_precisions[k] @ (x_i x_j)_{i<=j}.
        """
        rows, cols = np.triu_indices(self.dim)
        return self.precisions()[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)

    def full_covariances(self, n_components: int) -> np.ndarray:
        """(K, d, d) dense covariance of every component, whatever the type."""
        return self.kind.dense(self.covariances, n_components, self.dim)

    def n_parameters(self) -> int:
        """Free parameters of the block: means plus covariances (as scikit-learn counts them)."""
        k, d = self.means.shape
        return int(self.kind.n_covariance_parameters(k, d) + k * d)


@dataclass(frozen=True)
class MixtureParams:
    """Weights (K,) and one :class:`GaussianBlock` per modality name."""

    weights: np.ndarray
    blocks: dict[str, GaussianBlock]

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    def n_parameters(self) -> int:
        """Free parameters of the whole mixture, as used by BIC and AIC."""
        return sum(b.n_parameters() for b in self.blocks.values()) + self.n_components - 1


def relative_variances(params: MixtureParams) -> np.ndarray:
    """(K,) each component's smallest variance relative to the mixture's: the least
    generalised eigenvalue of its covariance Sigma_k against the total covariance of the
    mixture, Sigma = sum_k pi_k (Sigma_k + (mu_k - mu)(mu_k - mu)^T), mu = sum_k pi_k mu_k
    (per modality block, the minimum over blocks). Invariant to any invertible affine map
    of a block's coordinates; 1 for K = 1. Near 0: the component is (close to) flat in some
    direction along which the data vary, e.g. collapsed onto a point mass of some features.
    """
    out = np.full(params.n_components, np.inf)
    for block in params.blocks.values():
        covariances = block.full_covariances(params.n_components)           # (K, d, d)
        centred = block.means - params.weights @ block.means                 # (K, d)
        total = np.einsum("k,kij->ij", params.weights, covariances
                          + centred[:, :, None] * centred[:, None, :])      # (d, d)
        inverse_root = np.linalg.inv(np.linalg.cholesky(total))             # L^-1
        relative = inverse_root @ covariances @ inverse_root.T               # (K, d, d)
        out = np.minimum(out, np.linalg.eigvalsh(relative)[:, 0])
    return out


def check_param_shapes(modalities: tuple[Modality, ...], n_components: int,
                       weights: np.ndarray | None, means: dict | None,
                       precisions: dict | None) -> None:
    """Raise a ValueError naming the argument and modality when an initial value has a bad shape."""
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.shape != (n_components,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(
                f"weights_init must be {n_components} non-negative numbers summing to 1, "
                f"got shape {w.shape} summing to {w.sum():.6g}."
            )
    for argument, values, shape_of in (
        ("means_init", means, lambda m: (n_components, m.dim)),
        ("precisions_init", precisions,
         lambda m: covariance_shape(m.covariance_type, n_components, m.dim)),
    ):
        if values is None:
            continue
        unknown = sorted(set(values) - {m.name for m in modalities})
        if unknown:
            raise ValueError(f"{argument} has keys {unknown} that are not modalities.")
        for m in modalities:
            if m.name in values and np.shape(values[m.name]) != shape_of(m):
                raise ValueError(
                    f"{argument}['{m.name}'] must have shape {shape_of(m)} for a "
                    f"'{m.covariance_type}' modality with dim {m.dim}, got "
                    f"{np.shape(values[m.name])}."
                )


def check_initial_params(params: MixtureParams, modalities: tuple[Modality, ...],
                         n_components: int, source: str = "initial_model") -> MixtureParams:
    """``params`` if a model of ``modalities`` with K=``n_components`` can start EM from them.

    Raises:
        ValueError: naming what differs (modalities, a modality's width or covariance type, K),
            with the fix.
    """
    expected = [m.name for m in modalities]
    if list(params.blocks) != expected:
        raise ValueError(
            f"{source} has modalities {list(params.blocks)}, the model {expected}. Warm-start "
            "from a model of the same modalities, or fit from scratch.")
    differences = [f"K={params.n_components} (the model's n_components={n_components})"
                   ] if params.n_components != n_components else []
    for m in modalities:
        block = params.blocks[m.name]
        if block.dim != m.dim:
            differences.append(f"modality '{m.name}' of width {block.dim} (the model's "
                               f"{m.dim})")
        if block.covariance_type != m.covariance_type:
            differences.append(f"modality '{m.name}' of covariance type "
                               f"'{block.covariance_type}' (the model's '{m.covariance_type}')")
    if differences:
        raise ValueError(f"{source} differs from the model: {'; '.join(differences)}. "
                         "Warm-start from a model of the same shape, or fit from scratch.")
    return params
