"""Plain reference implementations used by the other ``test_core_*`` modules, and their own checks.

Nothing here imports the code under test's maths: densities come from
``scipy.stats.multivariate_normal`` on dense (block-diagonal) covariances, the EM step is written
out with plain numpy, and the tests at the bottom check these references against scikit-learn
so that a bug in a reference cannot hide a bug in the core.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from scipy import linalg
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from mmgmm_spark import Modality

EPS10 = 10 * np.finfo(np.float64).eps


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    """Small matrices on a shared 2-core machine: one BLAS thread avoids oversubscription."""
    with threadpool_limits(1):
        yield


# --------------------------------------------------------------------------- comparisons
def assert_rel(actual: np.ndarray | float, expected: np.ndarray | float, rtol: float) -> None:
    """Every entry within ``rtol`` relative to itself, or to the array's largest magnitude."""
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray(actual, dtype=float)
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------- parameter forms
def dense_covariances(kind: str, cov: np.ndarray, k: int, d: int) -> np.ndarray:
    """(K, d, d) covariance of every component from scikit-learn's per-type shape."""
    cov = np.asarray(cov, dtype=float)
    if kind == "full":
        return cov.copy()
    if kind == "tied":
        return np.repeat(cov[None], k, axis=0)
    if kind == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


