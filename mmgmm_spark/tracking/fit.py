"""A fit as one MLflow run: parameters, per-iteration metrics, final metrics, plots, model.

In memory (dict of (n, d_m) arrays) or on Spark (a DataFrame, or already cached blocks); the
training threshold is computed on the same data (exactly, without collecting scores on Spark).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.em import IterationReport
from mmgmm_spark.detector import AnomalyDetector, modality_column
from mmgmm_spark.model import MultimodalGaussianMixture, _is_spark_dataframe
from mmgmm_spark.tracking import plots
from mmgmm_spark.tracking.config import TrackingConfig, tracking
from mmgmm_spark.tracking.pyfunc import input_example, log_detector
from mmgmm_spark.tracking.registry import ChampionDecision, promote_if_not_worse

PLOT_ROWS = 20_000


class MetricLogger:
    """``on_iteration`` callback logging each EM iteration at ``step=iteration``.

    Metrics: ``mean_log_likelihood``, ``log_likelihood_change`` (from iteration 2; the first
    change is infinite) and ``iteration_seconds``. With ``n_init > 1`` every restart r gets
    the prefix ``init_<r>/``.
    """

    def __init__(self, client: MlflowClient, run_id: str, n_init: int = 1) -> None:
        self.client = client
        self.run_id = run_id
        self.n_init = n_init
        self.restart = -1

    def __call__(self, report: IterationReport) -> None:
        if report.iteration == 1:
            self.restart += 1
        prefix = f"init_{self.restart}/" if self.n_init > 1 else ""
        now = int(time.time() * 1000)
        values = {"mean_log_likelihood": report.mean_log_likelihood,
                  "log_likelihood_change": report.change, "iteration_seconds": report.seconds}
        metrics = [Metric(prefix + key, float(value), now, report.iteration)
                   for key, value in values.items() if math.isfinite(value)]
        self.client.log_batch(self.run_id, metrics=metrics)


def model_params(model: MultimodalGaussianMixture, contamination: float) -> dict[str, Any]:
    """Modalities (dim, covariance type, fusion weight) and hyperparameters as run params."""
    params: dict[str, Any] = {
        "modalities": ",".join(m.name for m in model.modalities),
        "n_components": model.n_components, "tol": model.tol, "reg_covar": model.reg_covar,
        "max_iter": model.max_iter, "n_init": model.n_init, "init_params": model.init_params,
        "random_state": model.random_state if isinstance(model.random_state, int) else None,
        "contamination": contamination,
    }
    for m in model.modalities:
        params.update({f"modality.{m.name}.dim": m.dim,
                       f"modality.{m.name}.covariance_type": m.covariance_type,
                       f"modality.{m.name}.weight": m.weight})
    return params


def table_params(table_versions: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Params ``table_version.<key>`` (and ``table.<key>``) plus a JSON tag of all tables read.

    Values are Delta versions (int) or :class:`mmgmm_spark.storage.TableRead` objects.
    """
    params: dict[str, Any] = {}
    document = {}
    for key, value in table_versions.items():
        version = int(getattr(value, "version", value))
        params[f"table_version.{key}"] = version
        entry: dict[str, Any] = {"version": version}
        if hasattr(value, "table"):
            params[f"table.{key}"] = value.table
            entry["table"] = value.table
        document[key] = entry
    return params, {"mmgmm.delta_tables": json.dumps(document, sort_keys=True)}


def information_criteria(mean_log_likelihood: float, n_rows: int,
                         n_parameters: int) -> dict[str, float]:
    """BIC and AIC from the mean log-likelihood of n rows (lower is better)."""
    deviance = -2.0 * mean_log_likelihood * n_rows
    return {"bic": deviance + n_parameters * math.log(n_rows),
            "aic": deviance + 2.0 * n_parameters}


@dataclass
class FitRun:
    """A tracked fit.

    Attributes:
        run_id: the MLflow run.
        detector: the fitted detector (threshold set).
        metrics: the final metrics logged.
        model_uri: the logged model (``models:/m-...``) or None.
        model_version: registered version or None.
        decision: the champion check, or None when not registered.
    """

    run_id: str
    detector: AnomalyDetector
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    model_version: str | None = None
    decision: ChampionDecision | None = None


@dataclass
class _Trained:
    detector: AnomalyDetector
    n_rows: int
    mean_log_likelihood: float
    sample: Batch  # rows for plots and the input example
    data_path: str


def _fit_in_memory(model: MultimodalGaussianMixture, data: Mapping[str, np.ndarray],
                   contamination: float, logger: MetricLogger) -> _Trained:
    model.fit(data, on_iteration=logger)
    batch = model._batch(data)
    scores = -model.score_samples(data)
    detector = AnomalyDetector(model, contamination)
    detector.set_threshold(scores)
    if batch.n_rows > PLOT_ROWS:
        batch = batch.take(np.random.default_rng(0).choice(batch.n_rows, PLOT_ROWS, False))
    return _Trained(detector, len(scores), float(-scores.mean()), batch, "in-memory")


