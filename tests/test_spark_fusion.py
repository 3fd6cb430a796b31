"""``early`` and ``late`` fusion fitted on Spark against scikit-learn and closed forms."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import local_tracking
from mlflow import MlflowClient
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from mmgmm_spark import DataValidationError, Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.models.fusion import EARLY, FusionConfig, FusionModel, Preprocessing
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import CachedBlocks
from mmgmm_spark.tracking import tracked_fit
from mmgmm_spark.tracking.late import tracked_late_fit

pytestmark = [pytest.mark.spark, pytest.mark.filterwarnings("ignore:EM did not converge")]

MODALITIES = (Modality("a", 4, "full"), Modality("b", 3, "full"))
REG = 1e-6


@pytest.fixture(scope="module")
def data():
    """1,200 entities from 3 clusters, about 10% of them missing one modality."""
    return generate(1200, MODALITIES, n_clusters=3, seed=5).features


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    return local_tracking(tmp_path_factory, "fusion")


@pytest.fixture(params=[True, False], ids=["rdd", "dataframe-only"])
def cached(request, spark, data):
    df = spark.createDataFrame(arrow_table(data)).repartition(3)
    blocks = CachedBlocks(df, MODALITIES, "test rows", rows_per_block=150, use_rdd=request.param)
    yield blocks
    blocks.unpersist()


def observed_rows(x: np.ndarray) -> np.ndarray:
    return ~np.isnan(x).all(axis=1)


def weighted_log_probs(x: np.ndarray, mixture: GaussianMixture,
                       index: np.ndarray) -> np.ndarray:
    """(n, K) log w_k + log N(x | mean_k[index], cov_k[index, index]) by scipy."""
    return np.stack([np.log(w) + multivariate_normal(mu[index], cov[np.ix_(index, index)])
                     .logpdf(x) for w, mu, cov in zip(mixture.weights_, mixture.means_,
                                                      mixture.covariances_, strict=True)], axis=1)


def test_early_fusion_on_spark_equals_sklearn_on_concatenated_complete_rows(
        cached, data, tracking, monkeypatch):
    """The early mixture is scikit-learn's on the rows observing both modalities; rows missing
    one are scored by the exact marginal, and the threshold is over all rows."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    complete = observed_rows(data["a"]) & observed_rows(data["b"])
    x = np.hstack([data["a"], data["b"]])
    weights, means = np.array([0.4, 0.35, 0.25]), x[complete][[0, 10, 20]]
    precisions = np.stack([np.eye(7)] * 3)
    reference = GaussianMixture(3, tol=0, max_iter=8, reg_covar=REG, weights_init=weights,
                                means_init=means, precisions_init=precisions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference.fit(x[complete])

    preprocessing = Preprocessing.identity(list(MODALITIES), FusionConfig("early"))
    model = MultimodalGaussianMixture(
        preprocessing.mixture_modalities(), 3, tol=0, max_iter=8, reg_covar=REG,
        weights_init=weights, means_init={EARLY: means}, precisions_init={EARLY: precisions})
    fit = tracked_fit(model, cached, contamination=0.05, config=tracking,
                      preprocessing=preprocessing, log_model=False)

    fused = fit.detector.model
    assert isinstance(fused, FusionModel) and fused.strategy == "early"
    mixture = fused.mixtures_[EARLY]
    np.testing.assert_allclose(mixture.weights_, reference.weights_, rtol=1e-7)
    np.testing.assert_allclose(mixture.means_[EARLY], reference.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(mixture.covariances_[EARLY], reference.covariances_, rtol=1e-7,
                               atol=1e-9)
    a_seen, b_seen = observed_rows(data["a"]), observed_rows(data["b"])
    joint = np.empty((len(x), 3))
    for rows, index in ((complete, np.arange(7)), (a_seen & ~b_seen, np.arange(4)),
                        (~a_seen & b_seen, np.arange(4, 7))):
        joint[rows] = weighted_log_probs(x[np.ix_(rows, index)], reference, index)
    expected = logsumexp(joint, axis=1)
    responsibilities = fused.responsibilities(fused.to_batch(data))
    np.testing.assert_allclose(responsibilities, np.exp(joint - expected[:, None]), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(responsibilities[complete], reference.predict_proba(x[complete]),
                               rtol=1e-6, atol=1e-9)
    assert (~complete).sum() > 50
    np.testing.assert_allclose(fused.score_samples(data), expected, rtol=1e-7)
    assert fit.detector.threshold == pytest.approx(np.quantile(-expected, 0.95), rel=1e-7)
    assert fit.metrics["final_mean_log_likelihood"] == pytest.approx(expected.mean(), rel=1e-7)
    assert fit.n_rows == len(x)


def test_late_fusion_on_spark_is_the_closed_form_combination(spark, data, tracking,
                                                             monkeypatch):
    """One Gaussian per modality (K=1: the sample mean and covariance), scores standardised
    by their training mean and std and averaged over observed modalities; a parent run with
    one nested run per modality logs the density of independent modalities and its BIC."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cached = CachedBlocks(spark.createDataFrame(arrow_table(data)), MODALITIES, "test rows")
    preprocessing = Preprocessing.identity(list(MODALITIES), FusionConfig("late"))
    models = {m.name: MultimodalGaussianMixture(
        preprocessing.for_modality(m.name).mixture_modalities(), 1, tol=0, max_iter=2,
        reg_covar=REG) for m in MODALITIES}
    try:
        fit = tracked_late_fit(models, cached, preprocessing, contamination=0.02,
                               config=tracking)
    finally:
        cached.unpersist()

    def log_density(name: str, x: np.ndarray) -> np.ndarray:
        train = data[name][observed_rows(data[name])]
        covariance = np.cov(train, rowvar=False, bias=True) + REG * np.eye(train.shape[1])
        out = np.full(len(x), np.nan)
        rows = observed_rows(x)
        out[rows] = multivariate_normal(train.mean(axis=0), covariance).logpdf(x[rows])
        return out

    ll = {name: log_density(name, data[name]) for name in data}
    z = np.stack([(v - np.nanmean(v)) / np.nanstd(v) for v in ll.values()], axis=1)
    expected = np.nanmean(z, axis=1)
    fused = fit.detector.model
    assert fused.strategy == "late"
    np.testing.assert_allclose(fused.score_samples(data), expected, rtol=1e-8, atol=1e-10)
    assert fit.detector.threshold == pytest.approx(np.quantile(-expected, 0.98), rel=1e-8)

    density = np.nansum(np.stack(list(ll.values()), axis=1), axis=1)
    np.testing.assert_allclose(fused.log_density(data), density, rtol=1e-9)
    n_parameters = sum(d + d * (d + 1) // 2 for d in (4, 3))
    assert fit.metrics["final_mean_log_likelihood"] == pytest.approx(density.mean(), rel=1e-9)
    assert fit.metrics["bic"] == pytest.approx(
        -2 * density.sum() + n_parameters * np.log(len(density)), rel=1e-9)

    client = MlflowClient(tracking.tracking_uri)
    children = client.search_runs(
        [client.get_experiment_by_name("fusion").experiment_id],
        f"tags.mlflow.parentRunId = '{fit.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["late: a", "late: b"]
    assert client.get_run(fit.run_id).data.params["fusion"] == "late"
    # the drift reference stored with the late model: every row binned (numpy), shares
    reference = client.download_artifacts(fit.run_id, "drift/reference.json")
    reference = json.loads(Path(reference).read_text())
    score = reference["columns"]["anomaly_score"]
    np.testing.assert_array_equal(score["counts"], np.bincount(
        np.searchsorted(score["edges"], -expected, side="right"),
        minlength=len(score["edges"]) + 1))
    assert reference["missing_share"] == pytest.approx(
        {name: float((~observed_rows(x)).mean()) for name, x in data.items()})
    assert spark.sparkContext._jsc.sc().getPersistentRDDs().size() == 0


def test_too_few_rows_of_one_modality_is_named(spark, data, tracking, monkeypatch):
    """late: a modality observed by fewer rows than K fails naming it; early: the rows that
    observe every modality are counted, not all rows."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    a = data["a"][observed_rows(data["a"])]
    sparse = {"a": a, "b": np.full((len(a), 3), np.nan)}
    sparse["b"][:2] = 1.0
    cached = CachedBlocks(spark.createDataFrame(arrow_table(sparse)), MODALITIES, "test rows")
    try:
        late = Preprocessing.identity(list(MODALITIES), FusionConfig("late"))
        models = {m.name: MultimodalGaussianMixture(
            late.for_modality(m.name).mixture_modalities(), 3, max_iter=3) for m in MODALITIES}
        with pytest.raises(DataValidationError, match=r"rows observing 'b'.*2 rows, fewer than"):
            tracked_late_fit(models, cached, late, config=tracking)
        early = Preprocessing.identity(list(MODALITIES), FusionConfig("early"))
        model = MultimodalGaussianMixture(early.mixture_modalities(), 3, max_iter=3)
        with pytest.raises(DataValidationError, match=r"observing every modality.*2 rows"):
            tracked_fit(model, cached, config=tracking, preprocessing=early, log_model=False)
    finally:
        cached.unpersist()
    assert spark.sparkContext._jsc.sc().getPersistentRDDs().size() == 0
