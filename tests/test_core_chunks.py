"""Issue 17: the chunk loops (many chunks, parallel runs, reused moment-row buffers) give the
closed-form densities and statistics of a plain numpy/scipy reference over all rows at once."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from test_core_reference import (
    assert_rel,
    draw,
    drop_blocks,
    random_params,
    reference_fused_log_prob,
)

from mmgmm_spark import Modality
from mmgmm_spark.core import densities, threads
from mmgmm_spark.core.batch import batch_from_arrays
from mmgmm_spark.core.densities import log_prob_terms, shift
from mmgmm_spark.core.params import GaussianBlock, MixtureParams
from mmgmm_spark.core.stats import accumulate_stats

# Two full blocks: their moment rows share each thread's buffers (one slot per modality).
MODS = (Modality("a", 5, "full"), Modality("b", 4, "full"), Modality("c", 3, "diag"),
        Modality("d", 2, "spherical"), Modality("e", 3, "tied"))
K, N = 3, 1500


@pytest.fixture(params=[1, 2], ids=["one thread", "two threads"])
def many_chunks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """16-row chunks (94 of them), run in one thread or in runs over two threads."""
    monkeypatch.setattr(densities, "CHUNK_ELEMENTS", 16)
    monkeypatch.setattr(threads, "_blas_threads", lambda: request.param)
    return request.param


def _problem() -> tuple[dict[str, np.ndarray], MixtureParams, tuple]:
    rng = np.random.default_rng(7)
    weights, means, covs = random_params(rng, MODS, K)
    data, _ = draw(rng, N, MODS, weights, means, covs)
    data = drop_blocks(rng, data, 0.4)
    blocks = {m.name: GaussianBlock.from_covariances(m.covariance_type, means[m.name],
                                                     covs[m.name], m.name) for m in MODS}
    return data, MixtureParams(weights, blocks), (weights, means, covs)


def test_chunked_densities_equal_the_closed_form(many_chunks: int) -> None:
    data, params, (weights, means, covs) = _problem()
    batch = batch_from_arrays(data, MODS)
    assert densities.chunk_rows(K, MODS) < N / 50
    log_prob, per_modality = log_prob_terms(batch, params, MODS, per_modality=True)
    assert_rel(log_prob, reference_fused_log_prob(data, MODS, weights, means, covs), 1e-10)
    for m in MODS:
        observed = ~np.isnan(data[m.name]).all(axis=1)
        one = reference_fused_log_prob({m.name: data[m.name][observed]}, (m,), weights,
                                       means, covs)
        assert_rel(per_modality[m.name][observed], logsumexp(one, axis=1), 1e-10)
        assert np.isnan(per_modality[m.name][~observed]).all()


def test_chunked_statistics_equal_numpy_sums(many_chunks: int) -> None:
    """mass, first and second moments about each block's centre: sums over all rows."""
    data, params, (weights, means, covs) = _problem()
    stats = accumulate_stats(batch_from_arrays(data, MODS), params, MODS)
    log_prob = reference_fused_log_prob(data, MODS, weights, means, covs)
    resp = np.exp(log_prob - logsumexp(log_prob, axis=1, keepdims=True))
    assert_rel(stats.log_likelihood, logsumexp(log_prob, axis=1).sum(), 1e-12)
    assert_rel(stats.mass, resp.sum(axis=0), 1e-12)
    for m in MODS:
        observed = ~np.isnan(data[m.name]).all(axis=1)
        x = data[m.name][observed] - shift(params.blocks[m.name], weights)
        r = resp[observed]
        block = stats.blocks[m.name]
        assert_rel(block.first, r.T @ x, 1e-10)
        outer = np.einsum("nk,ni,nj->kij", r, x, x)
        expected = {"full": outer[:, *np.triu_indices(m.dim)], "tied": outer.sum(axis=0),
                    "diag": np.einsum("kii->ki", outer),
                    "spherical": np.einsum("kii->ki", outer)}[m.covariance_type]
        assert_rel(block.second, expected, 1e-10)
