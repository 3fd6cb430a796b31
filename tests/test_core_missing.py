"""Issue #2, items 3 and 4: missing modalities, monotone EM and mergeable statistics."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from test_core_reference import (
    assert_rel,
    dense_covariances,
    draw,
    drop_blocks,
    precisions,
    random_params,
    reference_log_prob,
    reference_score_samples,
)
from threadpoolctl import threadpool_limits

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.core.batch import batch_from_arrays
from mmgmm_spark.core.init import initial_params
from mmgmm_spark.core.stats import SufficientStats, accumulate_stats

MODS = (Modality("a", 3, "full"), Modality("b", 2, "diag"), Modality("c", 2, "spherical"))
K = 3


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


def _fit(model: MultimodalGaussianMixture, data: dict) -> MultimodalGaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(data, on_iteration=None)


def test_score_samples_is_the_marginal_over_observed_blocks() -> None:
    """A row missing blocks scores log sum_k pi_k prod_{m observed} N(x^(m) | k), in closed form."""
    rng = np.random.default_rng(0)
    weights, means, covs = random_params(rng, MODS, K)
    data, _ = draw(rng, 400, MODS, weights, means, covs)
    data = drop_blocks(rng, data, 0.6)
    data["a"][:5] = np.nan                      # rows observing only b and c ...
    data["b"][5:10] = data["c"][5:10] = np.nan  # ... and only a
    model = MultimodalGaussianMixture(
        list(MODS), K, max_iter=0, weights_init=weights, means_init=means,
        precisions_init={m.name: precisions(m.covariance_type, covs[m.name]) for m in MODS})
    _fit(model, data)
    log_joint = np.tile(np.log(weights), (400, 1))
    for m in MODS:
        rows = ~np.isnan(data[m.name]).all(axis=1)
        dense = dense_covariances(m.covariance_type, covs[m.name], K, m.dim)
        for k in range(K):
            log_joint[rows, k] += multivariate_normal(means[m.name][k], dense[k]).logpdf(
                data[m.name][rows])
    assert_rel(model.score_samples(data), logsumexp(log_joint, axis=1), 1e-10)
    only_a = {"a": data["a"][5:10], "b": data["b"][5:10], "c": data["c"][5:10]}
    alone = MultimodalGaussianMixture([MODS[0]], K, max_iter=0, weights_init=weights,
                                      means_init={"a": means["a"]},
                                      precisions_init={"a": precisions("full", covs["a"])})
    _fit(alone, {"a": data["a"][~np.isnan(data["a"]).all(axis=1)]})
    assert_rel(model.score_samples(only_a), alone.score_samples({"a": only_a["a"]}), 1e-12)


def test_modality_log_likelihoods_are_per_block_marginal_mixtures() -> None:
    """modality_log_likelihoods[m] = log sum_k pi_k N(x^(m) | k), NaN where m is missing."""
    rng = np.random.default_rng(1)
    weights, means, covs = random_params(rng, MODS, K)
    data = drop_blocks(rng, draw(rng, 300, MODS, weights, means, covs)[0], 0.4)
    model = _fit(MultimodalGaussianMixture(list(MODS), K, max_iter=3, random_state=0), data)
    per_block = model.modality_log_likelihoods(data)
    for m in MODS:
        rows = ~np.isnan(data[m.name]).all(axis=1)
        expected = reference_score_samples(reference_log_prob(
            {m.name: data[m.name][rows]}, (m,), model.weights_, model.means_,
            model.covariances_))
        assert np.isnan(per_block[m.name][~rows]).all()
        assert_rel(per_block[m.name][rows], expected, 1e-10)


def test_recovers_known_mixture_with_30_percent_rows_missing_a_modality() -> None:
    """EM on rows drawn from a known mixture, 30% missing one block, finds weights and means."""
    rng = np.random.default_rng(2)
    weights, means, covs = random_params(rng, MODS, K, separation=4.0)
    weights = np.array([0.5, 0.3, 0.2])
    data, _ = draw(rng, 6000, MODS, weights, means, covs)
    data = drop_blocks(rng, data, 0.3)
    observed = ~np.isnan(data["a"]).all(axis=1)
    assert 0.05 < 1 - observed.mean() < 0.15
    model = _fit(MultimodalGaussianMixture(list(MODS), K, n_init=3, tol=1e-6, random_state=0),
                 data)
    truth = np.hstack([means[m.name] for m in MODS])
    fitted = np.hstack([model.means_[m.name] for m in MODS])
    cost = ((truth[:, None] - fitted[None]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_allclose(model.weights_[cols], weights[rows], atol=0.03)
    np.testing.assert_allclose(fitted[cols], truth[rows], atol=0.15)
    for m in MODS:
        dense_true = dense_covariances(m.covariance_type, covs[m.name], K, m.dim)
        dense_fit = dense_covariances(m.covariance_type, model.covariances_[m.name], K, m.dim)
        np.testing.assert_allclose(dense_fit[cols], dense_true[rows], atol=0.25)


@pytest.mark.parametrize("missing", [0.0, 0.3])
@pytest.mark.parametrize("kind", ["full", "tied", "diag", "spherical"])
def test_lower_bound_never_decreases(kind: str, missing: float) -> None:
    """EM is monotone: with reg_covar=0 the mean log-likelihood history is non-decreasing."""
    mods = (Modality("a", 3, kind), Modality("b", 2, "full" if kind == "tied" else "tied"))
    rng = np.random.default_rng(3)
    params = random_params(rng, mods, 4, separation=1.0)
    data = drop_blocks(rng, draw(rng, 800, mods, *params)[0], missing)
    model = _fit(MultimodalGaussianMixture(list(mods), 4, tol=0, max_iter=60, reg_covar=0.0,
                                           init_params="random", random_state=1), data)
    bounds = np.array(model.lower_bounds_)
    assert len(bounds) == 60 and bounds[-1] > bounds[0] + 0.1
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:]))


def _stats_setup(missing: float) -> tuple:
    rng = np.random.default_rng(4)
    mods = MODS + (Modality("d", 2, "tied"),)
    params = random_params(rng, mods, K)
    data = drop_blocks(rng, draw(rng, 3000, mods, *params)[0], missing)
    data = {name: 1e3 + x for name, x in data.items()}
    batch = batch_from_arrays(data, mods)
    start = initial_params(batch, mods, K, "random", np.random.RandomState(0), 1e-6)
    return mods, batch, start


def _assert_stats_equal(a: SufficientStats, b: SufficientStats, rtol: float) -> None:
    assert a.n_rows == b.n_rows
    assert_rel(a.log_likelihood, b.log_likelihood, rtol)
    assert_rel(a.mass, b.mass, rtol)
    assert a.blocks.keys() == b.blocks.keys()
    for name in a.blocks:
        for field in ("mass", "first", "second"):
            assert_rel(getattr(a.blocks[name], field), getattr(b.blocks[name], field), rtol)


@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_merged_statistics_of_two_halves_equal_the_whole(missing: float) -> None:
    """Statistics are a monoid: merge(first half, second half) == whole, also through vectors."""
    mods, batch, start = _stats_setup(missing)
    rows = np.random.default_rng(5).permutation(batch.n_rows)
    first = accumulate_stats(batch.take(rows[:1234]), start, mods)
    second = accumulate_stats(batch.take(rows[1234:]), start, mods)
    whole = accumulate_stats(batch, start, mods)
    _assert_stats_equal(first.merge(second), whole, 1e-12)
    _assert_stats_equal(second.merge(first), whole, 1e-12)
    through_vectors = SufficientStats.from_vector(first.to_vector() + second.to_vector(), mods, K)
    _assert_stats_equal(through_vectors, whole, 1e-12)
    round_trip = SufficientStats.from_vector(whole.to_vector(), mods, K)
    _assert_stats_equal(round_trip, whole, 0.0)
    zero = SufficientStats.zero(mods, K)
    _assert_stats_equal(zero.merge(whole), whole, 0.0)
    assert_rel(whole.log_likelihood,
               reference_score_samples(reference_log_prob(
                   {name: b.dense() for name, b in batch.blocks.items()}, mods, start.weights,
                   {n: b.means for n, b in start.blocks.items()},
                   {n: b.covariances for n, b in start.blocks.items()})).sum(), 1e-10)
    merged_params = first.merge(second).to_params(start, 1e-6, mods)
    whole_params = whole.to_params(start, 1e-6, mods)
    for m in mods:
        assert_rel(merged_params.blocks[m.name].covariances,
                   whole_params.blocks[m.name].covariances, 1e-9)
