"""The Spark fit equals the in-memory fit, on every execution path and partitioning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from mmgmm_spark import DataValidationError, Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.fit import JOB_GROUP

MODALITIES = [Modality("image", 16, "full"), Modality("text", 8, "tied"),
              Modality("sensor", 4, "diag")]
K = 4
SCRIPT = Path(__file__).parent / "scripts" / "fit_in_session.py"


@pytest.fixture(scope="module")
def data():
    """3,000 entities, about 10% missing one modality."""
    return generate(3000, MODALITIES, n_clusters=K, seed=7)


@pytest.fixture(scope="module")
def start(data):
    """Initial parameters shared by the Spark and the in-memory fits."""
    first = MultimodalGaussianMixture(MODALITIES, K, max_iter=1, random_state=0)
    first.fit(data.features, on_iteration=None)
    return {"weights_init": first.weights_, "means_init": first.means_,
            "precisions_init": first.precisions_}


def reference(data, start, max_iter=8):
    with pytest.warns(UserWarning):
        return MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=max_iter, **start).fit(
            data.features, on_iteration=None)


def assert_same_fit(weights, means, covariances, lower_bounds, ref) -> None:
    """Parameters and lower-bound history equal to relative 1e-9."""
    np.testing.assert_allclose(weights, ref.weights_, rtol=1e-9)
    np.testing.assert_allclose(lower_bounds, ref.lower_bounds_, rtol=1e-9)
    for m in MODALITIES:
        np.testing.assert_allclose(means[m.name], ref.means_[m.name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(covariances[m.name], ref.covariances_[m.name], rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("partitions", [1, 2, 7])
@pytest.mark.parametrize("use_rdd", [True, False], ids=["rdd", "dataframe-only"])
def test_spark_fit_equals_in_memory_fit(spark, data, start, partitions, use_rdd):
    """Same start, tol=0: the distributed fit reproduces the in-memory one, missing blocks too."""
    df = spark.createDataFrame(arrow_table(data.features)).repartition(partitions)
    model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=8, **start)
    with pytest.warns(UserWarning):
        model.fit(df, on_iteration=None, use_rdd=use_rdd, rows_per_block=700)
    assert_same_fit(model.weights_, model.means_, model.covariances_, model.lower_bounds_,
                    reference(data, start))


def test_spark_dequantised_fit_equals_in_memory_fit(spark, data, start):
    """``reg_covar_mode='dequantise'`` on features rounded to a 0.5 lattice: the Spark fit
    computes the same per-feature floors (from its initialisation sample: every row here) and
    reproduces the in-memory fit."""
    rounded = {name: np.round(x * 2.0) / 2.0 for name, x in data.features.items()}
    options = {"tol": 0, "max_iter": 4, "reg_covar_mode": "dequantise", **start}
    df = spark.createDataFrame(arrow_table(rounded)).repartition(2)
    with pytest.warns(UserWarning):
        model = MultimodalGaussianMixture(MODALITIES, K, **options).fit(
            df, on_iteration=None, use_rdd=False, rows_per_block=700)
        ref = MultimodalGaussianMixture(MODALITIES, K, **options).fit(rounded, on_iteration=None)
        absolute = MultimodalGaussianMixture(MODALITIES, K, **options | {
            "reg_covar_mode": "absolute"}).fit(rounded, on_iteration=None)
    assert_same_fit(model.weights_, model.means_, model.covariances_, model.lower_bounds_, ref)
    gap = ref.covariances_["sensor"] - absolute.covariances_["sensor"]   # the floors, 0.5^2/12
    np.testing.assert_allclose(gap, 0.25 / 12, rtol=0.2)


@pytest.mark.parametrize("use_rdd", [True, False], ids=["rdd", "dataframe-only"])
def test_spark_float32_compute_is_within_1e6_of_the_float64_fit(spark, data, start, use_rdd):
    """compute_dtype reaches the Spark tasks: the float32 fit stays within 1e-6 of float64."""
    df = spark.createDataFrame(arrow_table(data.features)).repartition(2)
    model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=8, compute_dtype="float32",
                                      **start)
    with pytest.warns(UserWarning):
        model.fit(df, on_iteration=None, use_rdd=use_rdd, rows_per_block=700)
    np.testing.assert_allclose(model.lower_bounds_, reference(data, start).lower_bounds_,
                               rtol=1e-6)


def test_each_iteration_is_a_named_spark_job_and_cache_is_released(spark, data, start):
    df = spark.createDataFrame(arrow_table(data.features))
    tracker = spark.sparkContext.statusTracker()
    before = len(tracker.getJobIdsForGroup(JOB_GROUP))
    with pytest.warns(UserWarning):
        model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=3, **start).fit(df)
    assert len(tracker.getJobIdsForGroup(JOB_GROUP)) - before == model.n_iter_ == 3
    assert spark.sparkContext._jsc.sc().getPersistentRDDs().size() == 0


@pytest.mark.parametrize("use_rdd", [True, False], ids=["rdd", "dataframe-only"])
def test_cached_blocks_serve_models_of_other_covariance_types(spark, data, use_rdd):
    """Blocks cached for one set of covariance types fit a model of others (a sweep reuses
    one cache): the statistics follow the model, equal to the in-memory fit."""
    from mmgmm_spark.spark.data import CachedBlocks

    other = [Modality(m.name, m.dim, "diag" if m.covariance_type == "full" else "full")
             for m in MODALITIES]
    cached = CachedBlocks(spark.createDataFrame(arrow_table(data.features)), tuple(MODALITIES),
                          "test rows", use_rdd=use_rdd)
    try:
        with pytest.warns(UserWarning):
            model = MultimodalGaussianMixture(other, K, tol=0, max_iter=4,
                                              random_state=0).fit(cached)
        with pytest.raises(ValueError, match="do not match the cached blocks"):
            MultimodalGaussianMixture(other[:2], K).fit(cached)
    finally:
        cached.unpersist()
    with pytest.warns(UserWarning):
        ref = MultimodalGaussianMixture(other, K, tol=0, max_iter=4, random_state=0).fit(
            data.features, on_iteration=None)
    np.testing.assert_allclose(model.lower_bounds_, ref.lower_bounds_, rtol=1e-9)


def test_float32_and_vector_columns_are_accepted(spark, data, start):
    """array<float> and Spark ML vectors give the array<double> result (float32-rounded data)."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    rounded = {k: v.astype(np.float32).astype(np.float64) for k, v in data.features.items()}
    df = spark.createDataFrame(arrow_table(data.features))
    df = df.select(F.col("image").cast("array<float>").alias("image"),
                   F.when(F.col("text").isNotNull(), array_to_vector("text")).alias("text"),
                   F.col("sensor").cast("array<float>").alias("sensor"))
    model = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=3, **start)
    with pytest.warns(UserWarning):
        model.fit(df, on_iteration=None)
    ref = MultimodalGaussianMixture(MODALITIES, K, tol=0, max_iter=3, **start)
    with pytest.warns(UserWarning):
        ref.fit({**rounded, "text": data.features["text"]}, on_iteration=None)
    np.testing.assert_allclose(model.lower_bounds_, ref.lower_bounds_, rtol=1e-9)


