"""Log-densities of rows under every component, and the E-step in log space.

Rows are first *centred* on a per-modality shift c (the weighted mean of the component means,
see :func:`shift`), so that raw data with large offsets keeps its digits; every kernel is then a
few large GEMMs over a block of rows, with no Python loop over rows or components.
"""

from __future__ import annotations

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import GaussianBlock, MixtureParams

LOG_2PI = np.log(2.0 * np.pi)


def shift(gaussian: GaussianBlock, weights: np.ndarray) -> np.ndarray:
    """(d,) the centre c of a modality: sum_k pi_k mu_k (a function of the parameters only)."""
    return weights @ gaussian.means


def _mahalanobis_full(x: np.ndarray, means: np.ndarray, chol: np.ndarray) -> np.ndarray:
    k, d, _ = chol.shape
    # one GEMM gives (x - mu_k)^T C_k for every k: [x, 1] @ [[C_1 ... C_K], [-mu_k^T C_k ...]]
    weights = np.empty((d + 1, k * d))
    weights[:d] = chol.transpose(1, 0, 2).reshape(d, k * d)
    weights[d] = -np.einsum("kd,kde->ke", means, chol).reshape(k * d)
    augmented = np.empty((x.shape[0], d + 1))
    augmented[:, :d] = x
    augmented[:, d] = 1.0
    y = (augmented @ weights).reshape(-1, k, d)
    return np.einsum("nkd,nkd->nk", y, y)


def _mahalanobis_tied(x: np.ndarray, means: np.ndarray, chol: np.ndarray) -> np.ndarray:
    y = x @ chol
    b = means @ chol
    return (y * y).sum(axis=1)[:, None] - 2.0 * (y @ b.T) + (b * b).sum(axis=1)[None]


def _mahalanobis_diag(x: np.ndarray, means: np.ndarray, chol: np.ndarray) -> np.ndarray:
    precision = chol * chol
    return ((x * x) @ precision.T - 2.0 * (x @ (means * precision).T)
            + (means * means * precision).sum(axis=1)[None])


def _mahalanobis_spherical(x: np.ndarray, means: np.ndarray, chol: np.ndarray) -> np.ndarray:
    precision = chol * chol
    return ((x * x).sum(axis=1)[:, None] - 2.0 * (x @ means.T)
            + (means * means).sum(axis=1)[None]) * precision[None]


MAHALANOBIS = {"full": _mahalanobis_full, "tied": _mahalanobis_tied,
               "diag": _mahalanobis_diag, "spherical": _mahalanobis_spherical}


def log_gaussian_density(centred: np.ndarray, gaussian: GaussianBlock,
                         centre: np.ndarray) -> np.ndarray:
    """(n, K) log N(x_i | mu_k, Sigma_k) from ``centred`` = x - centre, (n, d)."""
    maha = MAHALANOBIS[gaussian.covariance_type](centred, gaussian.means - centre,
                                                 gaussian.precisions_cholesky)
    return -0.5 * (gaussian.dim * LOG_2PI + maha) + gaussian.log_det_precision_cholesky()


def centred_blocks(batch: Batch, params: MixtureParams,
                   modalities: tuple[Modality, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per modality, (centre (d,), observed values minus the centre (n_observed, d))."""
    out = {}
    for m in modalities:
        centre = shift(params.blocks[m.name], params.weights)
        out[m.name] = centre, batch.blocks[m.name].values - centre
    return out


def weighted_log_prob(batch: Batch, params: MixtureParams, modalities: tuple[Modality, ...],
                      centred: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
                      ) -> np.ndarray:
    """(n, K) log pi_k + sum over observed modalities m of w_m log N(x^(m) | component k).

    A modality missing from a row is marginalised out: it simply adds nothing.
    ``centred`` (from :func:`centred_blocks`) may be passed to reuse it.
    """
    centred = centred if centred is not None else centred_blocks(batch, params, modalities)
    out = np.empty((batch.n_rows, params.n_components))
    out[:] = np.log(params.weights)
    for m in modalities:
        block = batch.blocks[m.name]
        centre, x = centred[m.name]
        contribution = log_gaussian_density(x, params.blocks[m.name], centre)
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
    for m, (centre, x) in zip(modalities, centred_blocks(batch, params, modalities).values(),
                              strict=True):
        column = np.full(batch.n_rows, np.nan)
        log_dens = log_gaussian_density(x, params.blocks[m.name], centre)
        column[batch.blocks[m.name].observed] = logsumexp_rows(log_dens + log_weights)
        out[m.name] = column
    return out
