"""Faults: a killed executor, racing scoring writers, and a failing tracking server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable
from mlflow import MlflowClient

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.tracking.reliability import ModelNotLoggedError, RetryPolicy

MODALITIES = [Modality("image", 4, "full"), Modality("text", 3, "diag")]
K = 3
SCRIPTS = Path(__file__).parent / "scripts"
FAST_RETRY = RetryPolicy(attempts=3, initial_delay=0.0)


@pytest.fixture(scope="module")
def data():
    return generate(1200, tuple(MODALITIES), n_clusters=K, seed=17).features


# ------------------------------------------------------------------------ executor killed
@pytest.mark.slow
def test_fit_survives_an_executor_killed_mid_fit(tmp_path, data):
    """local-cluster[2,1,1024], one executor JVM SIGKILLed after iteration 2 of 6: its cached
    blocks are recomputed from lineage and the fit equals the in-memory fit (1e-9)."""
    first = MultimodalGaussianMixture(MODALITIES, K, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.fit(data, on_iteration=None)
    start = {"weights_init": first.weights_, "means_init": first.means_,
             "precisions_init": first.precisions_}
    arrays = {f"x_{k}": v for k, v in data.items()} | {"weights_init": start["weights_init"]}
    for m in MODALITIES:
        arrays[f"means_init_{m.name}"] = start["means_init"][m.name]
        arrays[f"precisions_init_{m.name}"] = start["precisions_init"][m.name]
    spec = {"modalities": [m.to_dict() for m in MODALITIES], "n_components": K, "max_iter": 6,
            "tol": 0.0, "n_init": 1, "init_params": "kmeans", "random_state": 0, "partitions": 4}
    np.savez(tmp_path / "data.npz", spec=json.dumps(spec), **arrays)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([sys.executable, str(SCRIPTS / "fit_kill_executor.py"),
                           str(tmp_path / "data.npz"), str(tmp_path / "out.npz")],
                          env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert len(out["killed"]) == 1 and out["killed"][0] not in out["alive_after"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = MultimodalGaussianMixture(MODALITIES, K, tol=0.0, max_iter=6, random_state=0,
                                        **start).fit(data, on_iteration=None)
    np.testing.assert_allclose(out["lower_bounds"], ref.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(out["weights"], ref.weights_, rtol=1e-9)
    for m in MODALITIES:
        np.testing.assert_allclose(out[f"means_{m.name}"], ref.means_[m.name], rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(out[f"covariances_{m.name}"], ref.covariances_[m.name],
                                   rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------- racing scoring writers
@pytest.fixture(scope="module")
def detector(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AnomalyDetector.fit(MultimodalGaussianMixture(MODALITIES, K, random_state=0),
                                   data, contamination=0.05)


def commits_meet_at_a_barrier(monkeypatch) -> list[str]:
    """Make each thread's first commit wait for the other's: both commit on stale snapshots."""
    from mmgmm_spark.storage.engines import delta_rs

    barrier = threading.Barrier(2, timeout=120)
    seen: set[int] = set()
    calls: list[str] = []
    lock = threading.Lock()

    def meet(name, original):
        def wrapper(*args, **kwargs):
            with lock:
                first = threading.get_ident() not in seen
                seen.add(threading.get_ident())
                calls.append(name)
            if first:
                barrier.wait()
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(delta_rs, "create_table_with_add_actions",
                        meet("create", delta_rs.create_table_with_add_actions))
    monkeypatch.setattr(DeltaTable, "create_write_transaction",
                        meet("commit", DeltaTable.create_write_transaction))
    return calls


def race(spark, data, detector, table, run_ids) -> list:
    from mmgmm_spark.spark.arrow import arrow_table
    from mmgmm_spark.spark.score import score_to_delta

    df = spark.createDataFrame(arrow_table(data))
    results, errors = {}, []

    def job(run_id: str) -> None:
        try:
            results[run_id] = score_to_delta(spark, df, str(table), detector, model_name="m",
                                             model_version="1", scoring_run_id=run_id,
                                             engine="delta-rs")
        except BaseException as error:  # reported by the test
            errors.append(error)

    threads = [threading.Thread(target=job, args=(r,)) for r in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    return [results[r] for r in run_ids]


@pytest.mark.spark
@pytest.mark.parametrize("existing", [False, True], ids=["new-table", "re-run-both"])
def test_two_scoring_jobs_racing_on_one_table_both_land(spark, data, detector, tmp_path,
                                                        monkeypatch, existing):
    """Two scoring runs commit at the same time (forced by a barrier): the loser retries on
    a fresh snapshot; each run's rows are in the table exactly once."""
    from mmgmm_spark.spark.arrow import arrow_table
    from mmgmm_spark.spark.score import score_to_delta

    table = tmp_path / "scores"
    if existing:   # both runs already scored once: the race replaces disjoint predicates
        df = spark.createDataFrame(arrow_table(data))
        for run_id in ("a", "b"):
            score_to_delta(spark, df, str(table), detector, model_name="m", model_version="1",
                           scoring_run_id=run_id, engine="delta-rs")
    calls = commits_meet_at_a_barrier(monkeypatch)
    first, second = race(spark, data, detector, table, ["a", "b"])
    # re-run: one commit lost the race and was retried on a fresh snapshot. New table: both
    # CREATEs met at the barrier; delta-rs either lands the second as version 1 (same schema)
    # or rejects it, and then it is retried as a commit on the table the winner created
    if existing:
        assert calls == ["commit", "commit", "commit"]
    else:
        assert calls in (["create", "create"], ["create", "create", "commit"])
    assert first.version != second.version
    rows = DeltaTable(str(table)).to_pandas()
    n = len(data["image"])
    assert rows.groupby("scoring_run_id").size().to_dict() == {"a": n, "b": n}
    expected = detector.model.score_samples(data)
    for run_id in ("a", "b"):
        part = rows[rows.scoring_run_id == run_id].sort_values("id")
        np.testing.assert_array_equal(part["id"], np.arange(n))
        np.testing.assert_allclose(part["log_likelihood"], expected, rtol=0, atol=1e-12)
    assert not [d for d in os.listdir(table) if d.endswith("-kept")]


