"""Issue #2, items 2, 5 and 6 for several modalities of mixed covariance types, fusion weights
and sampling, against dense references (scipy densities, plain numpy EM, closed forms)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from test_core_reference import (
    assert_rel,
    draw,
    drop_blocks,
    precisions,
    random_params,
    reference_em_step,
    reference_fused_log_prob,
    reference_log_prob,
    reference_proba,
    reference_score_samples,
)
from threadpoolctl import threadpool_limits

from mmgmm_spark import Modality, MultimodalGaussianMixture

MIXED = (Modality("img", 4, "full"), Modality("txt", 3, "diag"), Modality("aud", 2, "spherical"),
         Modality("geo", 3, "tied"))
K = 3


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


def _truth(seed: int = 0, modalities: tuple[Modality, ...] = MIXED, k: int = K,
           n: int = 600) -> tuple[dict, np.ndarray, tuple]:
    rng = np.random.default_rng(seed)
    params = random_params(rng, modalities, k, separation=2.5)
    data, labels = draw(rng, n, modalities, *params)
    return data, labels, params


def _model(modalities: tuple[Modality, ...], params: tuple, max_iter: int,
           reg_covar: float = 1e-6, k: int = K) -> MultimodalGaussianMixture:
    """A model started exactly at ``params`` (weights, means, type-shaped covariances)."""
    weights, means, covs = params
    return MultimodalGaussianMixture(
        list(modalities), k, tol=0, max_iter=max_iter, reg_covar=reg_covar,
        weights_init=weights, means_init=means,
        precisions_init={m.name: precisions(m.covariance_type, covs[m.name])
                         for m in modalities}, random_state=0)


def _fitted(model: MultimodalGaussianMixture) -> tuple:
    return model.weights_, model.means_, model.covariances_


def _fit(model: MultimodalGaussianMixture, data: dict) -> MultimodalGaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(data, on_iteration=None)


@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_mixed_types_score_and_proba_equal_dense_block_diagonal_reference(missing: float) -> None:
    """score_samples / predict_proba equal scipy densities of the block-diagonal covariance."""
    data, _, params = _truth(1)
    data = drop_blocks(np.random.default_rng(1), data, missing)
    model = _fit(_model(MIXED, params, 5), data)
    log_prob = reference_log_prob(data, MIXED, *_fitted(model))
    assert_rel(model.score_samples(data), reference_score_samples(log_prob), 1e-8)
    np.testing.assert_allclose(model.predict_proba(data), reference_proba(log_prob), atol=1e-8)
    np.testing.assert_array_equal(model.predict(data), log_prob.argmax(axis=1))


@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_one_em_step_of_mixed_model_equals_numpy_reference(missing: float) -> None:
    """One EM step (E: responsibilities, M: weighted moments per block, tied pooled) is exact."""
    data, _, params = _truth(2)
    data = drop_blocks(np.random.default_rng(2), data, missing)
    start = random_params(np.random.default_rng(20), MIXED, K, separation=2.5)
    model = _fit(_model(MIXED, start, 1, reg_covar=1e-4), data)
    ll, weights, means, covs = reference_em_step(data, MIXED, *start, reg_covar=1e-4)
    assert_rel(model.lower_bound_, ll, 1e-10)
    assert_rel(model.weights_, weights, 1e-10)
    for m in MIXED:
        assert_rel(model.means_[m.name], means[m.name], 1e-10)
        assert_rel(model.covariances_[m.name], covs[m.name], 1e-10)


def test_three_em_steps_of_mixed_model_equal_numpy_reference() -> None:
    """Iterating the reference step three times reproduces the model's history and parameters."""
    data, _, _ = _truth(3)
    data = drop_blocks(np.random.default_rng(3), data, 0.3)
    params = random_params(np.random.default_rng(30), MIXED, K, separation=2.5)
    model = _fit(_model(MIXED, params, 3), data)
    history = []
    for _ in range(3):
        ll, *params = reference_em_step(data, MIXED, *params, reg_covar=1e-6)
        history.append(ll)
    assert_rel(model.lower_bounds_, history, 1e-9)
    for m in MIXED:
        assert_rel(model.covariances_[m.name], params[2][m.name], 1e-9)


