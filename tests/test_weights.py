"""Sample weights and warm starts, in memory and on Spark.

Integer weights must give exactly the fit of the rows repeated; one weighted EM iteration (and
one iteration of a warm start) must equal an M-step written here in plain numpy/scipy.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import multivariate_normal

from mmgmm_spark import DataValidationError, Modality, MultimodalGaussianMixture
from mmgmm_spark.core.spec import DEFAULT_REG_COVAR
from mmgmm_spark.spark.arrow import arrow_table

MODALITIES = [Modality("image", 4, "full"), Modality("text", 3, "diag")]
K = 3
REG = DEFAULT_REG_COVAR  # the estimator default the fits below use


@pytest.fixture(scope="module")
def data():
    """300 rows of three groups; 10% miss the text block; integer weights 0..3."""
    rng = np.random.default_rng(3)
    group = rng.integers(K, size=300)
    image = rng.normal(size=(300, 4)) + 4.0 * group[:, None]
    text = rng.normal(size=(300, 3)) * (1 + group[:, None]) - 2.0 * group[:, None]
    text[rng.random(300) < 0.1] = np.nan
    weights = rng.integers(0, 4, size=300)
    return {"image": image, "text": text}, weights


@pytest.fixture(scope="module")
def start(data):
    """Initial parameters shared by every fit compared here."""
    features, _ = data
    first = MultimodalGaussianMixture(MODALITIES, K, max_iter=1, random_state=0)
    first.fit(features, on_iteration=None)
    return first


def initial(model: MultimodalGaussianMixture) -> dict:
    return {"weights_init": model.weights_, "means_init": model.means_,
            "precisions_init": model.precisions_}


def repeated(features: dict, weights: np.ndarray) -> dict:
    return {name: np.repeat(values, weights, axis=0) for name, values in features.items()}


def assert_same_fit(model, ref, rtol=1e-9) -> None:
    np.testing.assert_allclose(model.weights_, ref.weights_, rtol=rtol)
    np.testing.assert_allclose(model.lower_bounds_, ref.lower_bounds_, rtol=rtol)
    for m in MODALITIES:
        np.testing.assert_allclose(model.means_[m.name], ref.means_[m.name], rtol=rtol,
                                   atol=1e-12)
        np.testing.assert_allclose(model.covariances_[m.name], ref.covariances_[m.name],
                                   rtol=rtol, atol=1e-12)


def numpy_m_step(features: dict, weights: np.ndarray, start: MultimodalGaussianMixture):
    """One weighted EM iteration from ``start``'s parameters (full image, diag text), with
    missing text blocks marginalised: (mean log-likelihood, weights, means, covariances)."""
    n = len(weights)
    log_prob = np.tile(np.log(start.weights_), (n, 1))
    observed = {name: ~np.isnan(x).all(axis=1) for name, x in features.items()}
    for m in MODALITIES:
        x, seen = features[m.name], observed[m.name]
        for k in range(K):
            cov = start.covariances_[m.name][k]
            cov = cov if m.covariance_type == "full" else np.diag(cov)
            log_prob[seen, k] += multivariate_normal(start.means_[m.name][k], cov).logpdf(x[seen])
    top = log_prob.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(log_prob - top).sum(axis=1))
    resp = np.exp(log_prob - log_norm[:, None]) * weights[:, None]
    means, covariances = {}, {}
    for m in MODALITIES:
        x, r = features[m.name][observed[m.name]], resp[observed[m.name]]
        mass = r.sum(axis=0)
        means[m.name] = (r.T @ x) / mass[:, None]
        cov = []
        for k in range(K):
            diff = x - means[m.name][k]
            scatter = (r[:, k, None] * diff).T @ diff / mass[k]
            cov.append(scatter + REG * np.eye(m.dim) if m.covariance_type == "full"
                       else np.diag(scatter) + REG)
        covariances[m.name] = np.array(cov)
    mean_log_likelihood = float(log_norm @ weights / weights.sum())
    return mean_log_likelihood, resp.sum(axis=0) / resp.sum(), means, covariances


def assert_equals_reference(model, reference) -> None:
    mean_log_likelihood, weights, means, covariances = reference
    assert model.lower_bounds_ == pytest.approx([mean_log_likelihood], rel=1e-10)
    np.testing.assert_allclose(model.weights_, weights, rtol=1e-9)
    for m in MODALITIES:
        np.testing.assert_allclose(model.means_[m.name], means[m.name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(model.covariances_[m.name], covariances[m.name], rtol=1e-9,
                                   atol=1e-12)


def test_integer_weights_equal_repeated_rows_in_memory(data, start):
    features, weights = data
    weighted = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=15, **initial(start))
    weighted.fit(features, sample_weight=weights, on_iteration=None)
    copies = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=15, **initial(start))
    copies.fit(repeated(features, weights), on_iteration=None)
    assert_same_fit(weighted, copies)


def test_one_weighted_iteration_equals_a_numpy_m_step(data, start):
    features, weights = data
    weights = weights * 0.7 + 0.05       # fractional weights too
    model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=1, **initial(start))
    model.fit(features, sample_weight=weights, on_iteration=None)
    assert_equals_reference(model, numpy_m_step(features, weights, start))


def test_warm_start_runs_em_from_exactly_the_given_model(data, start):
    """One iteration from a fitted model = one M-step from its parameters (no init, whatever
    the init settings and seed)."""
    features, _ = data
    model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=1, n_init=3,
                                      init_params="random", random_state=123)
    model.fit(features, initial_model=start, on_iteration=None)
    assert_equals_reference(model, numpy_m_step(features, np.ones(300), start))
    again = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=1)
    again.fit(features, initial_model=start.params, on_iteration=None)
    assert_same_fit(again, model, rtol=0)


@pytest.mark.parametrize(("modalities", "k", "expected"), [
    (MODALITIES, K + 1, "K=3 (the model's n_components=4)"),
    ([Modality("image", 5, "full"), Modality("text", 3, "diag")], K,
     "modality 'image' of width 4 (the model's 5)"),
    ([Modality("image", 4, "full"), Modality("text", 3, "full")], K,
     "modality 'text' of covariance type 'diag' (the model's 'full')"),
    ([Modality("image", 4, "full")], K, "has modalities ['image', 'text'], the model ['image']"),
])
def test_warm_start_from_another_shape_is_refused(data, start, modalities, k, expected):
    features, _ = data
    subset = {m.name: features[m.name][:, :m.dim] if m.dim <= features[m.name].shape[1]
              else np.hstack([features[m.name], features[m.name][:, :1]]) for m in modalities}
    with pytest.raises(ValueError, match="initial_model") as error:
        MultimodalGaussianMixture(modalities, k).fit(subset, initial_model=start,
                                                     on_iteration=None)
    assert expected in str(error.value)


@pytest.mark.parametrize(("weights", "expected"), [
    (lambda n: -np.ones(n), "300 of 300 row(s) have a negative weight"),
    (lambda n: np.r_[np.nan, np.ones(n - 1)], "1 of 300 row(s) have a null, NaN or infinite"),
    (lambda n: np.r_[np.inf, np.ones(n - 1)], "1 of 300 row(s) have a null, NaN or infinite"),
    (lambda n: np.zeros(n), "all 300 weights are zero"),
    (lambda n: np.ones(n - 1), "must be 300 numbers (one per row), got shape (299,)"),
])
def test_bad_sample_weights_are_refused_naming_the_column(data, weights, expected):
    features, _ = data
    with pytest.raises(DataValidationError, match="weight column 'sample_weight'") as error:
        MultimodalGaussianMixture(MODALITIES, K).fit(features, sample_weight=weights(300),
                                                     on_iteration=None)
    assert expected in str(error.value)


def test_weighted_seeding_never_picks_a_zero_weight_row(data):
    """k-means++ and random_from_data draw seeds by weight: far rows of weight 0 are never
    seeds, so every component starts on the weighted data."""
    features, weights = data
    far = {name: np.vstack([x, np.full((5, x.shape[1]), 1e3)]) for name, x in features.items()}
    w = np.r_[np.maximum(weights, 1), np.zeros(5)]
    for method in ("k-means++", "random_from_data", "kmeans"):
        for seed in range(5):
            model = MultimodalGaussianMixture(MODALITIES, K, max_iter=0, init_params=method,
                                              random_state=seed)
            model.fit(far, sample_weight=w, on_iteration=None)
            assert np.abs(model.means_["image"]).max() < 50, (method, seed)


def spark_frame(spark, features, weights, partitions=3, column="w"):
    table = arrow_table(features)
    if weights is not None:
        table = table.append_column(column, pa.array(np.asarray(weights)))
    return spark.createDataFrame(table).repartition(partitions)


@pytest.mark.spark
@pytest.mark.parametrize("use_rdd", [True, False], ids=["rdd", "dataframe-only"])
def test_spark_weight_column_equals_repeated_rows(spark, data, start, use_rdd):
    features, weights = data
    model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=10, **initial(start))
    model.fit(spark_frame(spark, features, weights.astype(np.int32)), sample_weight="w",
              on_iteration=None, use_rdd=use_rdd, rows_per_block=70)
    copies = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=10, **initial(start))
    copies.fit(repeated(features, weights), on_iteration=None)
    assert_same_fit(model, copies)


@pytest.mark.spark
def test_spark_warm_start_and_weighted_m_step(spark, data, start):
    features, weights = data
    weights = weights * 0.5 + 0.25
    model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=1)
    model.fit(spark_frame(spark, features, weights), sample_weight="w", initial_model=start,
              on_iteration=None)
    assert_equals_reference(model, numpy_m_step(features, weights, start))


@pytest.mark.spark
@pytest.mark.parametrize(("weights", "expected"), [
    (lambda n: np.r_[-1.0, np.ones(n - 1)], "1 of 300 row(s) have a negative weight"),
    (lambda n: np.r_[np.nan, np.nan, np.ones(n - 2)], "2 of 300 row(s) have a null, NaN"),
    (lambda n: np.zeros(n), "all 300 weights are zero"),
])
def test_spark_bad_weight_column_is_refused_naming_it(spark, data, weights, expected):
    features, _ = data
    df = spark_frame(spark, features, weights(300), column="importance")
    with pytest.raises(DataValidationError, match="weight column 'importance'") as error:
        MultimodalGaussianMixture(MODALITIES, K).fit(df, sample_weight="importance",
                                                     on_iteration=None)
    assert expected in str(error.value)
    with pytest.raises(DataValidationError, match="no weight column 'weight'"):
        MultimodalGaussianMixture(MODALITIES, K).fit(df, sample_weight="weight",
                                                     on_iteration=None)
