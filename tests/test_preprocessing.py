"""Per-modality preprocessing against scikit-learn's StandardScaler + PCA."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from mmgmm_spark.core.preprocessing import ModalityPreprocessor, Moments, auto_n_components


@pytest.fixture()
def wide() -> np.ndarray:
    """(120, 300) correlated rows: more features than rows, as image embeddings."""
    rng = np.random.RandomState(0)
    return rng.randn(120, 8) @ rng.randn(8, 300) * 3 + rng.randn(120, 300) * 0.5 + 10


def _same_up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a * signs, b, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("whiten", [False, True])
def test_equals_standard_scaler_then_pca(wide: np.ndarray, whiten: bool) -> None:
    pre = ModalityPreprocessor.fit(wide, 10, whiten=whiten)
    z = StandardScaler().fit_transform(wide)
    pca = PCA(10, whiten=whiten).fit(z)
    _same_up_to_sign(pre.transform(wide), pca.transform(z))
    np.testing.assert_allclose(pre.explained_variance, pca.explained_variance_, rtol=1e-8)
    # probabilistic PCA's maximum-likelihood noise: the mean discarded variance over all d - q
    # directions (scikit-learn averages over min(n, d) - q instead)
    discarded = z.var(axis=0, ddof=1).sum() - pca.explained_variance_.sum()
    np.testing.assert_allclose(pre.noise_variance, discarded / (z.shape[1] - 10), rtol=1e-8)


def test_standardise_only_equals_standard_scaler(wide: np.ndarray) -> None:
    x = wide.copy()
    x[:, 3] = 7.0                                    # a constant feature: scale 1
    pre = ModalityPreprocessor.fit(x, None)
    np.testing.assert_allclose(pre.transform(x), StandardScaler().fit_transform(x), atol=1e-10)


def test_missing_rows_are_ignored_and_stay_missing(wide: np.ndarray) -> None:
    x = wide.copy()
    x[[3, 50]] = np.nan
    pre = ModalityPreprocessor.fit(x, 5)
    direct = ModalityPreprocessor.fit(np.delete(wide, [3, 50], axis=0), 5)
    out = pre.transform(x)
    assert np.isnan(out[[3, 50]]).all() and not np.isnan(np.delete(out, [3, 50], 0)).any()
    np.testing.assert_allclose(np.delete(out, [3, 50], 0), direct.transform(
        np.delete(wide, [3, 50], axis=0)))
    assert np.isnan(pre.residual_log_density(x)[[3, 50]]).all()


def test_moments_fit_equals_direct_fit_and_merges(wide: np.ndarray) -> None:
    parts = [Moments.of(wide[:37]), Moments.of(wide[37:90]), Moments.of(wide[90:])]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    other_order = parts[2].merge(parts[0].merge(parts[1]))
    whole = Moments.of(wide)
    for m in (merged, other_order):
        assert m.count == whole.count
        np.testing.assert_allclose(m.total, whole.total, rtol=1e-12)
        np.testing.assert_allclose(m.scatter, whole.scatter, rtol=1e-9, atol=1e-8)
    from_moments = ModalityPreprocessor.fit_from_moments(merged, 6)
    direct = ModalityPreprocessor.fit(wide, 6)
    np.testing.assert_allclose(from_moments.transform(wide), direct.transform(wide),
                               rtol=1e-7, atol=1e-8)


def test_residual_term_makes_a_density_of_the_input_rows() -> None:
    """With q = d, the standardisation and whitening Jacobians give the full Gaussian density."""
    rng = np.random.RandomState(1)
    x = rng.randn(400, 4) @ rng.randn(4, 4)
    pre = ModalityPreprocessor.fit(x, 4)              # q = d: only the whitening Jacobian
    z = StandardScaler().fit_transform(x)
    cov = np.cov(z, rowvar=False)
    _, logdet = np.linalg.slogdet(cov)
    t = pre.transform(x)
    log_gauss_t = -0.5 * ((t * t).sum(axis=1) + 4 * np.log(2 * np.pi))
    expected = -0.5 * (np.einsum("ni,ij,nj->n", z, np.linalg.inv(cov), z)
                       + 4 * np.log(2 * np.pi) + logdet)
    expected -= np.log(x.std(axis=0)).sum()           # density of x, not of z
    np.testing.assert_allclose(log_gauss_t + pre.residual_log_density(x), expected, atol=1e-8)
    unprojected = ModalityPreprocessor.fit(x, None)
    np.testing.assert_allclose(unprojected.residual_log_density(x),
                               -np.log(x.std(axis=0)).sum(), rtol=1e-12)


def test_auto_rule_keeps_narrow_blocks_and_caps_wide_ones() -> None:
    assert auto_n_components(np.linspace(5, 1, 6), n_rows=1000) == 6
    eigen = np.r_[100.0, 50.0, np.full(298, 0.01)]
    assert auto_n_components(eigen, n_rows=200) == 2
    assert auto_n_components(np.ones(300), n_rows=200) == 20


def test_round_trip_as_plain_arrays(wide: np.ndarray, tmp_path) -> None:
    pre = ModalityPreprocessor.fit(wide, "auto")
    arrays, meta = pre.to_arrays("p0_")
    np.savez(tmp_path / "p.npz", **arrays)
    loaded = ModalityPreprocessor.from_arrays(
        dict(np.load(tmp_path / "p.npz", allow_pickle=False)), meta, "p0_")
    np.testing.assert_array_equal(loaded.transform(wide), pre.transform(wide))
    np.testing.assert_array_equal(loaded.residual_log_density(wide),
                                  pre.residual_log_density(wide))
    arrays["p0_scale"] = arrays["p0_scale"][:-1]
    with pytest.raises(ValueError, match="p0_scale"):
        ModalityPreprocessor.from_arrays(arrays, meta, "p0_")
