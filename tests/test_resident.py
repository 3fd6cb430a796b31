"""Blocks resident on the executors (spark/resident.py): same statistics, files written once,
a missing file recomputed from the cache, every file deleted with the cache."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.core.batch import Batch
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import CachedBlocks
from mmgmm_spark.spark.fit import SparkStatsPass
from mmgmm_spark.spark.resident import read_partition, write_partition

pytestmark = pytest.mark.spark

MODALITIES = (Modality("a", 5, "full"), Modality("b", 3, "diag"))
K = 3


@pytest.fixture(scope="module")
def data():
    """1,500 entities, some missing a modality; the model of one in-memory EM iteration."""
    sample = generate(1500, list(MODALITIES), n_clusters=K, seed=3)
    with pytest.warns(UserWarning):
        model = MultimodalGaussianMixture(list(MODALITIES), K, max_iter=1, tol=0,
                                          random_state=0).fit(sample.features, on_iteration=None)
    return sample, model


def frame(spark, features, partitions=3, weights=None):
    table = arrow_table(features)
    if weights is not None:
        table = table.append_column("w", [weights])
    return spark.createDataFrame(table.to_pandas()).repartition(partitions)


def numpy_reference(features, model, weights=None):
    """Per-component responsibility mass and total log-likelihood from scipy densities."""
    from scipy.stats import multivariate_normal

    n = len(next(iter(features.values())))
    log_joint = np.tile(np.log(model.weights_), (n, 1))
    for m in MODALITIES:
        x = features[m.name]
        seen = ~np.isnan(x).all(axis=1)
        for k in range(K):
            covariance = model.covariances_[m.name][k]
            covariance = np.diag(covariance) if covariance.ndim == 1 else covariance
            log_joint[seen, k] += multivariate_normal(model.means_[m.name][k],
                                                      covariance).logpdf(x[seen])
    top = log_joint.max(axis=1, keepdims=True)
    log_p = (top + np.log(np.exp(log_joint - top).sum(axis=1, keepdims=True)))[:, 0]
    w = np.ones(n) if weights is None else weights
    return (w[:, None] * np.exp(log_joint - log_p[:, None])).sum(axis=0), float(w @ log_p)


def statistics(blocks, model):
    return SparkStatsPass(blocks, MODALITIES, K)(model.params_)


def assert_matches(stats, reference):
    mass, log_likelihood = reference
    np.testing.assert_allclose(stats.mass, mass, rtol=1e-9)
    np.testing.assert_allclose(stats.log_likelihood, log_likelihood, rtol=1e-10)


def directories(blocks):
    return sorted(handle.directory for handle in blocks.resident.handles.collect())


PATHS = pytest.mark.parametrize("use_rdd", [True, False], ids=["rdd", "dataframe-only"])


@PATHS
def test_resident_passes_equal_scipy_and_delete_their_files(spark, data, use_rdd):
    """Weighted rows, 3 partitions: every pass equals a scipy reference; one directory per
    partition exists while cached and none after ``unpersist``."""
    sample, model = data
    weights = np.random.default_rng(0).integers(0, 4, len(sample.is_anomaly)).astype(float)
    blocks = CachedBlocks(frame(spark, sample.features, 3, weights), MODALITIES, "rows",
                          weight_column="w", use_rdd=use_rdd)
    try:
        assert blocks.resident is not None
        for _ in range(2):
            assert_matches(statistics(blocks, model),
                           numpy_reference(sample.features, model, weights))
        paths = directories(blocks)
        assert len(paths) == 3 and all(os.path.isdir(p) for p in paths)
        assert blocks.total_weight == weights.sum()
    finally:
        blocks.unpersist()
    assert not any(os.path.exists(p) for p in paths)
    assert not os.path.exists(os.path.dirname(paths[0]))


@PATHS
def test_a_partition_without_its_files_is_computed_from_the_cache(spark, data, caplog, use_rdd):
    """Files deleted behind the cache's back (a task on another node): the pass still equals
    the reference, says so, and the next pass writes the files again."""
    sample, model = data
    blocks = CachedBlocks(frame(spark, sample.features, 3), MODALITIES, "rows", use_rdd=use_rdd)
    try:
        statistics(blocks, model)
        paths = directories(blocks)
        shutil.rmtree(paths[1])
        with caplog.at_level(logging.WARNING, logger="mmgmm_spark.spark.data"):
            assert_matches(statistics(blocks, model), numpy_reference(sample.features, model))
        assert "1 partition(s) ran where their resident blocks are not" in caplog.text
        assert blocks.resident.handles is None and not os.path.exists(paths[0])
        assert_matches(statistics(blocks, model), numpy_reference(sample.features, model))
        assert all(os.path.isdir(p) for p in directories(blocks))
    finally:
        blocks.unpersist()


def test_streamed_blocks_write_no_files(spark, data):
    sample, model = data
    blocks = CachedBlocks(frame(spark, sample.features, 2), MODALITIES, "rows", resident=False)
    try:
        assert_matches(statistics(blocks, model), numpy_reference(sample.features, model))
        assert blocks.resident is None
    finally:
        blocks.unpersist()


def test_written_batches_read_back_equal_and_read_only(tmp_path, monkeypatch, data):
    """The file round trip keeps every array (weights, missing rows) and maps them read-only;
    a second writer of the same partition keeps the first copy."""
    sample, _ = data
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path},/elsewhere")
    from mmgmm_spark.spark.arrow import batch_from_arrow

    batch = batch_from_arrow(arrow_table(sample.features), MODALITIES)
    weighted = Batch(batch.n_rows, batch.blocks, np.arange(batch.n_rows, dtype=float))
    handle = write_partition("t", 4, [batch, weighted], MODALITIES)
    assert handle.directory == str(tmp_path / "mmgmm-resident-t" / "4")
    assert write_partition("t", 4, [batch], MODALITIES).directory == handle.directory
    first, second = read_partition(handle, MODALITIES)
    for read, original in ((first, batch), (second, weighted)):
        assert read.n_rows == original.n_rows
        for m in MODALITIES:
            np.testing.assert_array_equal(read.blocks[m.name].observed,
                                          original.blocks[m.name].observed)
            np.testing.assert_array_equal(read.blocks[m.name].values,
                                          original.blocks[m.name].values)
            assert not read.blocks[m.name].values.flags.writeable
    assert first.weights is None
    np.testing.assert_array_equal(second.weights, weighted.weights)
    shutil.rmtree(handle.directory)
    assert read_partition(handle, MODALITIES) is None


@PATHS
def test_fits_with_and_without_resident_blocks_equal_the_in_memory_fit(spark, data, use_rdd):
    """``fit(df, resident=False)`` (blocks streamed every pass) and the default give the
    in-memory fit's parameters and lower bounds."""
    sample, model = data
    start = {"weights_init": model.weights_, "means_init": model.means_,
             "precisions_init": model.precisions_}

    def fit(features, **options):
        with pytest.warns(UserWarning):      # tol=0 never converges
            return MultimodalGaussianMixture(list(MODALITIES), K, tol=0, max_iter=3,
                                             **start).fit(features, on_iteration=None, **options)

    reference = fit(sample.features)
    df = frame(spark, sample.features, 2)
    for resident in (True, False):
        fitted = fit(df, resident=resident, use_rdd=use_rdd)
        np.testing.assert_allclose(fitted.lower_bounds_, reference.lower_bounds_, rtol=1e-9)
        for m in MODALITIES:
            np.testing.assert_allclose(fitted.means_[m.name], reference.means_[m.name],
                                       rtol=1e-9, atol=1e-12)
