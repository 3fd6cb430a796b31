"""Checkpoints and resume: a fit whose driver was killed resumes and ends equal to an
uninterrupted one (same iterations, same lower-bound history, same parameters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.core.em import run_em
from mmgmm_spark.core.stats import accumulate_stats
from mmgmm_spark.io.checkpoints import Checkpointer, load_checkpoint
from mmgmm_spark.models.mixture import resume_fit

MODALITIES = [Modality("image", 4, "full"), Modality("text", 3, "diag")]
K = 3
SCRIPT = Path(__file__).parent / "scripts" / "fit_then_die.py"


class InterruptedFitError(Exception):
    """Stands for a crash inside the fit (in-process tests)."""


@pytest.fixture(scope="module")
def data():
    return generate(1500, tuple(MODALITIES), n_clusters=K, seed=21).features


@pytest.fixture(scope="module")
def start(data):
    first = MultimodalGaussianMixture(MODALITIES, K, max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.fit(data, on_iteration=None)
    return {"weights_init": first.weights_, "means_init": first.means_,
            "precisions_init": first.precisions_}


def fixed_model(start, max_iter=8) -> MultimodalGaussianMixture:
    return MultimodalGaussianMixture(MODALITIES, K, tol=0.0, max_iter=max_iter, random_state=0,
                                     **start)


def restarts_model() -> MultimodalGaussianMixture:
    return MultimodalGaussianMixture(MODALITIES, K, tol=1e-6, max_iter=40, n_init=3,
                                     init_params="random", random_state=5)


def uninterrupted(model: MultimodalGaussianMixture, data) -> MultimodalGaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(data, on_iteration=None)


def assert_same_fit(fitted, ref) -> None:
    """Same number of iterations, lower bounds and parameters to relative 1e-9."""
    assert fitted.n_iter_ == ref.n_iter_ and fitted.converged_ == ref.converged_
    np.testing.assert_allclose(fitted.lower_bounds_, ref.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(fitted.weights_, ref.weights_, rtol=1e-9)
    for m in MODALITIES:
        np.testing.assert_allclose(fitted.means_[m.name], ref.means_[m.name], rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(fitted.covariances_[m.name], ref.covariances_[m.name],
                                   rtol=1e-9, atol=1e-12)


def crash_at(restart: int, iteration: int):
    state = {"restart": -1}

    def callback(report) -> None:
        state["restart"] += report.iteration == 1
        if (state["restart"], report.iteration) == (restart, iteration):
            raise InterruptedFitError

    return callback


def test_run_em_continues_from_a_history(data, start):
    """run_em(history=first 3 bounds, initial=params after 3) == 8 uninterrupted iterations."""
    model = fixed_model(start)
    batch = model.to_batch(data)
    stats_pass = lambda p: accumulate_stats(batch, p, model.modalities)  # noqa: E731
    initial = model.initial_params(batch, np.random.RandomState(0))
    full = run_em(stats_pass, initial, model.modalities, model.reg_covar, 0.0, 8)
    part = run_em(stats_pass, initial, model.modalities, model.reg_covar, 0.0, 3)
    rest = run_em(stats_pass, part.params, model.modalities, model.reg_covar, 0.0, 8,
                  history=part.lower_bounds)
    assert rest.n_iter == 8
    np.testing.assert_allclose(rest.lower_bounds, full.lower_bounds, rtol=1e-12)
    np.testing.assert_allclose(rest.params.weights, full.params.weights, rtol=1e-12)


@pytest.mark.parametrize("crash", [(0, 4), (1, 1), (1, 6), (2, 3)],
                         ids=["first-restart", "restart-start", "mid-restart", "last-restart"])
def test_resume_across_restarts_with_random_init(tmp_path, data, crash):
    """n_init=3 random initialisations: the generator state is checkpointed, so later
    restarts draw the same initial parameters as an uninterrupted fit."""
    ref = uninterrupted(restarts_model(), data)
    model = restarts_model()
    with pytest.raises(InterruptedFitError):
        model.fit(data, checkpointer=Checkpointer(str(tmp_path), model),
                             on_iteration=crash_at(*crash))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = resume_fit(restarts_model(), data, str(tmp_path), on_iteration=None)
    assert_same_fit(resumed, ref)


def test_resume_from_a_finished_checkpoint_runs_no_iteration(tmp_path, data, start):
    model = fixed_model(start, max_iter=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, checkpointer=Checkpointer(str(tmp_path), model), on_iteration=None)
        calls = []
        resumed = resume_fit(fixed_model(start, max_iter=4), data, str(tmp_path),
                             on_iteration=calls.append)
    assert calls == []
    assert_same_fit(resumed, model)


def write_spec(path: Path, data, start=None, **spec) -> Path:
    arrays = {f"x_{k}": v for k, v in data.items()}
    if start is not None:
        arrays["weights_init"] = start["weights_init"]
        for m in MODALITIES:
            arrays[f"means_init_{m.name}"] = start["means_init"][m.name]
            arrays[f"precisions_init_{m.name}"] = start["precisions_init"][m.name]
    defaults = {"modalities": [m.to_dict() for m in MODALITIES], "n_components": K,
                "max_iter": 8, "tol": 0.0, "n_init": 1, "init_params": "kmeans",
                "random_state": 0, "partitions": 2}
    np.savez(path, spec=json.dumps(defaults | spec), **arrays)
    return path


def fit_then_die(tmp_path: Path, data_file: Path, checkpoints: Path, kill_after: int,
                 *extra: str) -> None:
    """Run the fit in a fresh process that SIGKILLs itself at iteration ``kill_after``."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(data_file), str(checkpoints),
                           "--kill-after", str(kill_after), *extra],
                          env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-3000:]


