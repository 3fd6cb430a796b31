"""Mixture features: posterior responsibilities and improved Fisher vectors (numpy only).

The Fisher vector of a set of N rows ("descriptors") under the fitted mixture is the gradient
of their mean log-likelihood with respect to the mixture's parameters, normalised by the
diagonal closed-form approximation of the Fisher information (Perronnin and Dance 2007;
Sanchez et al. 2013, "Image classification with the Fisher vector"). For component k with
weight pi_k, posterior gamma_k(x) and per modality m the whitened offset
y = C_k^T (x^(m) - mu_k^(m)) (``C_k C_k^T`` the precision):

=================== ========================================== =============================
block               per row                                    numbers
=================== ========================================== =============================
weights             (gamma_k - pi_k) / sqrt(pi_k)              K
means, modality m   gamma_k y / sqrt(pi_k)                     K d_m
variances (diag)    gamma_k (y_j^2 - 1) / sqrt(2 pi_k)         K d_m
variances (sph.)    gamma_k (|y|^2 - d_m) / sqrt(2 d_m pi_k)   K
=================== ========================================== =============================

in that order: weights, then per modality (in model order) its means and, for ``diag`` and
``spherical`` blocks, its variances (gradients with respect to the standard deviations, so
positive when a row lies farther from the mean than the component's spread). ``full`` and
``tied`` blocks contribute their mean gradients in whitened coordinates only: the K d(d+1)/2
covariance gradients are left out (they would dominate the vector's size). A row missing a
modality contributes zeros to that modality's blocks: its marginal density does not depend on
them. The posteriors use the fusion weights; the blocks are the gradients of each component's
own Gaussians. What depends on the covariance type is the type's ``whiten`` and
``variance_scores`` in :mod:`mmgmm_spark.core.covariance`.

The improved Fisher vector of a bag of N rows is the mean of the rows' vectors, then power
normalisation sign(z)|z|^alpha (alpha = 1/2) and L2 normalisation; for one row N = 1. With a
single ``diag`` modality this equals ``skimage.feature.fisher_vector(..., improved=True)`` on
the same mixture, except that scikit-image's variance block has the opposite sign (it uses
sigma^2 - (x - mu)^2).
"""

from __future__ import annotations

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.densities import normalise_log_prob, weighted_log_prob
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import MixtureParams

POWER = 0.5
"""The power normalisation's exponent alpha (Perronnin et al. 2010)."""


def fisher_layout(params: MixtureParams, modalities: tuple[Modality, ...]
                  ) -> list[tuple[str, int]]:
    """The Fisher vector's blocks in order, as (name, length): ``weights``, then
    ``<modality>.means`` and (diag/spherical) ``<modality>.variances``."""
    k = params.n_components
    layout = [("weights", k)]
    for m in modalities:
        block = params.blocks[m.name]
        layout.append((f"{m.name}.means", k * block.dim))
        width = block.kind.variance_width(block.dim)
        if width:
            layout.append((f"{m.name}.variances", k * width))
    return layout


def row_scores(batch: Batch, params: MixtureParams, modalities: tuple[Modality, ...]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(responsibilities (n, K), Fisher scores (n, D)) of every row of ``batch``.

    Responsibilities are the posteriors with missing modalities marginalised (they sum to 1
    per row); the scores are the per-row terms of the table in the module docstring, laid
    out as :func:`fisher_layout` says, before averaging and normalisation.
    """
    _, log_resp = normalise_log_prob(weighted_log_prob(batch, params, modalities))
    resp = np.exp(log_resp)
    root_weights = np.sqrt(params.weights)
    parts = [(resp - params.weights) / root_weights]
    for m in modalities:
        parts.extend(_modality_scores(batch, params, m.name, resp / root_weights))
    return np.ascontiguousarray(resp), np.hstack(parts)


def _modality_scores(batch: Batch, params: MixtureParams, name: str,
                     scaled_resp: np.ndarray) -> list[np.ndarray]:
    """[means (n, K d), variances (n, K s)] of one modality; zero rows where it is missing.

    ``scaled_resp``: (n, K) gamma_k / sqrt(pi_k).
    """
    block, gaussian = batch.blocks[name], params.blocks[name]
    whitened = gaussian.kind.whiten(block.values, gaussian.means,
                                    gaussian.precisions_cholesky)       # (n_obs, K, d)
    weights = scaled_resp[block.observed][:, :, None]
    out = []
    for values in (whitened, gaussian.kind.variance_scores(whitened)):
        if values.shape[2] == 0:
            continue
        dense = np.zeros((batch.n_rows, values.shape[1] * values.shape[2]))
        dense[block.observed] = (weights * values).reshape(len(values), -1)
        out.append(dense)
    return out


def sum_by_key(keys: np.ndarray, values: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys (u,), per-key sums (u, D) of ``values`` (n, D), row counts (u,)).

    Sums accumulate in float64 in row order within each key (``np.add.reduceat`` over the
    rows sorted stably by key).
    """
    distinct, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(np.asarray(values, dtype=np.float64)[order], starts, axis=0)
    return distinct, sums, counts.astype(np.int64)


def improved_fisher_vectors(sums: np.ndarray, counts: np.ndarray,
                            alpha: float = POWER) -> np.ndarray:
    """(u, D) improved Fisher vectors from per-bag score sums (u, D) and row counts (u,):
    the mean score, power-normalised (sign(z) |z|^alpha) then L2-normalised (a zero vector
    stays zero)."""
    mean = sums / counts[:, None]
    powered = np.sign(mean) * np.abs(mean) ** alpha
    norms = np.linalg.norm(powered, axis=1, keepdims=True)
    return powered / np.where(norms > 0.0, norms, 1.0)
