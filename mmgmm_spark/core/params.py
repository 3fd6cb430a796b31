"""Mixture parameters: component weights and, per modality, a block of Gaussian parameters.

Shapes follow scikit-learn's ``GaussianMixture`` for each covariance type (K components,
d features):

=========== ============== ========================
type        covariances    precisions_cholesky
=========== ============== ========================
full        (K, d, d)      (K, d, d)
tied        (d, d)         (d, d)
diag        (K, d)         (K, d)
spherical   (K,)           (K,)
=========== ============== ========================

``precisions_cholesky`` C satisfies ``C @ C.T == inv(covariance)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import linalg

from mmgmm_spark.core.modality import Modality


class DegenerateComponentError(ValueError):
    """A component's covariance is not positive definite, so the fit cannot go on."""


class DegenerateComponentWarning(UserWarning):
    """A component collapsed (almost no rows) but the fit could go on thanks to ``reg_covar``."""


def covariance_shape(covariance_type: str, n_components: int, dim: int) -> tuple[int, ...]:
    """Shape of ``covariances``/``precisions_cholesky`` for a covariance type."""
    return {"full": (n_components, dim, dim), "tied": (dim, dim),
            "diag": (n_components, dim), "spherical": (n_components,)}[covariance_type]


def _singular(modality: str, component: int | str,
              reg_covar: float | None) -> DegenerateComponentError:
    hint = f"increase reg_covar (now {reg_covar:g}), " if reg_covar is not None else ""
    return DegenerateComponentError(
        f"Component {component} of modality '{modality}' has a covariance that is not positive "
        f"definite (collapsed onto too few or identical rows). Try to {hint}reduce n_components, "
        "or standardise the features."
    )


def _lower_cholesky(matrix: np.ndarray, modality: str, component: int | str,
                    reg_covar: float | None) -> np.ndarray:
    try:
        return linalg.cholesky(matrix, lower=True)
    except linalg.LinAlgError:
        raise _singular(modality, component, reg_covar) from None


def precisions_cholesky_from_covariances(covariance_type: str, covariances: np.ndarray,
                                         modality: str = "?",
                                         reg_covar: float | None = None) -> np.ndarray:
    """C with C @ C.T = inv(covariance), per scikit-learn's ``_compute_precision_cholesky``."""
    if covariance_type in ("diag", "spherical"):
        bad = np.flatnonzero((covariances <= 0.0).reshape(len(covariances), -1).any(axis=1))
        if bad.size:
            raise _singular(modality, int(bad[0]), reg_covar)
        return 1.0 / np.sqrt(covariances)
    stack = covariances[None] if covariance_type == "tied" else covariances
    chol = np.empty_like(stack)
    for k, cov in enumerate(stack):
        lower = _lower_cholesky(cov, modality, "(tied)" if covariance_type == "tied" else k,
                                reg_covar)
        chol[k] = linalg.solve_triangular(lower, np.eye(cov.shape[0]), lower=True).T
    return chol[0] if covariance_type == "tied" else chol


def covariances_from_precisions(covariance_type: str, precisions: np.ndarray,
                                modality: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """(covariances, precisions_cholesky) from precision matrices (as ``precisions_init``)."""
    if covariance_type in ("diag", "spherical"):
        if np.any(precisions <= 0):
            raise ValueError(f"precisions_init['{modality}'] must be positive.")
        return 1.0 / precisions, np.sqrt(precisions)
    stack = precisions[None] if covariance_type == "tied" else precisions
    chol = np.stack([_lower_cholesky(p, modality, k, None) for k, p in enumerate(stack)])
    eye = np.eye(stack.shape[-1])
    cov = np.stack([linalg.cho_solve((c, True), eye) for c in chol])
    return (cov[0], chol[0]) if covariance_type == "tied" else (cov, chol)


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

    def log_det_precision_cholesky(self) -> np.ndarray:
        """(K,) or scalar (tied): log det C, i.e. half the log-determinant of the precision."""
        c = self.precisions_cholesky
        if self.covariance_type == "full":
            return np.log(np.diagonal(c, axis1=1, axis2=2)).sum(axis=1)
        if self.covariance_type == "tied":
            return np.log(np.diag(c)).sum()
        if self.covariance_type == "diag":
            return np.log(c).sum(axis=1)
        return self.dim * np.log(c)

    def precisions(self) -> np.ndarray:
        """Inverse covariances, in the covariance type's shape (C @ C.T, or C**2)."""
        c = self.precisions_cholesky
        if self.covariance_type in ("full", "tied"):
            return c @ np.swapaxes(c, -1, -2)
        return c ** 2

    @cached_property
    def pair_precisions(self) -> np.ndarray:
        """(K, d(d+1)/2) of a full block: P_ij for i <= j (:func:`numpy.triu_indices` order),
        off-diagonal entries doubled, so that x^T P_k x = pair_precisions[k] @ (x_i x_j)_{i<=j}.
        """
        rows, cols = np.triu_indices(self.dim)
        return self.precisions()[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)

    def full_covariances(self, n_components: int) -> np.ndarray:
        """(K, d, d) dense covariance of every component, whatever the type."""
        cov = self.covariances
        if self.covariance_type == "full":
            return cov
        if self.covariance_type == "tied":
            return np.broadcast_to(cov, (n_components, *cov.shape)).copy()
        if self.covariance_type == "diag":
            return np.stack([np.diag(c) for c in cov])
        return cov[:, None, None] * np.eye(self.dim)[None]

    def n_parameters(self) -> int:
        """Free parameters of the block: means plus covariances (as scikit-learn counts them)."""
        k, d = self.means.shape
        cov = {"full": k * d * (d + 1) / 2, "tied": d * (d + 1) / 2,
               "diag": k * d, "spherical": k}[self.covariance_type]
        return int(cov + k * d)


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