def typed_covariances(kind: str, dense: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dense_covariances` (the tied form takes component 0)."""
    if kind == "full":
        return dense.copy()
    if kind == "tied":
        return dense[0].copy()
    diag = np.diagonal(dense, axis1=1, axis2=2).copy()
    return diag if kind == "diag" else diag.mean(axis=1)


def precisions(kind: str, cov: np.ndarray) -> np.ndarray:
    """Precisions (inverse covariances) in the type's shape, as ``precisions_init`` wants."""
    if kind in ("diag", "spherical"):
        return 1.0 / np.asarray(cov)
    if kind == "tied":
        return linalg.inv(cov)
    return np.stack([linalg.inv(c) for c in cov])


def block_diagonal(modalities: tuple[Modality, ...], means: Mapping[str, np.ndarray],
                   covariances: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated means (K, D) and block-diagonal dense covariances (K, D, D)."""
    k = next(iter(means.values())).shape[0]
    mean = np.hstack([np.asarray(means[m.name]) for m in modalities])
    dense = [dense_covariances(m.covariance_type, covariances[m.name], k, m.dim)
             for m in modalities]
    cov = np.stack([linalg.block_diag(*[c[j] for c in dense]) for j in range(k)])
    return mean, cov


# ------------------------------------------------------------------------ log-densities
def _observed_columns(data: Mapping[str, np.ndarray],
                      modalities: tuple[Modality, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated (n, D) values and (n, D) bool, True where the feature's block is observed."""
    x = np.hstack([np.asarray(data[m.name], dtype=float) for m in modalities])
    observed = np.hstack([
        np.repeat((~np.isnan(np.asarray(data[m.name], dtype=float)).all(axis=1))[:, None],
                  m.dim, axis=1) for m in modalities])
    return x, observed


def reference_log_prob(data: Mapping[str, np.ndarray], modalities: tuple[Modality, ...],
                       weights: np.ndarray, means: Mapping[str, np.ndarray],
                       covariances: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n, K) log pi_k + log N(x_obs | mu_k[obs], Sigma_k[obs, obs]) with dense Sigma_k.

    Sigma_k is the block-diagonal covariance assembled from the per-modality parameters; a
    row missing some blocks uses the closed-form Gaussian marginal over its observed features.
    Fusion weights are ignored (they are 1 wherever this is used).
    """
    mean, cov = block_diagonal(modalities, means, covariances)
    x, observed = _observed_columns(data, modalities)
    out = np.empty((x.shape[0], len(weights)))
    patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        rows = np.flatnonzero(inverse.ravel() == p)
        idx = np.flatnonzero(pattern)
        for j in range(len(weights)):
            dist = multivariate_normal(mean[j, idx], cov[j][np.ix_(idx, idx)])
            out[rows, j] = np.log(weights[j]) + np.atleast_1d(dist.logpdf(x[np.ix_(rows, idx)]))
    return out


def reference_fused_log_prob(data: Mapping[str, np.ndarray], modalities: tuple[Modality, ...],
                             weights: np.ndarray, means: Mapping[str, np.ndarray],
                             covariances: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n, K) log pi_k + sum over observed blocks m of w_m log N(x^(m) | mu_k^(m), Sigma_k^(m))."""
    n = next(iter(data.values())).shape[0]
    k = len(weights)
    out = np.tile(np.log(weights), (n, 1))
    for m in modalities:
        x = np.asarray(data[m.name], dtype=float)
        rows = ~np.isnan(x).all(axis=1)
        dense = dense_covariances(m.covariance_type, covariances[m.name], k, m.dim)
        for j in range(k):
            logpdf = multivariate_normal(means[m.name][j], dense[j]).logpdf(x[rows])
            out[rows, j] += m.weight * np.atleast_1d(logpdf)
    return out


def reference_score_samples(log_prob: np.ndarray) -> np.ndarray:
    return logsumexp(log_prob, axis=1)


def reference_proba(log_prob: np.ndarray) -> np.ndarray:
    return np.exp(log_prob - logsumexp(log_prob, axis=1, keepdims=True))


# ------------------------------------------------------------------------------ EM step
def reference_em_step(data: Mapping[str, np.ndarray], modalities: tuple[Modality, ...],
                      weights: np.ndarray, means: Mapping[str, np.ndarray],
                      covariances: Mapping[str, np.ndarray], reg_covar: float
                      ) -> tuple[float, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One textbook EM step: (mean log-likelihood before it, weights, means, covariances).

    Responsibilities r_ik over all rows; per block, only the rows observing it contribute:
    mu_k = sum r_ik x_i / n_k, Sigma_k = sum r_ik (x_i - mu_k)(x_i - mu_k)^T / n_k + reg I,
    tied = the same sums pooled over components / sum_k n_k, diag = the diagonal,
    spherical = the mean of the diagonal. Every n_k gets 10 eps like scikit-learn.
    """
    log_prob = reference_log_prob(data, modalities, weights, means, covariances)
    resp = reference_proba(log_prob)
    mass = resp.sum(axis=0) + EPS10
    new_means: dict[str, np.ndarray] = {}
    new_cov: dict[str, np.ndarray] = {}
    for m in modalities:
        x = np.asarray(data[m.name], dtype=float)
        rows = ~np.isnan(x).all(axis=1)
        x, r = x[rows], resp[rows]
        nk = r.sum(axis=0) + EPS10
        mu = (r.T @ x) / nk[:, None]
        scatter = np.stack([(r[:, j, None] * (x - mu[j])).T @ (x - mu[j])
                            for j in range(len(weights))])
        if m.covariance_type == "tied":
            cov = scatter.sum(axis=0) / nk.sum() + reg_covar * np.eye(m.dim)
        else:
            dense = scatter / nk[:, None, None] + reg_covar * np.eye(m.dim)[None]
            cov = typed_covariances(m.covariance_type, dense)
        new_means[m.name], new_cov[m.name] = mu, cov
    return float(reference_score_samples(log_prob).mean()), mass / mass.sum(), new_means, new_cov


# ---------------------------------------------------------------------------- test data
def random_covariance(rng: np.random.Generator, d: int, scale: float = 1.0) -> np.ndarray:
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return scale * (a @ a.T + 0.5 * np.eye(d))


def random_params(rng: np.random.Generator, modalities: tuple[Modality, ...], k: int,
                  separation: float = 3.0, offset: float = 0.0
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weights, means and covariances (type-shaped) of a random mixture."""
    weights = rng.dirichlet(np.full(k, 5.0))
    means, covs = {}, {}
    for m in modalities:
        means[m.name] = offset + rng.normal(scale=separation, size=(k, m.dim))
        dense = np.stack([random_covariance(rng, m.dim) for _ in range(k)])
        if m.covariance_type == "tied":
            dense[:] = dense[0]
        covs[m.name] = typed_covariances(m.covariance_type, dense)
    return weights, means, covs


def draw(rng: np.random.Generator, n: int, modalities: tuple[Modality, ...], weights: np.ndarray,
         means: Mapping[str, np.ndarray], covariances: Mapping[str, np.ndarray]
         ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """n rows from the mixture (every block observed) and their component labels."""
    k = len(weights)
    labels = rng.choice(k, size=n, p=weights)
    data = {}
    for m in modalities:
        dense = dense_covariances(m.covariance_type, covariances[m.name], k, m.dim)
        chol = np.linalg.cholesky(dense)
        noise = rng.standard_normal((n, m.dim))
        data[m.name] = means[m.name][labels] + np.einsum("nij,nj->ni", chol[labels], noise)
    return data, labels


def drop_blocks(rng: np.random.Generator, data: Mapping[str, np.ndarray], fraction: float
                ) -> dict[str, np.ndarray]:
    """A copy where ``fraction`` of the rows miss exactly one (random) modality, as NaN rows."""
    names = list(data)
    n = next(iter(data.values())).shape[0]
    missing = rng.random(n) < fraction
    which = rng.integers(len(names), size=n)
    out = {}
    for i, name in enumerate(names):
        x = np.array(data[name], dtype=float)
        x[missing & (which == i)] = np.nan
        out[name] = x
    return out


# ------------------------------------------------------------- checks of the references
@pytest.mark.parametrize("kind", ["full", "tied", "diag", "spherical"])
def test_reference_density_and_em_step_match_sklearn(kind: str) -> None:
    """The dense reference log-density and EM step agree with scikit-learn on one modality."""
    rng = np.random.default_rng(1)
    mods = (Modality("x", 3, kind),)
    weights, means, covs = random_params(rng, mods, 3)
    data, _ = draw(rng, 300, mods, weights, means, covs)
    sk = GaussianMixture(3, covariance_type=kind, tol=0, max_iter=1, reg_covar=1e-6,
                         weights_init=weights, means_init=means["x"],
                         precisions_init=precisions(kind, covs["x"]))
    with pytest.warns(Warning):
        sk.fit(data["x"])
    ll, w, mu, cov = reference_em_step(data, mods, weights, means, covs, 1e-6)
    assert_rel(ll, sk.lower_bound_, 1e-10)
    assert_rel(w, sk.weights_, 1e-10)
    assert_rel(mu["x"], sk.means_, 1e-10)
    assert_rel(cov["x"], sk.covariances_, 1e-10)
    log_prob = reference_log_prob(data, mods, sk.weights_, {"x": sk.means_},
                                  {"x": sk.covariances_})
    assert_rel(reference_score_samples(log_prob), sk.score_samples(data["x"]), 1e-10)
    assert_rel(reference_proba(log_prob), sk.predict_proba(data["x"]), 1e-8)


def test_reference_marginal_is_the_product_of_observed_blocks() -> None:
    """With block-diagonal covariances the dense marginal is the product over observed blocks."""
    rng = np.random.default_rng(2)
    mods = (Modality("a", 2, "full"), Modality("b", 3, "diag"))
    weights, means, covs = random_params(rng, mods, 2)
    data, _ = draw(rng, 50, mods, weights, means, covs)
    data = drop_blocks(rng, data, 0.5)
    dense = reference_log_prob(data, mods, weights, means, covs)
    per_block = reference_fused_log_prob(data, mods, weights, means, covs)
    np.testing.assert_allclose(dense, per_block, rtol=1e-10)
