"""Preprocessing fitted on Spark, and a tracked joint mixture fitted on the transformed rows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import local_tracking
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.models.fusion import FusionConfig, FusionModel
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import CachedBlocks
from mmgmm_spark.spark.preprocess import (
    fit_preprocessing,
    fit_preprocessing_options,
    modality_moments,
)
from mmgmm_spark.tracking import select_model, tracked_fit

pytestmark = pytest.mark.spark

MODALITIES = (Modality("wide", 12, "full"), Modality("narrow", 3, "diag", weight=0.5))


@pytest.fixture(scope="module")
def data():
    """1,500 entities, about 10% missing one modality; features on very different scales."""
    features = generate(1500, MODALITIES, n_clusters=3, seed=3).features
    return {"wide": features["wide"] * 40.0 + 5.0, "narrow": features["narrow"] * 0.01}


def observed(x: np.ndarray) -> np.ndarray:
    return x[~np.isnan(x).all(axis=1)]


@pytest.fixture(params=[True, False], ids=["rdd", "dataframe-only"])
def cached(request, spark, data):
    df = spark.createDataFrame(arrow_table(data)).repartition(3)
    blocks = CachedBlocks(df, MODALITIES, "test rows", rows_per_block=200, use_rdd=request.param)
    yield blocks
    blocks.unpersist()


def test_moments_of_cached_rows_equal_numpy(cached, data):
    moments = modality_moments(cached)
    for m in MODALITIES:
        x = observed(data[m.name])
        assert moments[m.name].count == len(x)
        np.testing.assert_allclose(moments[m.name].mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(moments[m.name].scatter / (len(x) - 1), np.cov(x.T),
                                   rtol=1e-10, atol=1e-12)


def test_spark_preprocessing_equals_standard_scaler_then_pca(cached, data):
    config = FusionConfig(projection=4, standardise=True)
    preprocessing = fit_preprocessing(cached, config, "test rows")
    x = observed(data["wide"])
    z = StandardScaler().fit_transform(x)
    pca = PCA(4, whiten=True).fit(z)
    wide = preprocessing.preprocessors["wide"]
    np.testing.assert_allclose(wide.explained_variance, pca.explained_variance_, rtol=1e-8)
    ours, theirs = wide.transform(x), pca.transform(z)
    np.testing.assert_allclose(ours * np.sign((ours * theirs).sum(axis=0)), theirs,
                               rtol=1e-7, atol=1e-8)
    assert [m.dim for m in preprocessing.mixture_modalities()] == [4, 3]   # capped at width


def _reference_log_density(fused: FusionModel, data) -> np.ndarray:
    """log p(x) of standardise-only preprocessing + joint mixture, in input units, by scipy:
    component k of modality m is N(mean_m + scale_m mu_km, S_m Sigma_km S_m), S_m = diag(scale)."""
    mixture = fused.mixtures_["joint"]
    n = len(data["wide"])
    joint = np.tile(np.log(mixture.weights_), (n, 1))
    for m in MODALITIES:
        p = fused.preprocessors_[m.name]
        rows = ~np.isnan(data[m.name]).all(axis=1)
        for k in range(mixture.n_components):
            covariance = mixture.covariances_[m.name][k]
            if m.covariance_type == "diag":
                covariance = np.diag(covariance)
            density = multivariate_normal(p.mean + p.scale * mixture.means_[m.name][k],
                                          np.outer(p.scale, p.scale) * covariance)
            joint[rows, k] += m.weight * density.logpdf(data[m.name][rows])
    return logsumexp(joint, axis=1)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    return local_tracking(tmp_path_factory, "preprocessed")


def test_tracked_spark_fit_with_preprocessing_equals_in_memory_and_closed_form(
        spark, data, tracking, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    df = spark.createDataFrame(arrow_table(data))      # row order kept: same k-means start
    config = FusionConfig(projection=None, standardise=True)
    fits = {}
    for path in ("spark", "in-memory"):
        cached = CachedBlocks(df, MODALITIES, "test rows")
        try:
            preprocessing = fit_preprocessing(cached, config, "test rows")
            model = MultimodalGaussianMixture(preprocessing.mixture_modalities(), 3, tol=0,
                                              max_iter=6, random_state=0)
            inputs = cached if path == "spark" else data
            fits[path] = tracked_fit(model, inputs, contamination=0.05, config=tracking,
                                     preprocessing=preprocessing, log_model=False)
        finally:
            cached.unpersist()
    spark_fit, memory_fit = fits["spark"], fits["in-memory"]
    fused = spark_fit.detector.model
    assert isinstance(fused, FusionModel) and fused.strategy == "joint"
    np.testing.assert_allclose(fused.mixtures_["joint"].lower_bounds_,
                               memory_fit.detector.model.mixtures_["joint"].lower_bounds_,
                               rtol=1e-9)
    expected = _reference_log_density(fused, data)
    np.testing.assert_allclose(fused.score_samples(data), expected, rtol=1e-9)
    assert spark_fit.detector.threshold == pytest.approx(np.quantile(-expected, 0.95), rel=1e-9)
    assert spark_fit.metrics["final_mean_log_likelihood"] == pytest.approx(expected.mean(),
                                                                           rel=1e-9)
    assert spark.sparkContext._jsc.sc().getPersistentRDDs().size() == 0


def test_bic_sweep_with_preprocessing_scores_input_rows(spark, data, tracking, monkeypatch):
    """Every candidate's BIC is that of the input rows' density (closed form), lowest wins."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cached = CachedBlocks(spark.createDataFrame(arrow_table(data)), MODALITIES, "test rows")
    try:
        preprocessing = fit_preprocessing(cached, FusionConfig(projection=None, standardise=True),
                                          "test rows")
        result = select_model(cached, MODALITIES, [1, 3], config=tracking, register=False,
                              preprocessing=preprocessing,
                              model_options={"max_iter": 30, "random_state": 0})
    finally:
        cached.unpersist()
    fused = result.best_fit.detector.model
    n = len(data["wide"])
    reference = _reference_log_density(fused, data)
    expected_bic = -2 * reference.sum() + fused.mixtures_["joint"].n_parameters() * np.log(n)
    # candidates skip the threshold passes; the winner's is computed once, exactly
    assert result.best_fit.detector.threshold == pytest.approx(np.quantile(-reference, 0.99),
                                                               rel=1e-9)
    assert result.best.bic == pytest.approx(expected_bic, rel=1e-9)
    assert result.best.bic == min(c.bic for c in result.candidates)
    assert result.best.n_components == 3
    assert fused.config.n_components == (3,)          # the saved config names the chosen K


