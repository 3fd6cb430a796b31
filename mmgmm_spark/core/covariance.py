"""Covariance types: one object per type owns everything that depends on it.

Shapes follow scikit-learn's ``GaussianMixture`` (K components, d features):

=========== ============== ======================== ==========================
type        covariances    precisions_cholesky      second-moment statistics
=========== ============== ======================== ==========================
full        (K, d, d)      (K, d, d)                (K, d(d+1)/2) upper triangle
tied        (d, d)         (d, d)                   (d, d) summed over components
diag        (K, d)         (K, d)                   (K, d) diagonal
spherical   (K,)           (K,)                     (K, d) diagonal
=========== ============== ======================== ==========================

``precisions_cholesky`` C satisfies ``C @ C.T == inv(covariance)``. To add a covariance type,
write one :class:`CovarianceType` subclass and add it to :data:`COVARIANCE_TYPES`: the
densities, EM statistics, M-step, initialisation, model files and the configuration all
ask the registry (:func:`covariance_type`), and nothing else branches on the name.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
from scipy import linalg


class DegenerateComponentError(ValueError):
    """A component's covariance is not positive definite, so the fit cannot go on."""


class CentredRows(Protocol):
    """Observed rows of one modality minus its centre (``densities.Centred``), in the compute
    dtype (float64, or float32 when opted in): the kernels multiply in ``values.dtype``."""

    values: np.ndarray            # (n, d)

    @property
    def moment_rows(self) -> np.ndarray: ...   # (d(d+1)/2 + d + 1, n)


class Gaussians(Protocol):
    """A modality's parameters for K components (``params.GaussianBlock``)."""

    precisions_cholesky: np.ndarray

    @property
    def pair_precisions(self) -> np.ndarray: ...   # (K, d(d+1)/2), full blocks


def singular(modality: str, component: int | str,
             reg_covar: float | np.ndarray | None) -> DegenerateComponentError:
    """The error for a covariance that is not positive definite, with what to do
    (``reg_covar``: a number or (d,) per feature, shown as its largest value)."""
    hint = (f"increase reg_covar (now {np.max(reg_covar):g}), " if reg_covar is not None
            else "")
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
        raise singular(modality, component, reg_covar) from None


