"""Log-densities of rows under every component, and the E-step in log space.

Rows are first *centred* on a per-modality shift c (the weighted mean of the component means,
see :func:`shift`), so that raw data with large offsets keeps its digits; every kernel is then a
few large GEMMs over a block of rows, with no Python loop over rows or components.

Full covariances use the expanded quadratic form (:class:`Centred`): its absolute error is about
machine epsilon times x^T P x, so a component whose mean lies s of its own standard deviations
from the centre loses about log10(s^2) of the Mahalanobis distance's 16 digits (6 digits at
s = 1e3) — harmless for responsibilities and scores, and the reason rows are centred first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import GaussianBlock, MixtureParams

LOG_2PI = np.log(2.0 * np.pi)


def shift(gaussian: GaussianBlock, weights: np.ndarray) -> np.ndarray:
    """(d,) the centre c of a modality: sum_k pi_k mu_k (a function of the parameters only)."""
    return weights @ gaussian.means


@dataclass
class Centred:
    """The observed rows of one modality minus its centre c (see :func:`shift`)."""

    centre: np.ndarray          # (d,) float64
    values: np.ndarray          # (n_observed, d), in the compute dtype (float64 or float32)

    @cached_property
    def moment_rows(self) -> np.ndarray:
        """(d(d+1)/2 + d + 1, n_observed): the pair products x_i x_j (i <= j, in
        :func:`numpy.triu_indices` order), then the features x_i, then a row of ones.

        Shared by the full-covariance E-step (every quadratic form (x - m)^T P (x - m) is a
        linear function of these rows) and M-step (mass, first and second moments are their
        responsibility-weighted sums), so each step is one GEMM over d(d+1)/2 + d + 1 rows
        instead of K*d columns.
        """
        n, d = self.values.shape
        pairs = d * (d + 1) // 2
        out = np.empty((pairs + d + 1, n), dtype=self.values.dtype)
        columns = out[pairs: pairs + d]
        columns[:] = self.values.T
        out[-1] = 1.0
        start = 0
        for i in range(d):
            np.multiply(columns[i], columns[i:], out=out[start: start + d - i])
            start += d - i
        return out


def log_gaussian_density(block: Centred, gaussian: GaussianBlock) -> np.ndarray:
    """(n_observed, K) log N(x_i | mu_k, Sigma_k) of the rows of a centred block."""
    maha = gaussian.kind.mahalanobis(block, gaussian, gaussian.means - block.centre)
    return -0.5 * (gaussian.dim * LOG_2PI + maha) + gaussian.log_det_precision_cholesky()


COMPUTE_DTYPES = ("float64", "float32")
"""Dtypes the kernels may multiply in (``compute_dtype``). Rows are centred in float64 first;
log-probabilities, responsibilities and statistics are float64 either way."""


FLOAT32_TOLERANCE = 2e-5
"""float32 kernels serve a modality only while the rounding they may add to the quadratic
forms, estimated by :func:`float32_error`, stays below this times d (a row's expected quadratic
form under its component); otherwise it is computed in float64 (ill-conditioned or far-off
components, e.g. near-duplicate rows held up by ``reg_covar``). Measured: standardised
mixtures at d=32/64 stay at 1.6-1.7e-5; the ADBench classical sets are at 5e-5 and above."""


def float32_error(gaussian: GaussianBlock, centre: np.ndarray) -> float:
    """Largest estimated float32 rounding of (x - m_k)^T P_k (x - m_k) over components, for rows
    x near their component: eps32 ||P_k||_F (||m_k - c||^2 + trace Sigma_k) (the rounding of
    the pair products x_i x_j, weighted by the precisions, adds up like a random walk)."""
    k, d = gaussian.means.shape
    precision_norm = np.linalg.norm(gaussian.kind.dense(gaussian.precisions(), k, d),
                                    axis=(1, 2))
    spread = (np.square(gaussian.means - centre).sum(axis=1)
              + np.trace(gaussian.full_covariances(k), axis1=1, axis2=2))
    return float(np.finfo(np.float32).eps * (precision_norm * spread).max())


def kernel_dtype(gaussian: GaussianBlock, centre: np.ndarray, compute_dtype: str) -> str:
    """The dtype one modality's kernels use: ``compute_dtype``, except float64 where float32
    would round its quadratic forms by more than :data:`FLOAT32_TOLERANCE` times d."""
    if (compute_dtype == "float64"
            or float32_error(gaussian, centre) > FLOAT32_TOLERANCE * gaussian.dim):
        return "float64"
    return compute_dtype


def centred_blocks(batch: Batch, params: MixtureParams, modalities: tuple[Modality, ...],
                   compute_dtype: str = "float64") -> dict[str, Centred]:
    """Per modality, its observed rows minus its centre, in the dtype :func:`kernel_dtype`
    chooses for ``compute_dtype``."""
    out = {}
    for m in modalities:
        gaussian = params.blocks[m.name]
        centre = shift(gaussian, params.weights)
        values = (batch.blocks[m.name].values - centre).astype(
            kernel_dtype(gaussian, centre, compute_dtype), copy=False)
        out[m.name] = Centred(centre, values)
    return out


def weighted_log_prob(batch: Batch, params: MixtureParams, modalities: tuple[Modality, ...],
                      centred: dict[str, Centred] | None = None
                      ) -> np.ndarray:
    """(n, K) log pi_k + sum over observed modalities m of w_m log N(x^(m) | component k).

    A modality missing from a row is marginalised out: it simply adds nothing.
    ``centred`` (from :func:`centred_blocks`) may be passed to reuse it.
    """
    centred = centred if centred is not None else centred_blocks(batch, params, modalities)
    # Column-major: the per-row reductions over K (log-sum-exp) then run over long contiguous
    # columns, several times faster than over K-long rows.
    out = np.empty((batch.n_rows, params.n_components), order="F")
    out[:] = np.log(params.weights)
    for m in modalities:
        block = batch.blocks[m.name]
        contribution = log_gaussian_density(centred[m.name], params.blocks[m.name])
        if m.weight != 1.0:
            contribution *= m.weight
        if block.all_observed:
            out += contribution
        else:
            out[block.observed] += contribution
    return out


def logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """(n,) log sum_k exp(a[i, k]) for a (n, K), stable for any magnitude."""
    top = a.max(axis=1)
    top[~np.isfinite(top)] = 0.0
    return np.log(np.exp(a - top[:, None]).sum(axis=1)) + top


def normalise_log_prob(log_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x_i) (n,), log responsibilities (n, K)) from joint log-probabilities (n, K)."""
    log_norm = logsumexp_rows(log_prob)
    log_prob -= log_norm[:, None]
    return log_norm, log_prob


