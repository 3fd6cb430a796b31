"""Spark: exact training threshold, distributed scoring to Delta, failure and re-run safety."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import CachedBlocks
from mmgmm_spark.spark.score import (
    read_and_join,
    score_to_delta,
    training_threshold,
)
from mmgmm_spark.storage import StorageError, write_modality_table
from mmgmm_spark.tracking import TrackingConfig, score_registered, score_udf, tracked_fit

pytestmark = pytest.mark.spark
MODALITIES = [Modality("image", 4, "full"), Modality("text", 3, "diag")]
NAME = "scoring-detector"
SCRIPT = Path(__file__).parent / "scripts" / "score_then_die.py"


@pytest.fixture(scope="module")
def data():
    return generate(800, tuple(MODALITIES), n_clusters=3, seed=11).features


@pytest.fixture(scope="module")
def detector(data):
    return AnomalyDetector.fit(MultimodalGaussianMixture(MODALITIES, 3, random_state=0), data,
                               contamination=0.05)


@pytest.fixture(scope="module")
def tables(spark, data, tmp_path_factory):
    """One Delta table per modality; rows missing the modality are absent from its table."""
    root = tmp_path_factory.mktemp("tables")
    for m in MODALITIES:
        present = ~np.isnan(data[m.name]).all(axis=1)
        write_modality_table(spark, root / m.name, np.flatnonzero(present),
                             data[m.name][present])
    return root


def read_scores(path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas().sort_values(["scoring_run_id", "id"])


@pytest.mark.parametrize("use_rdd", [True, False], ids=["rdd", "dataframe-only"])
def test_training_threshold_is_the_exact_quantile(spark, data, detector, use_rdd):
    df = spark.createDataFrame(arrow_table(data)).repartition(3)
    cached = CachedBlocks(df, detector.modalities, "test", rows_per_block=100, use_rdd=use_rdd)
    try:
        scores = -detector.model.score_samples(data)
        expected = np.quantile(scores, 0.95)
        # few bins and a small collect limit force several narrowing passes
        narrow = training_threshold(detector.model, cached, 0.05, bins=8, max_collect=40)
        direct = training_threshold(detector.model, cached, 0.05)
        assert narrow.passes > direct.passes
        assert narrow.threshold == pytest.approx(expected, rel=1e-12, abs=0)
        assert direct.threshold == pytest.approx(expected, rel=1e-12, abs=0)
        assert direct.n_rows == len(scores)
        assert direct.mean_log_likelihood == pytest.approx(-scores.mean(), rel=1e-12)
    finally:
        cached.unpersist()


def test_spark_training_path_and_tracked_spark_fit(spark, data, tmp_path):
    df = spark.createDataFrame(arrow_table(data)).repartition(2)
    config = TrackingConfig(work_dir=str(tmp_path), registered_model_name=None)
    run = tracked_fit(MultimodalGaussianMixture(MODALITIES, 3, random_state=0, max_iter=20), df,
                      contamination=0.05, config=config, log_model=False,
                      table_versions={"image": 0, "text": 0})
    fitted, model = run.detector, run.detector.model
    assert fitted.threshold == pytest.approx(
        np.quantile(-model.score_samples(data), 0.95), rel=1e-12)
    history = config.client().get_metric_history(run.run_id, "mean_log_likelihood")
    assert len(history) == run.detector.model.n_iter_
    np.testing.assert_allclose(run.metrics["bic"], run.detector.model.bic(data), rtol=1e-10)
    assert config.client().get_run(run.run_id).data.params["data_path"] == "spark"


def test_scorer_udf_and_model_agree(spark, data, tables, tmp_path):
    """Registered model by alias -> Delta scores; spark_udf and the in-memory model agree."""
    config = TrackingConfig(work_dir=str(tmp_path / "mlflow"), registered_model_name=NAME)
    fit = tracked_fit(MultimodalGaussianMixture(MODALITIES, 3, random_state=0), data,
                      contamination=0.05, config=config)
    model = fit.detector.model
    joined, versions = read_and_join(spark, {m.name: str(tables / m.name) for m in MODALITIES})
    output = tmp_path / "scores"
    result = score_registered(spark, joined, str(output), f"models:/{NAME}@champion",
                              config=config, table_versions=versions, responsibilities=True)
    scored = read_scores(output)
    ids = scored["id"].to_numpy()
    assert np.array_equal(ids, np.arange(len(ids))) and len(ids) == len(data["image"])
    np.testing.assert_allclose(scored["log_likelihood"], model.score_samples(data), rtol=0,
                               atol=1e-12)
    np.testing.assert_array_equal(scored["cluster"], model.predict(data))
    np.testing.assert_allclose(np.stack(scored["responsibilities"]), model.predict_proba(data),
                               atol=1e-12)
    in_memory = fit.detector.score(data)     # per-pattern flags: see test_calibration.py
    np.testing.assert_array_equal(scored["is_anomaly"], in_memory["is_anomaly"])
    np.testing.assert_allclose(scored["calibrated_score"], in_memory["calibrated_score"],
                               rtol=1e-9)
    assert set(scored["model_version"]) == {fit.model_version}
    assert set(scored["scoring_run_id"]) == {result.scoring_run_id}
    assert config.client().get_run(result.scoring_run_id).data.params["table_version.text"] == "0"
    # the same model through mlflow.pyfunc.spark_udf
    import mlflow

    mlflow.set_tracking_uri(config.resolved_uri())
    try:
        udf_scores = joined.select("id", score_udf(spark, f"models:/{NAME}@champion",
                                                   ["image", "text"]).alias("s"))
        by_udf = udf_scores.select("id", "s.*").toPandas().sort_values("id")
    finally:
        mlflow.set_tracking_uri(None)
    np.testing.assert_allclose(by_udf["log_likelihood"], model.score_samples(data), rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(by_udf["text_log_likelihood"], scored["text_log_likelihood"],
                               rtol=0, atol=1e-12)


def test_failed_commit_leaves_output_unchanged_and_rerun_has_one_copy(
        spark, data, detector, tables, tmp_path, monkeypatch):
    joined, _ = read_and_join(spark, {m.name: str(tables / m.name) for m in MODALITIES})
    output = tmp_path / "scores"
    score = lambda run_id: score_to_delta(spark, joined, str(output), detector,  # noqa: E731
                                          model_name="m", model_version="1",
                                          scoring_run_id=run_id)
    first = score("run-a")
    before = read_scores(output)
    directories = set(os.listdir(output))

    def broken_commit(*args, **kwargs):
        raise OSError("killed before commit")

    with monkeypatch.context() as patch:
        patch.setattr(DeltaTable, "create_write_transaction", broken_commit)
        with pytest.raises((OSError, StorageError)):
            score("run-b")
    assert DeltaTable(str(output)).version() == first.version
    pd.testing.assert_frame_equal(read_scores(output), before)
    assert set(os.listdir(output)) == directories     # staged files removed

    score("run-b")
    again = score("run-b")          # re-running the same scoring run replaces its rows
    scored = read_scores(output)
    counts = scored.groupby("scoring_run_id")["id"].agg(["count", "nunique"])
    n = len(data["image"])
    assert counts.to_dict("index") == {"run-a": {"count": n, "nunique": n},
                                       "run-b": {"count": n, "nunique": n}}
    assert again.version == first.version + 2


def test_scored_at_is_utc_whatever_the_local_time_zone(spark, detector, tables, tmp_path,
                                                       monkeypatch):
    joined, _ = read_and_join(spark, {m.name: str(tables / m.name) for m in MODALITIES})
    when = datetime(2024, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        score_to_delta(spark, joined.limit(3), str(tmp_path / "scores"), detector,
                       model_name="m", model_version="1", scored_at=when)
    finally:
        monkeypatch.undo()
        time.tzset()
    stored = set(read_scores(tmp_path / "scores")["scored_at"])
    assert stored == {pd.Timestamp("2024-06-01 12:00:00.25")}


@pytest.mark.slow
def test_killed_scoring_process_leaves_output_unchanged(spark, detector, tables, tmp_path):
    output = tmp_path / "scores"
    joined, _ = read_and_join(spark, {m.name: str(tables / m.name) for m in MODALITIES})
    score_to_delta(spark, joined, str(output), detector, model_name="m", model_version="1",
                   scoring_run_id="run-a")
    before, version = read_scores(output), DeltaTable(str(output)).version()
    directories = set(os.listdir(output))
    detector.save(str(tmp_path / "model"))
    process = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "model"), str(tables), str(output),
         "run-b"], capture_output=True, text=True, timeout=240,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    assert process.returncode == 17, process.stderr[-2000:]
    leftover = set(os.listdir(output)) - directories    # Parquet written, never committed
    assert len(leftover) == 1 and any(f.endswith(".parquet")
                                      for f in os.listdir(output / leftover.pop()))
    assert DeltaTable(str(output)).version() == version
    pd.testing.assert_frame_equal(read_scores(output), before)
    score_to_delta(spark, joined, str(output), detector, model_name="m", model_version="1",
                   scoring_run_id="run-b")
    scored = read_scores(output)
    assert scored.groupby("scoring_run_id")["id"].nunique().to_dict() == {
        "run-a": len(before), "run-b": len(before)}
    assert len(scored) == 2 * len(before)