@pytest.mark.parametrize("fusion", [0.25, 2.0])
def test_fusion_weight_multiplies_the_block_log_density(fusion: float) -> None:
    """With w_m != 1 every log-density of modality m is multiplied by w_m before log-sum-exp."""
    mods = (Modality("img", 4, "full", weight=fusion), Modality("txt", 3, "diag"))
    data, _, params = _truth(4, mods)
    data = drop_blocks(np.random.default_rng(4), data, 0.3)
    model = _fit(_model(mods, params, 3), data)
    log_prob = reference_fused_log_prob(data, mods, *_fitted(model))
    assert_rel(model.score_samples(data), reference_score_samples(log_prob), 1e-8)
    np.testing.assert_allclose(model.predict_proba(data), reference_proba(log_prob), atol=1e-8)
    unweighted = reference_log_prob(data, mods, *_fitted(model))
    assert not np.allclose(reference_score_samples(unweighted), model.score_samples(data))


def _sklearn_n_parameters(kind: str, k: int, d: int) -> int:
    gm = GaussianMixture(k, covariance_type=kind)
    gm.means_ = np.zeros((k, d))
    return int(gm._n_parameters())


def test_parameter_count_bic_aic_add_up_per_block() -> None:
    """Free parameters = sum over blocks of sklearn's count without weights, plus K - 1."""
    data, _, params = _truth(5)
    model = _fit(_model(MIXED, params, 2), data)
    expected = sum(_sklearn_n_parameters(m.covariance_type, K, m.dim) - (K - 1)
                   for m in MIXED) + K - 1
    assert model.n_parameters() == expected
    n = len(data["img"])
    log_likelihood = reference_score_samples(
        reference_log_prob(data, MIXED, *_fitted(model))).sum()
    assert_rel(model.bic(data), -2 * log_likelihood + expected * np.log(n), 1e-10)
    assert_rel(model.aic(data), -2 * log_likelihood + 2 * expected, 1e-10)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++"])
def test_raw_unstandardised_well_separated_data_is_clustered(init_params: str) -> None:
    """Blocks with offsets ~1e3 and very different scales: adjusted Rand index >= 0.99."""
    rng = np.random.default_rng(6)
    mods = (Modality("big", 3, "full"), Modality("small", 2, "diag"), Modality("one", 1, "tied"))
    k, n = 4, 2000
    labels = rng.integers(k, size=n)
    centres = {"big": 1e3 + rng.normal(scale=50.0, size=(k, 3)),
               "small": 3e3 + rng.normal(scale=0.05, size=(k, 2)),
               "one": -2e3 + rng.normal(scale=10.0, size=(k, 1))}
    scales = {"big": 2.0, "small": 2e-3, "one": 0.5}
    data = {m.name: centres[m.name][labels] + scales[m.name] * rng.normal(size=(n, m.dim))
            for m in mods}
    model = _fit(MultimodalGaussianMixture(list(mods), k, init_params=init_params, n_init=2,
                                           random_state=0), data)
    assert adjusted_rand_score(labels, model.predict(data)) >= 0.99


def test_sample_shapes_labels_and_statistics() -> None:
    """sample() draws per-modality blocks whose label frequencies and moments match the model."""
    mods = (Modality("img", 3, "full"), Modality("aud", 2, "spherical"))
    data, _, params = _truth(7, mods, n=400)
    model = _fit(_model(mods, params, 2), data)
    n = 40_000
    samples, labels = model.sample(n)
    assert set(samples) == {"img", "aud"}
    assert samples["img"].shape == (n, 3) and samples["aud"].shape == (n, 2)
    assert labels.shape == (n,) and set(np.unique(labels)) <= set(range(K))
    freq = np.bincount(labels, minlength=K) / n
    np.testing.assert_allclose(freq, model.weights_, atol=5 * np.sqrt(0.25 / n))
    for k in range(K):
        rows = labels == k
        img = samples["img"][rows]
        spread = np.sqrt(np.diag(model.covariances_["img"][k]) / rows.sum())
        np.testing.assert_array_less(np.abs(img.mean(axis=0) - model.means_["img"][k]), 5 * spread)
        np.testing.assert_allclose(np.cov(img, rowvar=False), model.covariances_["img"][k],
                                   atol=0.1 * np.abs(model.covariances_["img"][k]).max())
        aud_var = samples["aud"][rows].var(axis=0)
        np.testing.assert_allclose(aud_var, model.covariances_["aud"][k], rtol=0.1)
    with pytest.raises(ValueError, match="n_samples"):
        model.sample(0)
