"""MLflow tracking (local SQLite store): runs, registry, champion alias, sweep, evaluation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.mixture import GaussianMixture

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.models.evaluation import evaluate_scores, log_evaluation
from mmgmm_spark.tracking import TrackingConfig, select_model, tracked_fit

MODALITIES = [Modality("image", 4, "full"), Modality("text", 3, "diag")]
NAME = "test-detector"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return TrackingConfig(work_dir=str(tmp_path_factory.mktemp("mlflow")), experiment="tests",
                          registered_model_name=NAME)


@pytest.fixture(scope="module")
def data():
    """1,000 training rows and 400 hold-out rows, ~10% missing one modality."""
    generated = generate(1400, tuple(MODALITIES), n_clusters=3, seed=3)
    train = {k: v[:1000] for k, v in generated.features.items()}
    holdout = {k: v[1000:] for k, v in generated.features.items()}
    return train, holdout, generated.is_anomaly[1000:]


@pytest.fixture(scope="module")
def first_fit(config, data):
    train, holdout, _ = data
    model = MultimodalGaussianMixture(MODALITIES, 3, random_state=0, tol=1e-4)
    return tracked_fit(model, train, contamination=0.05, config=config, holdout=holdout,
                       table_versions={"image": 3, "text": 5}, run_name="first")


def test_run_records_parameters_metrics_and_plots(config, data, first_fit):
    train, _, _ = data
    client, model = config.client(), first_fit.detector.model
    run = client.get_run(first_fit.run_id)
    params = run.data.params
    assert params["modality.image.dim"] == "4" and params["modality.text.covariance_type"] == "diag"
    assert params["n_components"] == "3" and params["n_rows"] == "1000"
    assert params["table_version.image"] == "3" and params["table_version.text"] == "5"
    assert json.loads(run.data.tags["mmgmm.delta_tables"]) == {"image": {"version": 3},
                                                                "text": {"version": 5}}
    history = client.get_metric_history(first_fit.run_id, "mean_log_likelihood")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
        range(1, model.n_iter_ + 1))
    np.testing.assert_allclose([m.value for m in sorted(history, key=lambda m: m.step)],
                               model.lower_bounds_, rtol=1e-12)
    assert len(client.get_metric_history(first_fit.run_id, "iteration_seconds")) == model.n_iter_
    metrics = run.data.metrics
    np.testing.assert_allclose(metrics["bic"], model.bic(train), rtol=1e-10)
    np.testing.assert_allclose(metrics["aic"], model.aic(train), rtol=1e-10)
    assert metrics["n_iter"] == model.n_iter_ and metrics["converged"] == 1.0
    assert metrics["min_component_weight"] == pytest.approx(model.weights_.min())
    assert metrics["threshold"] == pytest.approx(
        np.quantile(-model.score_samples(train), 0.95), rel=1e-12)
    plots = {a.path for a in client.list_artifacts(first_fit.run_id, "plots")}
    assert plots == {f"plots/{n}.png" for n in ("convergence", "component_weights",
                                                 "score_histogram",
                                                 "top_anomalies_by_modality")}
    assert first_fit.decision.promoted
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == first_fit.model_version


def test_registered_model_in_fresh_process_reproduces_scores(config, data, first_fit, tmp_path):
    _, holdout, _ = data
    np.savez(tmp_path / "rows.npz", **holdout)
    script = textwrap.dedent(f"""
        import numpy as np, pandas as pd, mlflow
        rows = dict(np.load({str(tmp_path / "rows.npz")!r}))
        frame = pd.DataFrame({{k: [None if np.isnan(r).all() else r.tolist() for r in v]
                              for k, v in rows.items()}})
        out = mlflow.pyfunc.load_model("models:/{NAME}@champion").predict(frame)
        np.savez({str(tmp_path / "out.npz")!r}, **{{c: out[c].to_numpy() for c in out}})
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.resolved_uri()}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=180)
    out = np.load(tmp_path / "out.npz")
    model = first_fit.detector.model
    np.testing.assert_allclose(out["log_likelihood"], model.score_samples(holdout), rtol=0,
                               atol=1e-12)
    np.testing.assert_array_equal(out["cluster"], model.predict(holdout))
    np.testing.assert_array_equal(out["is_anomaly"],
                                  first_fit.detector.score(holdout)["is_anomaly"])
    assert np.isnan(out["text_log_likelihood"]).sum() == np.isnan(holdout["text"]).all(1).sum()
    # nothing is pickled: the model is code + arrays + JSON
    files = {a.path for a in config.client().list_artifacts(first_fit.run_id)}
    assert not any(p.endswith(".pkl") for p in files)


def test_every_em_iteration_is_a_debug_line_and_info_every_tenth(config, data, caplog):
    model = MultimodalGaussianMixture(MODALITIES, 2, random_state=0, tol=0.0, max_iter=23)
    with caplog.at_level(logging.DEBUG, logger="mmgmm_spark.models.mixture"):
        tracked_fit(model, data[0], config=config, log_model=False)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if "EM iteration" in r.getMessage()]
    debug = [m.split(":")[0] for level, m in lines if level == logging.DEBUG]
    info = [m for level, m in lines if level == logging.INFO]
    assert len(debug) + len(info) - 1 == 23     # every iteration once, plus the final line
    assert [m.split(":")[0] for m in info] == [
        "EM iteration 1", "EM iteration 10", "EM iteration 20",
        "EM iteration 23 (last, max_iter reached)"]
    assert not {f"EM iteration {i}" for i in (1, 10, 20)} & set(debug)
    assert f"mean log-likelihood {model.lower_bounds_[-1]:.6f}" in info[-1]