def _fit_on_spark(model: MultimodalGaussianMixture, data: Any, contamination: float,
                  logger: MetricLogger, spark_options: dict[str, Any]) -> _Trained:
    from mmgmm_spark.spark.data import CachedBlocks
    from mmgmm_spark.spark.score import fit_detector

    owned = not isinstance(data, CachedBlocks)
    cache_keys = ("source", "rows_per_block", "use_rdd")
    cached = data if not owned else CachedBlocks(
        data, model.modalities, spark_options.get("source", "DataFrame"),
        spark_options.get("rows_per_block", 65_536), spark_options.get("use_rdd"))
    fit_options = {k: v for k, v in spark_options.items() if k not in cache_keys}
    try:
        detector, scores = fit_detector(model, cached, contamination, on_iteration=logger,
                                        **fit_options)
        sample = cached.sample(PLOT_ROWS, seed=0)
    finally:
        if owned:
            cached.unpersist()
    return _Trained(detector, scores.n_rows, scores.mean_log_likelihood, sample, "spark")


def _log_plots(detector: AnomalyDetector, sample: Batch) -> None:
    model = detector.model
    columns = detector.score_batch(sample)
    figures = {
        "plots/convergence.png": plots.convergence_curve(model.lower_bounds_),
        "plots/component_weights.png": plots.component_weights(model.weights_),
        "plots/score_histogram.png": plots.score_histogram(columns["anomaly_score"],
                                                           detector.threshold),
        "plots/top_anomalies_by_modality.png": plots.modality_contributions(
            columns["anomaly_score"],
            {m.name: columns[modality_column(m.name)] for m in model.modalities}),
    }
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plt.close(figure)


def final_metrics(trained: _Trained) -> dict[str, float]:
    """Lower bound, final mean log-likelihood, BIC, AIC, iterations, convergence, weights."""
    model = trained.detector.model
    return {
        "lower_bound": float(model.lower_bound_),
        "final_mean_log_likelihood": trained.mean_log_likelihood,
        **information_criteria(trained.mean_log_likelihood, trained.n_rows, model.n_parameters()),
        "n_iter": float(model.n_iter_), "converged": float(model.converged_),
        "min_component_weight": float(model.weights_.min()),
        "n_collapsed_components": float(len(model.collapsed_components_)),
        "n_parameters": float(model.n_parameters()),
        "threshold": float(trained.detector.threshold),
    }


def register_detector(config: TrackingConfig, detector: AnomalyDetector, sample: Batch,
                      holdout: Mapping[str, np.ndarray] | None, run_id: str
                      ) -> tuple[str, str | None, ChampionDecision | None]:
    """Log the detector to the active run, register it, run the champion check.

    Returns (model URI, registered version or None, decision or None).
    """
    example = input_example({m.name: sample.blocks[m.name].dense()
                             for m in detector.modalities})
    with tempfile.TemporaryDirectory() as staging:
        info = log_detector(detector, example, registered_model_name=config.registered_model_name,
                            staging_dir=staging)
    if not config.registered_model_name:
        return info.model_uri, None, None
    client = config.client()
    version = str(info.registered_model_version)
    decision = promote_if_not_worse(client, config.registered_model_name, version, config.alias,
                                    detector, holdout)
    metrics = {"holdout_mean_log_likelihood": decision.candidate_score,
               "champion_holdout_mean_log_likelihood": decision.champion_score}
    mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
    mlflow.set_tags({"registered_model": config.registered_model_name,
                     "registered_version": version, "champion_check": decision.reason,
                     f"promoted_to_{config.alias}": str(decision.promoted).lower()})
    return info.model_uri, version, decision


def tracked_fit(model: MultimodalGaussianMixture, data: Any, *, contamination: float = 0.01,
                config: TrackingConfig | None = None,
                table_versions: Mapping[str, Any] | None = None,
                holdout: Mapping[str, np.ndarray] | None = None, run_name: str | None = None,
                log_model: bool = True, nested: bool = False,
                **spark_options: Any) -> FitRun:
    """Fit ``model`` as one MLflow run and (optionally) log and register the detector.

    Args:
        model: the estimator (unfitted), carrying modalities and hyperparameters.
        data: dict of (n, d_m) arrays, a Spark DataFrame (one column per modality), or
            :class:`mmgmm_spark.spark.data.CachedBlocks` (the caller unpersists them).
        contamination: fraction of training rows above the anomaly threshold.
        config: tracking store, experiment, registered name and alias (default settings).
        table_versions: Delta versions read, {key: int | TableRead}, logged as params/tags.
        holdout: dict of (n_h, d_m) arrays for the champion check.
        run_name: MLflow run name.
        log_model: log the pyfunc model (and register it when the config names one).
        nested: start the run nested in the active run (model-selection candidates).
        spark_options: ``source``, ``rows_per_block``, ``use_rdd``, ``tree_depth``,
            ``init_sample_rows`` for the Spark path.
    """
    config = config or TrackingConfig()
    with tracking(config) as experiment_id, mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, nested=nested) as run:
        run_id = run.info.run_id
        client = config.client()
        params, tags = table_params(table_versions or {})
        mlflow.log_params({**model_params(model, contamination), **params})
        mlflow.set_tags(tags)
        logger = MetricLogger(client, run_id, model.n_init)
        if _is_spark_dataframe(data) or type(data).__name__ == "CachedBlocks":
            trained = _fit_on_spark(model, data, contamination, logger, spark_options)
        else:
            trained = _fit_in_memory(model, data, contamination, logger)
        mlflow.log_params({"n_rows": trained.n_rows, "data_path": trained.data_path})
        metrics = final_metrics(trained)
        mlflow.log_metrics(metrics)
        _log_plots(trained.detector, trained.sample)
        result = FitRun(run_id, trained.detector, metrics)
        if log_model:
            result.model_uri, result.model_version, result.decision = register_detector(
                config, trained.detector, trained.sample, holdout, run_id)
        return result