def compute_cast(x: CentredRows, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """``arrays`` (parameters, responsibilities) in the compute dtype of the rows ``x``, so
    that every GEMM runs in that dtype (no copy when they already are)."""
    return tuple(a.astype(x.values.dtype, copy=False) for a in arrays)


def as_float64(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """``arrays`` in float64 (no copy when they already are): kernels return float64."""
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def unpack_symmetric(packed: np.ndarray, dim: int) -> np.ndarray:
    """(K, d, d) symmetric matrices from their upper triangles (K, d(d+1)/2)."""
    rows, cols = np.triu_indices(dim)
    out = np.empty((packed.shape[0], dim, dim))
    out[:, rows, cols] = packed
    out[:, cols, rows] = packed
    return out


class CovarianceType:
    """What one covariance type decides (see the module docstring for the shapes)."""

    name: ClassVar[str]

    def shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        """Shape of ``covariances`` and ``precisions_cholesky``."""
        raise NotImplementedError

    def second_shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        """Shape of the second-moment statistics."""
        return (n_components, dim)

    def n_covariance_parameters(self, n_components: int, dim: int) -> float:
        """Free covariance parameters (as scikit-learn counts them)."""
        raise NotImplementedError

    def row_cells(self, dim: int) -> int:
        """Cells per row of this type's widest intermediate (chunk sizing)."""
        return dim

    def precisions_cholesky(self, covariances: np.ndarray, modality: str,
                            reg_covar: float | None) -> np.ndarray:
        """C with C @ C.T = inv(covariance), per scikit-learn's ``_compute_precision_cholesky``."""
        raise NotImplementedError

    def from_precisions(self, precisions: np.ndarray,
                        modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(covariances, precisions_cholesky) from precision matrices (``precisions_init``)."""
        raise NotImplementedError

    def log_det(self, cholesky: np.ndarray, dim: int) -> np.ndarray:
        """(K,) or a scalar (tied): log det C, half the log-determinant of the precision."""
        raise NotImplementedError

    def precisions(self, cholesky: np.ndarray) -> np.ndarray:
        """Inverse covariances in this type's shape."""
        return cholesky ** 2

    def dense(self, covariances: np.ndarray, n_components: int, dim: int) -> np.ndarray:
        """(K, d, d) dense covariance of every component."""
        raise NotImplementedError

    def pooled(self, covariance: np.ndarray, n_components: int) -> np.ndarray:
        """Every component's covariances from one (d, d) covariance (initialisation)."""
        raise NotImplementedError

    def mahalanobis_terms(self, gaussians: Gaussians, means: np.ndarray
                          ) -> tuple[np.ndarray, ...]:
        """The parameter-only arrays of :meth:`mahalanobis` for centred means (K, d), float64:
        computed once per parameter set (``densities.DensityKernel``), not once per chunk."""
        raise NotImplementedError

    def mahalanobis(self, x: CentredRows, terms: tuple[np.ndarray, ...]) -> np.ndarray:
        """(n, K) float64 squared Mahalanobis distances of centred rows from
        :meth:`mahalanobis_terms` (already in the rows' compute dtype)."""
        raise NotImplementedError

    def statistics(self, resp: np.ndarray, x: CentredRows
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mass (K,), first (K, d), second) of responsibilities (n, K) and centred rows,
        float64 whatever the compute dtype."""
        values, (weights,) = x.values, compute_cast(x, resp)
        return as_float64(resp.sum(axis=0), weights.T @ values, weights.T @ (values * values))

    def covariances(self, second: np.ndarray, mass: np.ndarray,
                    offset: np.ndarray) -> np.ndarray:
        """M-step covariances before regularisation, from second moments about the centre,
        the masses (K,) and the new means minus the centre (K, d)."""
        return second / mass[:, None] - offset ** 2

    def variances(self, covariances: np.ndarray) -> np.ndarray:
        """Per-feature variances of :meth:`covariances`' result: (K, d), or (d,) if tied."""
        return covariances

    def regularised(self, covariances: np.ndarray, reg_covar: float) -> np.ndarray:
        """:meth:`covariances`' result with ``reg_covar`` on the diagonal, in this type's shape."""
        return covariances + reg_covar

    def keep_empty(self, covariances: np.ndarray, previous: np.ndarray,
                   empty: np.ndarray) -> np.ndarray:
        """``covariances`` with the components in ``empty`` (K,) bool kept from ``previous``."""
        covariances[empty] = previous[empty]
        return covariances

    def whiten(self, values: np.ndarray, means: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
        """(n, K, d) whitened offsets y_k = C_k^T (x - mu_k) of rows (n, d) from means (K, d),
        so that y_k . y_k is the squared Mahalanobis distance (Fisher vectors' mean block)."""
        raise NotImplementedError

    def variance_width(self, dim: int) -> int:
        """Fisher-vector numbers per component for the variances (0: none for this type)."""
        return 0

    def variance_scores(self, whitened: np.ndarray) -> np.ndarray:
        """(n, K, :meth:`variance_width`) Fisher-normalised gradients of log N with respect to
        the component's standard deviations, from :meth:`whiten`'s (n, K, d) offsets."""
        return whitened[:, :, :0]


class _Matrices(CovarianceType):
    """Shared by the types whose covariances are d x d matrices (full, tied)."""

    def precisions_cholesky(self, covariances: np.ndarray, modality: str,
                            reg_covar: float | None) -> np.ndarray:
        stack = self._stack(covariances)
        chol = np.empty_like(stack)
        for k, cov in enumerate(stack):
            lower = _lower_cholesky(cov, modality, self._component(k), reg_covar)
            chol[k] = linalg.solve_triangular(lower, np.eye(cov.shape[0]), lower=True).T
        return self._unstack(chol)

    def from_precisions(self, precisions: np.ndarray,
                        modality: str) -> tuple[np.ndarray, np.ndarray]:
        stack = self._stack(precisions)
        chol = np.stack([_lower_cholesky(p, modality, k, None) for k, p in enumerate(stack)])
        eye = np.eye(stack.shape[-1])
        cov = np.stack([linalg.cho_solve((c, True), eye) for c in chol])
        return self._unstack(cov), self._unstack(chol)

    def precisions(self, cholesky: np.ndarray) -> np.ndarray:
        return cholesky @ np.swapaxes(cholesky, -1, -2)

    def variances(self, covariances: np.ndarray) -> np.ndarray:
        return np.diagonal(covariances, axis1=-2, axis2=-1)

    def whiten(self, values: np.ndarray, means: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
        stack = np.broadcast_to(self._stack(cholesky), (len(means), *cholesky.shape[-2:]))
        return np.einsum("nkd,kde->nke", values[:, None, :] - means[None], stack)

    def regularised(self, covariances: np.ndarray, reg_covar: float) -> np.ndarray:
        dim = covariances.shape[-1]
        covariances[..., np.arange(dim), np.arange(dim)] += reg_covar
        return covariances

    def _stack(self, matrices: np.ndarray) -> np.ndarray:
        return matrices

    def _unstack(self, stack: np.ndarray) -> np.ndarray:
        return stack

    def _component(self, k: int) -> int | str:
        return k


class FullCovariance(_Matrices):
    """One d x d matrix per component; statistics and E-step through the pair products."""

    name = "full"

    def shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        return (n_components, dim, dim)

    def second_shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        return (n_components, dim * (dim + 1) // 2)

    def n_covariance_parameters(self, n_components: int, dim: int) -> float:
        return n_components * dim * (dim + 1) / 2

    def row_cells(self, dim: int) -> int:
        return dim * (dim + 1) // 2          # the moment rows

    def log_det(self, cholesky: np.ndarray, dim: int) -> np.ndarray:
        return np.log(np.diagonal(cholesky, axis1=1, axis2=2)).sum(axis=1)

    def dense(self, covariances: np.ndarray, n_components: int, dim: int) -> np.ndarray:
        return covariances

    def pooled(self, covariance: np.ndarray, n_components: int) -> np.ndarray:
        dim = covariance.shape[0]
        return np.broadcast_to(covariance, (n_components, dim, dim)).copy()

    def mahalanobis_terms(self, gaussians: Gaussians, means: np.ndarray
                          ) -> tuple[np.ndarray, ...]:
        # (x - m)^T P (x - m) = sum_{i<=j} c_ij P_ij x_i x_j - 2 x^T P m + m^T P m, where c is
        # 1 on the diagonal and 2 off it; x is centred near the data, so the terms stay small.
        chol = gaussians.precisions_cholesky
        whitened_means = np.einsum("kji,kj->ki", chol, means)            # C^T m, (K, d)
        linear = np.einsum("kij,kj->ki", chol, whitened_means)           # P m, (K, d)
        return (np.hstack([gaussians.pair_precisions, -2.0 * linear,
                           (whitened_means ** 2).sum(axis=1)[:, None]]),)   # (K, moment rows)

    def mahalanobis(self, x: CentredRows, terms: tuple[np.ndarray, ...]) -> np.ndarray:
        (maha,) = as_float64(terms[0] @ x.moment_rows)                  # (K, n)
        return np.maximum(maha, 0.0, out=maha).T

    def statistics(self, resp: np.ndarray, x: CentredRows
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pairs = x.values.shape[1] * (x.values.shape[1] + 1) // 2
        (moments,) = as_float64(x.moment_rows @ compute_cast(x, resp)[0])
        moments = moments.T                                         # (K, pairs + d + 1)
        return moments[:, -1], moments[:, pairs:-1], moments[:, :pairs]

    def covariances(self, second: np.ndarray, mass: np.ndarray,
                    offset: np.ndarray) -> np.ndarray:
        unpacked = unpack_symmetric(second, offset.shape[1])
        return unpacked / mass[:, None, None] - offset[:, :, None] * offset[:, None, :]


class TiedCovariance(_Matrices):
    """One d x d matrix shared by every component."""

    name = "tied"

    def shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        return (dim, dim)

    def second_shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        return (dim, dim)

    def n_covariance_parameters(self, n_components: int, dim: int) -> float:
        return dim * (dim + 1) / 2

    def log_det(self, cholesky: np.ndarray, dim: int) -> np.ndarray:
        return np.log(np.diag(cholesky)).sum()

    def dense(self, covariances: np.ndarray, n_components: int, dim: int) -> np.ndarray:
        return np.broadcast_to(covariances, (n_components, *covariances.shape)).copy()

    def pooled(self, covariance: np.ndarray, n_components: int) -> np.ndarray:
        return covariance

    def mahalanobis_terms(self, gaussians: Gaussians, means: np.ndarray
                          ) -> tuple[np.ndarray, ...]:
        chol = gaussians.precisions_cholesky
        whitened_means = means @ chol                                    # (K, d)
        return chol, whitened_means.T, (whitened_means ** 2).sum(axis=1)

    def mahalanobis(self, x: CentredRows, terms: tuple[np.ndarray, ...]) -> np.ndarray:
        chol, whitened_means_t, squared_norms = terms
        y = x.values @ chol
        return as_float64((y * y).sum(axis=1)[:, None] - 2.0 * (y @ whitened_means_t)
                          + squared_norms[None])[0]

    def statistics(self, resp: np.ndarray, x: CentredRows
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values, (weights,) = x.values, compute_cast(x, resp)
        return as_float64(resp.sum(axis=0), weights.T @ values, values.T @ values)

    def covariances(self, second: np.ndarray, mass: np.ndarray,
                    offset: np.ndarray) -> np.ndarray:
        return (second - (mass[:, None] * offset).T @ offset) / mass.sum()

    def keep_empty(self, covariances: np.ndarray, previous: np.ndarray,
                   empty: np.ndarray) -> np.ndarray:
        return previous if empty.all() else covariances

    def _stack(self, matrices: np.ndarray) -> np.ndarray:
        return matrices[None]

    def _unstack(self, stack: np.ndarray) -> np.ndarray:
        return stack[0]

    def _component(self, k: int) -> int | str:
        return "(tied)"


class _Diagonal(CovarianceType):
    """Shared by the types whose covariances are diagonal (diag, spherical)."""

    def precisions_cholesky(self, covariances: np.ndarray, modality: str,
                            reg_covar: float | None) -> np.ndarray:
        bad = np.flatnonzero((covariances <= 0.0).reshape(len(covariances), -1).any(axis=1))
        if bad.size:
            raise singular(modality, int(bad[0]), reg_covar)
        return 1.0 / np.sqrt(covariances)

    def from_precisions(self, precisions: np.ndarray,
                        modality: str) -> tuple[np.ndarray, np.ndarray]:
        if np.any(precisions <= 0):
            raise ValueError(f"precisions_init['{modality}'] must be positive.")
        return 1.0 / precisions, np.sqrt(precisions)


class DiagCovariance(_Diagonal):
    """One variance per component and feature."""

    name = "diag"

    def shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        return (n_components, dim)

    def n_covariance_parameters(self, n_components: int, dim: int) -> float:
        return n_components * dim

    def log_det(self, cholesky: np.ndarray, dim: int) -> np.ndarray:
        return np.log(cholesky).sum(axis=1)

    def dense(self, covariances: np.ndarray, n_components: int, dim: int) -> np.ndarray:
        return np.stack([np.diag(c) for c in covariances])

    def pooled(self, covariance: np.ndarray, n_components: int) -> np.ndarray:
        return np.tile(np.diag(covariance), (n_components, 1))

    def whiten(self, values: np.ndarray, means: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
        return (values[:, None, :] - means[None]) * cholesky[None]

    def variance_width(self, dim: int) -> int:
        return dim

    def variance_scores(self, whitened: np.ndarray) -> np.ndarray:
        # d log N / d sigma_j = (y_j^2 - 1) / sigma_j, Fisher information 2 / sigma_j^2
        return (whitened * whitened - 1.0) / np.sqrt(2.0)

    def mahalanobis_terms(self, gaussians: Gaussians, means: np.ndarray
                          ) -> tuple[np.ndarray, ...]:
        precision = gaussians.precisions_cholesky ** 2                   # (K, d)
        return precision.T, (means * precision).T, (means * means * precision).sum(axis=1)

    def mahalanobis(self, x: CentredRows, terms: tuple[np.ndarray, ...]) -> np.ndarray:
        values = x.values
        precision_t, scaled_means_t, constants = terms
        return as_float64((values * values) @ precision_t - 2.0 * (values @ scaled_means_t)
                          + constants[None])[0]


class SphericalCovariance(_Diagonal):
    """One variance per component, shared by its features."""

    name = "spherical"

    def shape(self, n_components: int, dim: int) -> tuple[int, ...]:
        return (n_components,)

    def n_covariance_parameters(self, n_components: int, dim: int) -> float:
        return n_components

    def log_det(self, cholesky: np.ndarray, dim: int) -> np.ndarray:
        return dim * np.log(cholesky)

    def dense(self, covariances: np.ndarray, n_components: int, dim: int) -> np.ndarray:
        return covariances[:, None, None] * np.eye(dim)[None]

    def pooled(self, covariance: np.ndarray, n_components: int) -> np.ndarray:
        return np.full(n_components, np.diag(covariance).mean())

    def whiten(self, values: np.ndarray, means: np.ndarray, cholesky: np.ndarray) -> np.ndarray:
        return (values[:, None, :] - means[None]) * cholesky[None, :, None]

    def variance_width(self, dim: int) -> int:
        return 1

    def variance_scores(self, whitened: np.ndarray) -> np.ndarray:
        # d log N / d sigma = (|y|^2 - d) / sigma, Fisher information 2 d / sigma^2
        dim = whitened.shape[2]
        return ((whitened * whitened).sum(axis=2, keepdims=True) - dim) / np.sqrt(2.0 * dim)

    def mahalanobis_terms(self, gaussians: Gaussians, means: np.ndarray
                          ) -> tuple[np.ndarray, ...]:
        return means.T, (means * means).sum(axis=1), gaussians.precisions_cholesky ** 2

    def mahalanobis(self, x: CentredRows, terms: tuple[np.ndarray, ...]) -> np.ndarray:
        values = x.values
        means_t, squared_norms, precision = terms
        return as_float64(((values * values).sum(axis=1)[:, None] - 2.0 * (values @ means_t)
                           + squared_norms[None]) * precision[None])[0]

    def regularised(self, covariances: np.ndarray, reg_covar: float) -> np.ndarray:
        return (covariances + reg_covar).mean(axis=1)


COVARIANCE_TYPES: dict[str, CovarianceType] = {
    kind.name: kind() for kind in (FullCovariance, TiedCovariance, DiagCovariance,
                                   SphericalCovariance)}
"""The registry: every covariance type by name."""


def covariance_type(name: str) -> CovarianceType:
    """The registered type called ``name``; a ValueError names the known ones."""
    try:
        return COVARIANCE_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"covariance_type must be one of {tuple(COVARIANCE_TYPES)}, "
                         f"got {name!r}.") from None