def test_champion_alias_moves_only_when_not_worse(config, data, first_fit):
    train, holdout, _ = data
    client = config.client()
    worse = MultimodalGaussianMixture(MODALITIES, 1, random_state=0)
    result = tracked_fit(worse, train, contamination=0.05, config=config, holdout=holdout)
    assert not result.decision.promoted
    assert result.decision.candidate_score == pytest.approx(worse.score(holdout))
    assert result.decision.champion_score == pytest.approx(
        first_fit.detector.model.score(holdout))
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == first_fit.model_version
    assert client.get_model_version(NAME, result.model_version).tags["champion_check"] == "failed"
    # the same configuration again is not worse (equal): the alias moves
    same = MultimodalGaussianMixture(MODALITIES, 3, random_state=0, tol=1e-4)
    again = tracked_fit(same, train, contamination=0.05, config=config, holdout=holdout)
    assert again.decision.promoted
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == again.model_version

    # Other covariance types read the same inputs: compared on held-out rows like any model.
    full = [Modality("image", 4, "full"), Modality("text", 3, "full")]
    other = tracked_fit(MultimodalGaussianMixture(full, 3, random_state=0), train,
                        contamination=0.05, config=config, holdout=holdout).decision
    assert other.champion_score == pytest.approx(same.score(holdout))
    assert other.reason.startswith("held-out mean log-likelihood")
    # Fusion weights scale the density: not comparable, the alias stays.
    weighted = [Modality("image", 4, "full", weight=2.0), Modality("text", 3, "diag")]
    skipped = tracked_fit(MultimodalGaussianMixture(weighted, 3, random_state=0), train,
                          contamination=0.05, config=config, holdout=holdout).decision
    assert not skipped.promoted and skipped.champion_score is None
    assert skipped.reason.startswith("champion has different fusion weights ([1.0, 1.0], "
                                     "candidate [2.0, 1.0])")


def test_sweep_selects_bic_minimum_like_sklearn(config):
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = np.vstack([rng.normal(c, 1.0, size=(200, 2)) for c in centres])
    ks = [2, 3, 4]
    reference = {k: GaussianMixture(k, covariance_type="full", tol=1e-3, max_iter=200,
                                    random_state=0).fit(x).bic(x) for k in ks}
    result = select_model({"xy": x}, [Modality("xy", 2, "full")], ks,
                          covariance_types=[{"xy": "full"}, {"xy": "spherical"}],
                          config=config, register=False,
                          model_options={"tol": 1e-3, "max_iter": 200, "random_state": 0})
    full = {c.n_components: c.bic for c in result.candidates if c.covariance_types["xy"] == "full"}
    assert result.best.n_components == min(reference, key=reference.get) == 3
    np.testing.assert_allclose([full[k] for k in ks], [reference[k] for k in ks], rtol=1e-3)
    client = config.client()
    parent = client.get_run(result.run_id)
    assert parent.data.params["best_n_components"] == "3"
    assert parent.data.metrics["best_bic"] == pytest.approx(result.best.bic)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(children) == 2 * len(ks)
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {
        "plots/bic_vs_k.png"}
    # the winner's drift reference, on the parent run (the registered model's run)
    reference = json.loads(Path(client.download_artifacts(
        result.run_id, "drift/reference.json")).read_text())["columns"]["anomaly_score"]
    scores = -result.best_fit.detector.model.score_samples({"xy": x})
    np.testing.assert_array_equal(reference["counts"], np.bincount(
        np.searchsorted(reference["edges"], scores, side="right"),
        minlength=len(reference["edges"]) + 1))


def test_evaluation_matches_independent_references(config, data, first_fit):
    _, holdout, labels = data
    scores = first_fit.detector.score(holdout)["anomaly_score"]
    threshold = first_fit.detector.threshold
    metrics = evaluate_scores(labels, scores, threshold)
    positives, negatives = scores[labels], scores[~labels]
    u = mannwhitneyu(positives, negatives).statistic
    assert metrics["auroc"] == pytest.approx(u / (len(positives) * len(negatives)), rel=1e-12)
    order = np.argsort(-scores, kind="stable")          # no ties among continuous scores
    hits = labels[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    assert metrics["average_precision"] == pytest.approx(precision_at_k[hits].mean(), rel=1e-12)
    flagged = scores > threshold
    assert metrics["precision_at_threshold"] == pytest.approx(
        (flagged & labels).sum() / flagged.sum())
    assert metrics["recall_at_threshold"] == pytest.approx((flagged & labels).sum() / labels.sum())
    log_evaluation(metrics, run_id=first_fit.run_id, client=config.client())
    logged = config.client().get_run(first_fit.run_id).data.metrics
    assert logged["eval_auroc"] == pytest.approx(metrics["auroc"])


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = TrackingConfig(work_dir=str(tmp_path))
    assert default.resolved_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert default.resolved_uri() == "http://127.0.0.1:1"
    explicit = TrackingConfig(work_dir=str(tmp_path), tracking_uri="sqlite:///x.db")
    assert explicit.resolved_uri() == "sqlite:///x.db"