# -------------------------------------------------------------- failing tracking server
@pytest.fixture()
def config(tmp_path):
    from mmgmm_spark.tracking import TrackingConfig

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return TrackingConfig(work_dir=str(tmp_path / "work"), experiment="faults",
                          registered_model_name="faults-detector")


def failing(times: int | None, original=None):
    """A replacement failing with ConnectionError ``times`` times (None: always), then
    calling ``original``."""
    state = {"calls": 0}

    def call(*args, **kwargs):
        state["calls"] += 1
        if times is None or state["calls"] <= times:
            raise ConnectionError("tracking server unreachable")
        return original(*args, **kwargs)

    call.state = state
    return call


def fresh_model() -> MultimodalGaussianMixture:
    return MultimodalGaussianMixture(MODALITIES, K, random_state=0, tol=1e-4)


def test_transient_tracking_failures_are_retried(config, data, monkeypatch):
    """Metric logging fails during the fit and the model logging fails twice: all of it is
    logged in the end (pending metrics included), nothing is saved locally."""
    import mmgmm_spark.tracking.fit as tracking_fit
    from mmgmm_spark.tracking import tracked_fit

    original = MlflowClient.log_batch
    metric_failures = failing(4, original)

    def log_batch(self, run_id, metrics=(), *args, **kwargs):
        if metrics and not kwargs.get("params"):   # the per-iteration EM metrics
            return metric_failures(self, run_id, metrics, *args, **kwargs)
        return original(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)
    monkeypatch.setattr(tracking_fit, "ITERATION_RETRY", RetryPolicy(1))
    register = failing(2, tracking_fit.register_detector)
    monkeypatch.setattr(tracking_fit, "register_detector", register)
    run = tracked_fit(fresh_model(), data, contamination=0.05, config=config, retry=FAST_RETRY)
    assert metric_failures.state["calls"] > 4      # some iterations' metrics were delayed
    assert register.state["calls"] == 3 and run.model_version == "1"
    history = config.client().get_metric_history(run.run_id, "mean_log_likelihood")
    assert sorted(m.step for m in history) == list(range(1, run.detector.model.n_iter_ + 1))
    assert not os.path.exists(os.path.join(config.work_dir, "unlogged"))


def test_model_is_saved_locally_when_the_tracking_server_stays_down(config, data,
                                                                      monkeypatch, caplog):
    """The server goes away at the end of the fit (model logging and ending the run fail):
    the error names a local directory holding the detector, which scores identically."""
    import mmgmm_spark.tracking.fit as tracking_fit
    from mmgmm_spark.tracking import tracked_fit

    monkeypatch.setattr(tracking_fit, "register_detector", failing(None))
    monkeypatch.setattr(MlflowClient, "set_terminated", failing(None))
    with pytest.raises(ModelNotLoggedError) as caught:
        tracked_fit(fresh_model(), data, contamination=0.05, config=config, retry=FAST_RETRY)
    path = caught.value.path
    assert path.startswith(os.path.abspath(os.path.join(config.work_dir, "unlogged")))
    assert path in str(caught.value) and path in caplog.text
    recovered = AnomalyDetector.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = AnomalyDetector.fit(fresh_model(), data, contamination=0.05)
    got, want = recovered.score(data), reference.score(data)
    for column in want:
        np.testing.assert_allclose(got[column], want[column], rtol=1e-12, atol=1e-12)
    assert recovered.threshold == pytest.approx(reference.threshold, rel=1e-12)
    with open(os.path.join(path, "run.json")) as f:
        assert json.load(f)["run_id"] == caught.value.run_id
