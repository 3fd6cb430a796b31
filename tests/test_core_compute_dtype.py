"""Opt-in float32 compute (issue 17, item 3): kernels multiply in float32, statistics are summed
and the M-step done in float64; ill-conditioned modalities fall back to float64.

References: scikit-learn's float64 ``GaussianMixture`` from identical starting parameters, and a
plain numpy quadratic form evaluated in float32 for the rounding estimate.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.config import ModelConfig
from mmgmm_spark.core.densities import float32_error, kernel_dtype, shift
from mmgmm_spark.core.spec import MixtureSpec

K = 4


def _blobs(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(K, dim))
    return centres[rng.integers(K, size=rows)] + rng.standard_normal((rows, dim))


def _start(x: np.ndarray) -> dict:
    rng = np.random.default_rng(1)
    means = x[rng.choice(len(x), K, replace=False)]
    precision = np.linalg.inv(np.cov(x, rowvar=False))
    return {"weights_init": np.full(K, 1 / K), "means_init": means,
            "precisions_init": np.repeat(precision[None], K, axis=0)}


def _ours(x: np.ndarray, dtype: str, iters: int, **start) -> MultimodalGaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MultimodalGaussianMixture(
            [Modality("x", x.shape[1], "full")], K, tol=0.0, max_iter=iters, reg_covar=1e-6,
            weights_init=start["weights_init"], means_init={"x": start["means_init"]},
            precisions_init={"x": start["precisions_init"]}, compute_dtype=dtype,
            random_state=0).fit({"x": x}, on_iteration=None)


def test_float32_fit_is_within_1e6_of_sklearn_float64() -> None:
    x = _blobs(20_000, 12)
    start = _start(x)
    ours = _ours(x, "float32", 25, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = GaussianMixture(K, covariance_type="full", tol=0.0, max_iter=25,
                             **start).fit(x)
    assert kernel_dtype(ours.params_.blocks["x"], shift(ours.params_.blocks["x"],
                                                        ours.params_.weights),
                        "float32") == "float32"
    assert abs(ours.lower_bounds_[-1] - sk.lower_bound_) <= 1e-6 * abs(sk.lower_bound_)
    order = np.argsort(ours.params_.blocks["x"].means[:, 0])
    np.testing.assert_allclose(ours.params_.blocks["x"].means[order],
                               sk.means_[np.argsort(sk.means_[:, 0])], atol=1e-4)


def test_float32_error_estimate_bounds_the_measured_rounding() -> None:
    x = _blobs(5_000, 24)
    model = _ours(x, "float64", 5, **_start(x))
    gaussian, weights = model.params_.blocks["x"], model.params_.weights
    centre = shift(gaussian, weights)
    precisions = gaussian.precisions()
    diff = x[None] - gaussian.means[:, None]                     # (K, n, d)
    exact = np.einsum("kni,kij,knj->kn", diff, precisions, diff)
    xc = (x - centre).astype(np.float32)
    mc = (gaussian.means - centre).astype(np.float32)
    p32 = precisions.astype(np.float32)
    expanded = (np.einsum("ni,kij,nj->kn", xc, p32, xc) - 2 * np.einsum("ni,kij,kj->kn", xc,
                p32, mc) + np.einsum("ki,kij,kj->k", mc, p32, mc)[:, None])
    measured = np.median(np.abs(expanded - exact))
    assert measured <= float32_error(gaussian, centre)


def test_ill_conditioned_modality_falls_back_to_float64_exactly() -> None:
    x = _blobs(5_000, 6)
    x[:, 5] = x[:, 4] + 1e-4 * np.random.default_rng(2).standard_normal(len(x))
    start = _start(x)
    single, double = _ours(x, "float32", 10, **start), _ours(x, "float64", 10, **start)
    assert float32_error(double.params_.blocks["x"], shift(double.params_.blocks["x"],
                                                           double.params_.weights)) > 1
    assert single.lower_bounds_ == double.lower_bounds_


def test_compute_dtype_is_validated_and_stored() -> None:
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        MultimodalGaussianMixture([Modality("x", 2)], 1, compute_dtype="float16").fit(
            {"x": np.random.default_rng(0).standard_normal((50, 2))})
    spec = MixtureSpec((Modality("x", 2),), 2, compute_dtype="float32").validate()
    document = spec.to_dict()
    assert MixtureSpec.from_dict(document).compute_dtype == "float32"
    del document["hyperparameters"]["compute_dtype"]               # a file from before
    assert MixtureSpec.from_dict(document).compute_dtype == "float64"
    assert ModelConfig(compute_dtype="float32").compute_dtype == "float32"
    assert ModelConfig().compute_dtype == "float64"
    with pytest.raises(ValueError, match="compute_dtype"):
        ModelConfig(compute_dtype="half")


@pytest.mark.parametrize("name", ["38_thyroid", "40_vowels", "2_annthyroid", "6_cardio"])
def test_adbench_float32_final_log_likelihood_within_1e6(adbench_dir: Path, name: str) -> None:
    x = np.load(adbench_dir / "classical" / f"{name}.npz")["X"].astype(float)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    results = {}
    for dtype in ("float64", "float32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[dtype] = MultimodalGaussianMixture(
                [Modality("x", x.shape[1], "full")], K, tol=1e-9, max_iter=1000,
                random_state=0, compute_dtype=dtype).fit({"x": x}, on_iteration=None)
    double, single = results["float64"].lower_bound_, results["float32"].lower_bound_
    assert abs(single - double) <= 1e-6 * abs(double)
