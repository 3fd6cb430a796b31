"""Each registered covariance type against independent references: scipy's Gaussian
log-density, numpy's Cholesky and inverse, and scikit-learn's parameter count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from mmgmm_spark.core.covariance import COVARIANCE_TYPES, covariance_type
from mmgmm_spark.core.densities import Centred, log_gaussian_density
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import GaussianBlock

K, D = 3, 4
RNG = np.random.default_rng(7)


def random_covariances(kind: str) -> np.ndarray:
    """Positive definite covariances of ``kind``'s shape, built without the registry."""
    a = RNG.normal(size=(K, D, D))
    full = a @ np.swapaxes(a, 1, 2) + D * np.eye(D)
    return {"full": full, "tied": full[0], "diag": RNG.uniform(0.5, 2.0, (K, D)),
            "spherical": RNG.uniform(0.5, 2.0, K)}[kind]


def dense_reference(kind: str, cov: np.ndarray) -> np.ndarray:
    """(K, D, D) matrices of a covariance (or precision) in ``kind``'s shape."""
    if kind == "full":
        return cov
    if kind == "tied":
        return np.stack([cov] * K)
    if kind == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(D) for c in cov])


@pytest.mark.parametrize("kind", list(COVARIANCE_TYPES))
def test_log_density_equals_scipy(kind):
    cov = random_covariances(kind)
    means = RNG.normal(size=(K, D))
    block = GaussianBlock.from_covariances(kind, means, cov, "m")
    x = RNG.normal(size=(50, D)) * 2
    centre = means.mean(axis=0)
    ours = log_gaussian_density(Centred(centre, x - centre), block)
    dense = dense_reference(kind, cov)
    expected = np.stack([multivariate_normal(means[k], dense[k]).logpdf(x) for k in range(K)],
                        axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-10)
    np.testing.assert_allclose(block.full_covariances(K), dense, rtol=1e-12)


@pytest.mark.parametrize("kind", list(COVARIANCE_TYPES))
def test_precisions_and_their_cholesky(kind):
    cov = random_covariances(kind)
    chol = covariance_type(kind).precisions_cholesky(cov, "m", None)
    dense = dense_reference(kind, cov)
    precisions = np.linalg.inv(dense)
    block = GaussianBlock(kind, np.zeros((K, D)), cov, chol)
    np.testing.assert_allclose(dense_reference(kind, block.precisions()), precisions,
                               rtol=1e-10)
    np.testing.assert_allclose(dense_reference(kind, chol @ np.swapaxes(chol, -1, -2)
                                               if kind in ("full", "tied") else chol ** 2),
                               precisions, rtol=1e-10)
    log_det = 0.5 * np.linalg.slogdet(precisions)[1]
    np.testing.assert_allclose(np.broadcast_to(block.log_det_precision_cholesky(), (K,)),
                               log_det, rtol=1e-10)
    round_trip = covariance_type(kind).from_precisions(block.precisions(), "m")[0]
    np.testing.assert_allclose(round_trip, cov, rtol=1e-10)


@pytest.mark.parametrize("kind", list(COVARIANCE_TYPES))
def test_parameter_count_equals_scikit_learn(kind):
    x = RNG.normal(size=(200, D))
    reference = GaussianMixture(K, covariance_type=kind, max_iter=1, random_state=0).fit(x)
    block = GaussianBlock(kind, reference.means_, reference.covariances_,
                          reference.precisions_cholesky_)
    # sklearn counts the K - 1 free weights too
    assert block.n_parameters() + K - 1 == reference._n_parameters()


def test_unknown_covariance_type_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"one of \('full', 'tied', 'diag', 'spherical'\)"):
        covariance_type("banded")
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        Modality("m", 2, "banded")


def test_relative_variances_are_generalised_eigenvalues_against_the_mixture_covariance():
    """Against scipy's generalised symmetric eigensolver on the hand-computed total
    covariance sum_k pi_k (S_k + (m_k - m)(m_k - m)^T); two blocks: the minimum over them."""
    from scipy.linalg import eigh

    from mmgmm_spark.core.params import MixtureParams, relative_variances

    rng = np.random.RandomState(0)
    weights = np.array([0.7, 0.3])
    a = rng.randn(2, 3, 3)
    full = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(3)
    means_full, means_diag = rng.randn(2, 3), rng.randn(2, 2)
    diag = np.array([[1.0, 0.01], [2.0, 3.0]])
    blocks = {"f": GaussianBlock.from_covariances("full", means_full, full),
              "d": GaussianBlock.from_covariances("diag", means_diag, diag)}
    expected = np.full(2, np.inf)
    for means, covariances in ((means_full, full), (means_diag, np.stack(
            [np.diag(v) for v in diag]))):
        centred = means - weights @ means
        total = sum(w * (c + np.outer(m, m)) for w, c, m in zip(weights, covariances, centred,
                                                                        strict=True))
        expected = np.minimum(expected, [eigh(c, total, eigvals_only=True)[0]
                                         for c in covariances])
    got = relative_variances(MixtureParams(weights, blocks))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    one = relative_variances(MixtureParams(np.ones(1), {"f": GaussianBlock.from_covariances(
        "full", means_full[:1], full[:1])}))
    np.testing.assert_allclose(one, [1.0], rtol=1e-12)
