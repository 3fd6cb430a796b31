"""Issue #2, items 1, 2 (all-diag) and 6: the core equals scikit-learn's GaussianMixture.

Both estimators start from the same weights, means and precisions and run EM with ``tol=0``
for a fixed number of iterations, so every iterate must agree up to rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture
from test_core_reference import assert_rel, draw, random_params
from threadpoolctl import threadpool_limits

from mmgmm_spark import Modality, MultimodalGaussianMixture

COV_TYPES = ["full", "tied", "diag", "spherical"]
K = 4


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


@cache
def _synthetic() -> np.ndarray:
    rng = np.random.default_rng(0)
    mods = (Modality("x", 5, "full"),)
    weights, means, covs = random_params(rng, mods, K, separation=2.0)
    return draw(rng, 1500, mods, weights, means, covs)[0]["x"]


@cache
def _adbench(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)["X"].astype(np.float64)


def _dataset(name: str, request: pytest.FixtureRequest) -> np.ndarray:
    if name == "synthetic":
        return _synthetic()
    root: Path = request.getfixturevalue("adbench_dir")
    return _adbench(root / "classical" / {"cardio": "6_cardio.npz",
                                          "thyroid": "38_thyroid.npz"}[name])


_STARTS: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def start(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Common initial weights, means, precisions: a 2-iteration scikit-learn fit (cached)."""
    key = (hash(x.tobytes()), kind)
    if key not in _STARTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(K, covariance_type=kind, max_iter=2, random_state=0).fit(x)
        _STARTS[key] = gm.weights_, gm.means_, gm.precisions_
    return _STARTS[key]


def fit_both(x: np.ndarray, kind: str, n_iter: int, k: int = K
             ) -> tuple[GaussianMixture, MultimodalGaussianMixture]:
    weights, means, prec = start(x, kind)
    sk = GaussianMixture(k, covariance_type=kind, tol=0, max_iter=n_iter, reg_covar=1e-6,
                         weights_init=weights, means_init=means, precisions_init=prec)
    ours = MultimodalGaussianMixture(
        [Modality("x", x.shape[1], kind)], k, tol=0, max_iter=n_iter, reg_covar=1e-6,
        weights_init=weights, means_init={"x": means}, precisions_init={"x": prec},
        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(x)
        ours.fit({"x": x}, on_iteration=None)
    return sk, ours


@pytest.mark.parametrize("n_iter", [1, 10, 50])
@pytest.mark.parametrize("kind", COV_TYPES)
@pytest.mark.parametrize("dataset", ["synthetic", "cardio", "thyroid"])
def test_em_iterates_equal_sklearn(dataset: str, kind: str, n_iter: int,
                                   request: pytest.FixtureRequest) -> None:
    """After 1, 10 and 50 iterations from the same start, parameters and bounds equal sklearn's."""
    x = _dataset(dataset, request)
    sk, ours = fit_both(x, kind, n_iter)
    assert ours.n_iter_ == sk.n_iter_ == n_iter
    assert_rel(ours.weights_, sk.weights_, 1e-6)
    assert_rel(ours.means_["x"], sk.means_, 1e-6)
    assert_rel(ours.covariances_["x"], sk.covariances_, 1e-6)
    assert_rel(ours.precisions_cholesky_["x"], sk.precisions_cholesky_, 1e-6)
    assert_rel(ours.lower_bound_, sk.lower_bound_, 1e-6)
    assert_rel(ours.lower_bounds_, sk.lower_bounds_, 1e-6)


@pytest.mark.parametrize("kind", COV_TYPES)
def test_inference_equals_sklearn(kind: str) -> None:
    """score_samples, predict_proba and predict equal sklearn's for the same fitted model."""
    x = _synthetic()
    sk, ours = fit_both(x, kind, 10)
    data = {"x": x}
    assert_rel(ours.score_samples(data), sk.score_samples(x), 1e-8)
    assert_rel(ours.score(data), sk.score(x), 1e-8)
    np.testing.assert_allclose(ours.predict_proba(data), sk.predict_proba(x), atol=1e-8)
    np.testing.assert_array_equal(ours.predict(data), sk.predict(x))


@pytest.mark.parametrize("kind", COV_TYPES)
def test_bic_aic_and_parameter_count_equal_sklearn(kind: str) -> None:
    """For one modality, the free-parameter count, BIC and AIC are scikit-learn's."""
    x = _synthetic()
    sk, ours = fit_both(x, kind, 5)
    assert ours.n_parameters() == sk._n_parameters()
    assert_rel(ours.bic({"x": x}), sk.bic(x), 1e-8)
    assert_rel(ours.aic({"x": x}), sk.aic(x), 1e-8)


@pytest.mark.parametrize("n_iter", [1, 20])
def test_all_diag_modalities_equal_sklearn_diag_on_concatenation(n_iter: int) -> None:
    """Several diag modalities form one diag Gaussian over the concatenated features."""
    rng = np.random.default_rng(3)
    dims = {"a": 3, "b": 4, "c": 1}
    mods = [Modality(name, d, "diag") for name, d in dims.items()]
    x = _synthetic()[:, :3]
    x = np.hstack([x, rng.normal(size=(x.shape[0], 4)) + x[:, :1], x[:, 1:2] ** 2])
    weights, means, prec = start(x, "diag")
    sk = GaussianMixture(K, covariance_type="diag", tol=0, max_iter=n_iter, reg_covar=1e-6,
                         weights_init=weights, means_init=means, precisions_init=prec)
    cuts = np.cumsum([0, *dims.values()])
    split = {name: slice(cuts[i], cuts[i + 1]) for i, name in enumerate(dims)}
    ours = MultimodalGaussianMixture(
        mods, K, tol=0, max_iter=n_iter, reg_covar=1e-6, weights_init=weights,
        means_init={n: means[:, s] for n, s in split.items()},
        precisions_init={n: prec[:, s] for n, s in split.items()})
    data = {n: x[:, s] for n, s in split.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(x)
        ours.fit(data, on_iteration=None)
    assert_rel(ours.weights_, sk.weights_, 1e-6)
    assert_rel(np.hstack([ours.means_[n] for n in dims]), sk.means_, 1e-6)
    assert_rel(np.hstack([ours.covariances_[n] for n in dims]), sk.covariances_, 1e-6)
    assert_rel(ours.lower_bounds_, sk.lower_bounds_, 1e-6)
    assert_rel(ours.score_samples(data), sk.score_samples(x), 1e-8)