def _reference_projected_log_density(fused: FusionModel, data, q: int) -> np.ndarray:
    """log p(x) of StandardScaler + whitened PCA(q) + joint mixture, by scikit-learn and scipy:
    the mixture's density of the whitened scores, the Jacobians of scaling and whitening, and
    isotropic N(0, noise_variance_) for the reconstruction error in the d - q dropped
    directions."""
    mixture = fused.mixtures_["joint"]
    n = len(data["wide"])
    joint = np.tile(np.log(mixture.weights_), (n, 1))
    for m in MODALITIES:
        rows = ~np.isnan(data[m.name]).all(axis=1)
        scaler = StandardScaler().fit(data[m.name][rows])
        z = scaler.transform(data[m.name][rows])
        pca = PCA(q, whiten=True).fit(z)
        t = pca.transform(z)
        t *= np.sign((t * fused.preprocessors_[m.name].transform(data[m.name][rows])).sum(axis=0))
        error = ((z - pca.inverse_transform(pca.transform(z))) ** 2).sum(axis=1)
        rest = m.dim - q
        jacobian = (-np.log(scaler.scale_).sum() - 0.5 * np.log(pca.explained_variance_).sum()
                    - 0.5 * (error / pca.noise_variance_
                             + rest * np.log(2 * np.pi * pca.noise_variance_)))
        for k in range(mixture.n_components):
            covariance = mixture.covariances_[m.name][k]
            if m.covariance_type == "diag":
                covariance = np.diag(covariance)
            joint[rows, k] += m.weight * (multivariate_normal(
                mixture.means_[m.name][k], covariance).logpdf(t) + jacobian)
    return logsumexp(joint, axis=1)


def test_bic_sweep_chooses_among_preprocessing_options(spark, data, tracking, monkeypatch):
    """Candidates with and without a PCA projection, all fitted from one moments pass: each
    BIC is that of the input rows' density by an independent closed form, lowest wins."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cached = CachedBlocks(spark.createDataFrame(arrow_table(data)), MODALITIES, "test rows")
    try:
        options = fit_preprocessing_options(
            cached, [FusionConfig(projection=None, standardise=True),
                     FusionConfig(projection=2, standardise=True)], "test rows")
        result = select_model(cached, MODALITIES, [2], config=tracking, register=False,
                              preprocessing=options,
                              model_options={"max_iter": 20, "random_state": 0})
    finally:
        cached.unpersist()
    assert [c.preprocessing for c in result.candidates] == [
        "standardise-true_projection-none", "standardise-true_projection-2"]
    n = len(data["wide"])
    for candidate, reference in zip(result.candidates, (
            _reference_log_density, lambda f, d: _reference_projected_log_density(f, d, 2)),
            strict=True):
        fused = candidate.fit.detector.model
        n_parameters = (fused.mixtures_["joint"].n_parameters()
                        + sum(p.n_parameters() for p in fused.preprocessors_.values()))
        expected = -2 * reference(fused, data).sum() + n_parameters * np.log(n)
        assert candidate.bic == pytest.approx(expected, rel=1e-9)
    assert result.best.bic == min(c.bic for c in result.candidates)
    assert spark.sparkContext._jsc.sc().getPersistentRDDs().size() == 0
