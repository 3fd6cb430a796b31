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

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.covariance import CovarianceType, covariance_type
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import GaussianBlock, MixtureParams
from mmgmm_spark.core.threads import map_runs

LOG_2PI = np.log(2.0 * np.pi)


def shift(gaussian: GaussianBlock, weights: np.ndarray) -> np.ndarray:
    """(d,) the centre c of a modality: sum_k pi_k mu_k (a function of the parameters only)."""
    return weights @ gaussian.means


Allocate = Callable[[tuple[int, int], np.dtype], np.ndarray]
"""Where an array of moment rows is written: ``np.empty`` or a reused buffer
(:class:`MomentBuffers`)."""


@dataclass
class Centred:
    """The observed rows of one modality minus its centre c (see :func:`shift`)."""

    centre: np.ndarray          # (d,) float64
    values: np.ndarray          # (n_observed, d), in the compute dtype (float64 or float32)
    allocate: Allocate = np.empty

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
        out = self.allocate((pairs + d + 1, n), self.values.dtype)
        columns = out[pairs: pairs + d]
        columns[:] = self.values.T
        out[-1] = 1.0
        start = 0
        for i in range(d):
            np.multiply(columns[i], columns[i:], out=out[start: start + d - i])
            start += d - i
        return out


class MomentBuffers(threading.local):
    """Per thread, one reused array per modality slot for the moment rows of a chunk.

    A fresh multi-megabyte array per chunk is mapped anew by the allocator, and its page faults
    and cold TLB slowed the pair products and both GEMMs that read them by about 1.5x (measured
    at d=64, 256-row chunks). Only for chunk loops: an array from slot s is overwritten by the
    next chunk's moment rows of slot s in the same thread.
    """

    def __init__(self) -> None:
        self.flat: dict[tuple[int, str], np.ndarray] = {}

    def allocate(self, slot: int) -> Allocate:
        """An :data:`Allocate` that writes into slot ``slot``'s buffer."""
        def array(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
            key, cells = (slot, np.dtype(dtype).str), shape[0] * shape[1]
            if key not in self.flat or self.flat[key].size < cells:
                self.flat[key] = np.empty(cells, dtype)
            return self.flat[key][:cells].reshape(shape)
        return array


def log_gaussian_density(block: Centred, gaussian: GaussianBlock) -> np.ndarray:
    """(n_observed, K) log N(x_i | mu_k, Sigma_k) of the rows of a centred block."""
    return density_kernel(gaussian, block.centre, block.values.dtype.name).log_density(block)


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


@dataclass(frozen=True)
class DensityKernel:
    """One modality's log-densities for a fixed parameter set: what depends on the parameters
    only is computed once (:func:`density_kernel`) and applied to every chunk of rows."""

    kind: CovarianceType
    centre: np.ndarray                  # (d,) float64
    dtype: str                          # the compute dtype (:func:`kernel_dtype`)
    terms: tuple[np.ndarray, ...]       # the type's ``mahalanobis_terms``, in ``dtype``
    log_norm: np.ndarray                # (K,) log det C_k - d/2 log(2 pi)

    def centred(self, values: np.ndarray, allocate: Allocate = np.empty) -> Centred:
        """Rows (n, d) minus the centre, in the compute dtype."""
        return Centred(self.centre, (values - self.centre).astype(self.dtype, copy=False),
                       allocate)

    def log_density(self, block: Centred) -> np.ndarray:
        """(n, K) log N(x_i | mu_k, Sigma_k) of a block centred by :meth:`centred`."""
        return self.log_norm - 0.5 * self.kind.mahalanobis(block, self.terms)


def density_kernel(gaussian: GaussianBlock, centre: np.ndarray,
                   compute_dtype: str = "float64") -> DensityKernel:
    """The :class:`DensityKernel` of one modality's components, for rows centred on ``centre``."""
    dtype = kernel_dtype(gaussian, centre, compute_dtype)
    terms = gaussian.kind.mahalanobis_terms(gaussian, gaussian.means - centre)
    return DensityKernel(gaussian.kind, centre, dtype,
                         tuple(t.astype(dtype, copy=False) for t in terms),
                         gaussian.log_det_precision_cholesky() - 0.5 * gaussian.dim * LOG_2PI)


def density_kernels(params: MixtureParams, modalities: tuple[Modality, ...],
                    compute_dtype: str = "float64") -> dict[str, DensityKernel]:
    """Per modality, its :class:`DensityKernel` for rows centred on :func:`shift`."""
    return {m.name: density_kernel(params.blocks[m.name],
                                   shift(params.blocks[m.name], params.weights), compute_dtype)
            for m in modalities}


def centred_blocks(batch: Batch, kernels: dict[str, DensityKernel],
                   buffers: MomentBuffers | None = None) -> dict[str, Centred]:
    """Per modality, its observed rows centred by its kernel; their moment rows go to
    ``buffers`` (one slot per modality) when given."""
    return {name: kernel.centred(batch.blocks[name].values,
                                 np.empty if buffers is None else buffers.allocate(slot))
            for slot, (name, kernel) in enumerate(kernels.items())}


CHUNK_ELEMENTS = 1 << 19
"""Rows are processed in chunks whose widest intermediate has about this many cells (4 MB of
float64: at d=64, K=16 full, 252-row chunks ran 1.1x faster than 504 and 1.6x than 31)."""

MOMENT_BUFFERS = MomentBuffers()
"""The chunk loops' reused moment-row arrays, per thread (see :class:`MomentBuffers`)."""


def chunk_rows(n_components: int, modalities: tuple[Modality, ...]) -> int:
    """Rows per chunk, so that the widest per-row intermediate has about CHUNK_ELEMENTS cells.

    Per row the kernels hold K log-probabilities, the sum of d_m features and each block's
    own intermediates (:meth:`CovarianceType.row_cells`: d_m(d_m+1)/2 pair products if full).
    """
    width = max(n_components, sum(m.dim for m in modalities),
                *(covariance_type(m.covariance_type).row_cells(m.dim) for m in modalities))
    return max(16, CHUNK_ELEMENTS // width)


def chunk_log_prob(batch: Batch, params: MixtureParams, modalities: tuple[Modality, ...],
                   kernels: dict[str, DensityKernel], centred: dict[str, Centred],
                   per_modality: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One chunk's (n, K) weighted log-probabilities (see :func:`log_prob_terms`), and, if
    ``per_modality``, each modality's (n,) marginal log-likelihood (NaN where missing)."""
    # Column-major: the per-row reductions over K (log-sum-exp) then run over long contiguous
    # columns, several times faster than over K-long rows.
    out = np.empty((batch.n_rows, params.n_components), order="F")
    log_weights = np.log(params.weights)
    out[:] = log_weights
    marginals = {}
    for m in modalities:
        block = batch.blocks[m.name]
        contribution = kernels[m.name].log_density(centred[m.name])
        if per_modality:
            marginals[m.name] = np.full(batch.n_rows, np.nan)
            marginals[m.name][block.observed] = logsumexp_rows(contribution + log_weights)
        if m.weight != 1.0:
            contribution *= m.weight
        if block.all_observed:
            out += contribution
        else:
            out[block.observed] += contribution
    return out, marginals


def log_prob_terms(batch: Batch, params: MixtureParams, modalities: tuple[Modality, ...],
                   per_modality: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(n, K) log pi_k + sum over observed modalities m of w_m log N(x^(m) | component k), and,
    if ``per_modality``, per modality its (n,) marginal log-likelihood
    log sum_k pi_k N(x^(m) | k) (NaN where missing; unweighted by the fusion weight: the
    building block of per-modality anomaly attribution). One pass over the rows, in chunks.

    A modality missing from a row is marginalised out: it simply adds nothing.
    """
    kernels = density_kernels(params, modalities)
    batches = list(batch.chunks(chunk_rows(params.n_components, modalities)))

    def run_log_prob(run: np.ndarray) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        return [chunk_log_prob(batches[i], params, modalities, kernels,
                               centred_blocks(batches[i], kernels, MOMENT_BUFFERS), per_modality)
                for i in run]

    chunks = [chunk for run in map_runs(run_log_prob, len(batches)) for chunk in run]
    if len(chunks) == 1:
        return chunks[0]
    return (np.asfortranarray(np.concatenate([c[0] for c in chunks])),
            {m.name: np.concatenate([c[1][m.name] for c in chunks]) for m in modalities}
            if per_modality else {})


def weighted_log_prob(batch: Batch, params: MixtureParams,
                      modalities: tuple[Modality, ...]) -> np.ndarray:
    """(n, K) log pi_k + sum over observed modalities m of w_m log N(x^(m) | component k)."""
    return log_prob_terms(batch, params, modalities)[0]


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
    return log_prob_terms(batch, params, modalities, per_modality=True)[1]