def test_in_memory_fit_resumes_after_the_driver_is_killed(tmp_path, data, start):
    checkpoints = tmp_path / "checkpoints"
    fit_then_die(tmp_path, write_spec(tmp_path / "data.npz", data, start), checkpoints, 5)
    checkpoint = load_checkpoint(str(checkpoints), fixed_model(start))
    assert checkpoint.iterations == 4      # killed while reporting iteration 5
    resumed = resume_fit(fixed_model(start), data, str(checkpoints), on_iteration=None)
    with pytest.warns(UserWarning):
        ref = fixed_model(start).fit(data, on_iteration=None)
    assert_same_fit(resumed, ref)


@pytest.mark.slow
@pytest.mark.spark
def test_spark_fit_resumes_after_the_driver_is_killed(spark, tmp_path, data, start):
    """Driver (and its local Spark) killed at iteration 4 of 8; resumed on another session."""
    from mmgmm_spark.spark.arrow import arrow_table

    checkpoints = tmp_path / "checkpoints"
    fit_then_die(tmp_path, write_spec(tmp_path / "data.npz", data, start), checkpoints, 4,
                 "--master", "local[1]")
    df = spark.createDataFrame(arrow_table(data)).repartition(2)
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = resume_fit(fixed_model(start), df, str(checkpoints), on_iteration=calls.append)
        ref = fixed_model(start).fit(data, on_iteration=None)
    assert [r.iteration for r in calls] == [4, 5, 6, 7, 8]
    assert_same_fit(resumed, ref)


def test_tracked_fit_resumes_the_same_run(tmp_path, data, start):
    """Killed after logging iteration 5's metrics but before its checkpoint; resumed from the
    run's artefact (local copy deleted): one run, steps 1..8 once each, equal parameters."""
    from mmgmm_spark.tracking import TrackingConfig, tracked_fit

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    work, checkpoints = tmp_path / "work", tmp_path / "work" / "checkpoints"
    fit_then_die(tmp_path, write_spec(tmp_path / "data.npz", data, start), checkpoints, 5,
                 "--work-dir", str(work))
    (run_id,) = os.listdir(checkpoints)
    for leftover in (checkpoints / run_id).iterdir():
        leftover.unlink()                      # resume from the run's artefact copy
    config = TrackingConfig(work_dir=str(work), experiment="resume",
                            registered_model_name=None)
    client = config.client()
    assert client.get_run(run_id).info.status == "RUNNING"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = tracked_fit(fixed_model(start), data, config=config,
                             checkpoint_dir=str(checkpoints), resume_run_id=run_id,
                             log_model=False)
        ref = fixed_model(start).fit(data, on_iteration=None)
    assert result.run_id == run_id
    assert_same_fit(result.detector.model, ref)
    history = sorted(client.get_metric_history(run_id, "mean_log_likelihood"),
                     key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 9))
    np.testing.assert_allclose([m.value for m in history], ref.lower_bounds_, rtol=1e-9)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["n_iter"] == 8
    assert not (checkpoints / run_id).exists()
    artefacts = [a.path for a in client.list_artifacts(run_id, "checkpoint")]
    assert artefacts == ["checkpoint/checkpoint.npz"]