def test_fit_from_sampled_initialisation_recovers_groups(spark):
    """Default initialisation on a driver sample finds the latent groups (ARI >= 0.95)."""
    truth = generate(6000, MODALITIES, n_clusters=K, anomaly_fraction=0.0, seed=3)
    df = spark.createDataFrame(arrow_table(truth.features)).repartition(3)
    model = MultimodalGaussianMixture(MODALITIES, K, random_state=0, n_init=2)
    model.fit(df, on_iteration=None, init_sample_rows=1500)
    assert model.converged_
    labels = model.predict(truth.features)
    assert adjusted_rand_score(truth.group, labels) >= 0.95


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda x: x.__setitem__((slice(5, 8), 3), np.nan), r"3 rows partly NaN in 'image'"),
    (lambda x: x.__setitem__((9, 0), np.inf), r"1 rows with infinite values in 'image'"),
])
def test_bad_values_inside_spark_tasks_raise_a_clear_error(spark, data, mutate, expected):
    features = {k: v.copy() for k, v in data.features.items()}
    features["image"][np.isnan(features["image"]).any(axis=1)] = 0.0
    mutate(features["image"])
    df = spark.createDataFrame(arrow_table(features))
    with pytest.raises(DataValidationError, match=expected):
        MultimodalGaussianMixture(MODALITIES, K).fit(df)
    assert spark.sparkContext._jsc.sc().getPersistentRDDs().size() == 0


def test_wrong_width_missing_column_and_wrong_type(spark, data):
    table = arrow_table(data.features)
    short = pa.array([[1.0, 2.0]] * table.num_rows, type=pa.list_(pa.float64()))
    df = spark.createDataFrame(table.set_column(2, "text", short))
    with pytest.raises(DataValidationError,
                       match=r"3000 feature arrays whose length is not 8 in 'text'"):
        MultimodalGaussianMixture(MODALITIES, K).fit(df)
    with pytest.raises(DataValidationError, match="no column 'sensor'"):
        MultimodalGaussianMixture(MODALITIES, K).fit(spark.createDataFrame(table.drop(["sensor"])))
    bad_type = spark.createDataFrame(table).withColumn("sensor", __import__(
        "pyspark.sql.functions", fromlist=["lit"]).lit("x"))
    with pytest.raises(DataValidationError, match="column 'sensor' has type string"):
        MultimodalGaussianMixture(MODALITIES, K).fit(bad_type)


def _fit_in_fresh_process(tmp_path, data, start, session_args, partitions=2, max_iter=5):
    arrays = {f"x_{k}": v for k, v in data.features.items()}
    arrays["weights_init"] = start["weights_init"]
    for m in MODALITIES:
        arrays[f"means_init_{m.name}"] = start["means_init"][m.name]
        arrays[f"precisions_init_{m.name}"] = start["precisions_init"][m.name]
    spec = {"modalities": [m.to_dict() for m in MODALITIES], "n_components": K,
            "max_iter": max_iter, "partitions": partitions}
    np.savez(tmp_path / "data.npz", spec=json.dumps(spec), **arrays)
    subprocess.run([sys.executable, str(SCRIPT), *session_args, str(tmp_path / "data.npz"),
                    str(tmp_path / "out.npz")], check=True, timeout=600)
    out = np.load(tmp_path / "out.npz")
    return (out["weights"], {m.name: out[f"means_{m.name}"] for m in MODALITIES},
            {m.name: out[f"covariances_{m.name}"] for m in MODALITIES}, out["lower_bounds"])


@pytest.mark.slow
def test_local_cluster_with_two_executor_jvms(tmp_path, data, start):
    """local-cluster[2,1,1024]: two real executor processes, same result as in memory."""
    fitted = _fit_in_fresh_process(tmp_path, data, start, ["--master", "local-cluster[2,1,1024]"])
    assert_same_fit(*fitted, reference(data, start, max_iter=5))


@pytest.mark.slow
def test_spark_connect_dataframe_only_fit(tmp_path, data, start, connect_url):
    """A Spark Connect session (no RDD API; the session's shared server) fits with the
    DataFrame-only reduction."""
    fitted = _fit_in_fresh_process(tmp_path, data, start, ["--remote", connect_url])
    assert_same_fit(*fitted, reference(data, start, max_iter=5))