def responsibilities(log_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log p(x_i) (n,), responsibilities (n, K)) from joint log-probabilities (n, K).

    The E-step's hot path: one exponential per cell serves both the log-sum-exp and the
    responsibilities. Works in place: ``log_prob`` becomes the responsibilities.
    """
    top = log_prob.max(axis=1)
    top[~np.isfinite(top)] = 0.0
    log_prob -= top[:, None]
    resp = np.exp(log_prob, out=log_prob)
    total = resp.sum(axis=1)
    resp /= total[:, None]
    return np.log(total) + top, resp


def modality_log_likelihoods(batch: Batch, params: MixtureParams,
                             modalities: tuple[Modality, ...]) -> dict[str, np.ndarray]:
    """Per modality, (n,) marginal log-likelihood log sum_k pi_k N(x^(m) | k); NaN where missing.

    The building block of per-modality anomaly attribution (unweighted by the fusion weight).
    """
    out = {}
    log_weights = np.log(params.weights)
    for m, block in zip(modalities, centred_blocks(batch, params, modalities).values(),
                        strict=True):
        column = np.full(batch.n_rows, np.nan)
        log_dens = log_gaussian_density(block, params.blocks[m.name])
        column[batch.blocks[m.name].observed] = logsumexp_rows(log_dens + log_weights)
        out[m.name] = column
    return out
