"""A fit as one MLflow run: parameters, per-iteration metrics, final metrics, plots, model.

In memory (dict of (n, d_m) arrays) or on Spark (a DataFrame, or already cached blocks); the
training threshold is computed on the same data (exactly, without collecting scores on Spark).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric
from pyspark.sql import DataFrame

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.drift import DriftReference, reference_from_values
from mmgmm_spark.core.em import IterationReport
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.io.checkpoints import (
    ARTIFACT_DIR,
    FILENAME,
    Checkpoint,
    Checkpointer,
    CheckpointError,
    load_checkpoint,
)
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.fusion import FusionModel, Preprocessing
from mmgmm_spark.models.mixture import (
    MultimodalGaussianMixture,
    information_criteria,
    log_iteration,
)
from mmgmm_spark.models.scores import modality_column
from mmgmm_spark.spark.data import CachedBlocks, cached_blocks
from mmgmm_spark.spark.population import monitored_columns, training_reference
from mmgmm_spark.spark.score import TrainingScores, training_summary, training_threshold
from mmgmm_spark.tracking import plots
from mmgmm_spark.tracking.config import TrackingConfig, tracking
from mmgmm_spark.tracking.drift import log_reference
from mmgmm_spark.tracking.pyfunc import input_example, log_detector
from mmgmm_spark.tracking.registry import ChampionDecision, promote_if_not_worse
from mmgmm_spark.tracking.reliability import (
    ModelNotLoggedError,
    RetryPolicy,
    call_with_retry,
    save_unlogged,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
"""Default checkpoint folder under the work directory (``<work_dir>/checkpoints/<run_id>``)."""
PLOT_ROWS = 20_000
METRICS_PER_BATCH = 1000
ITERATION_RETRY = RetryPolicy(attempts=2, initial_delay=0.5)
"""Per-iteration metrics are retried briefly; what still fails is kept and sent later."""


class MetricLogger:
    """``on_iteration`` callback logging each EM iteration at ``step=iteration``.

    Metrics: ``mean_log_likelihood``, ``log_likelihood_change`` (from iteration 2; the first
    change is infinite) and ``iteration_seconds``. With ``n_init > 1`` every restart r gets
    the prefix ``init_<r>/``.

    A tracking server that does not answer does not stop the fit: each batch is retried per
    ``retry``, then kept in ``pending`` and sent with the next one (or by :meth:`flush`).
    """

    def __init__(self, client: MlflowClient, run_id: str, n_init: int = 1,
                 resume: Checkpoint | None = None, retry: RetryPolicy = ITERATION_RETRY) -> None:
        self.client = client
        self.run_id = run_id
        self.n_init = n_init
        self.restart = -1
        self.retry = retry
        self.pending: list[Metric] = []
        self.logged_through = (-1, 0)  # (restart, iteration) logged before a resume
        if resume is not None:
            self.resume(resume.progress.restart)

    def prefix(self, restart: int) -> str:
        return f"init_{restart}/" if self.n_init > 1 else ""

    def resume(self, restart: int) -> None:
        """Continue the run's numbering in ``restart``, skipping iterations already logged."""
        history = self.client.get_metric_history(
            self.run_id, self.prefix(restart) + "mean_log_likelihood")
        self.restart = restart
        self.logged_through = (restart, max((m.step for m in history), default=0))

    def __call__(self, report: IterationReport) -> None:
        log_iteration(report)
        if report.iteration == 1:
            self.restart += 1
        if (self.restart, report.iteration) <= self.logged_through:
            return  # logged before the interruption (its checkpoint was not written)
        now = int(time.time() * 1000)
        values = {"mean_log_likelihood": report.mean_log_likelihood,
                  "log_likelihood_change": report.change, "iteration_seconds": report.seconds}
        self.pending += [Metric(self.prefix(self.restart) + key, float(value), now,
                                report.iteration)
                         for key, value in values.items() if math.isfinite(value)]
        try:
            self.flush(self.retry)
        except Exception as error:
            log.warning("EM metrics of iteration %d not logged yet (%d kept for later): %s",
                        report.iteration, len(self.pending), error)

    def flush(self, retry: RetryPolicy | None = None) -> None:
        """Send the pending metrics (raises when the server still fails after ``retry``)."""
        while self.pending:
            batch = self.pending[:METRICS_PER_BATCH]
            call_with_retry(lambda b=batch: self.client.log_batch(self.run_id, metrics=b),
                            retry or self.retry, "Logging EM metrics")
            del self.pending[:len(batch)]


def model_params(model: MultimodalGaussianMixture, contamination: float) -> dict[str, Any]:
    """Modalities (dim, covariance type, fusion weight) and hyperparameters as run params."""
    params: dict[str, Any] = {"modalities": ",".join(m.name for m in model.modalities),
                              **model.spec().hyperparameters(), "contamination": contamination}
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


@dataclass
class FitRun:
    """A tracked fit.

    Attributes:
        run_id: the MLflow run.
        detector: the fitted detector (threshold set).
        n_rows: training rows (with row weights: the sum of the weights).
        metrics: the final metrics logged.
        model_uri: the logged model (``models:/m-...``) or None.
        model_version: registered version or None.
        decision: the champion check, or None when not registered.
    """

    run_id: str
    detector: AnomalyDetector
    n_rows: int | float
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    model_version: str | None = None
    decision: ChampionDecision | None = None


@dataclass
class _Trained:
    detector: AnomalyDetector
    mixture: MultimodalGaussianMixture  # the detector's model, or the mixture inside it
    n_rows: int
    mean_log_likelihood: float
    std_log_likelihood: float
    sample: Batch  # input rows for plots and the input example
    data_path: str
    n_parameters: int  # of the mixture and any preprocessing, for BIC/AIC
    reference: DriftReference | None = None  # training distribution for drift monitoring


def _fit_in_memory(model: MultimodalGaussianMixture, data: Mapping[str, np.ndarray],
                   contamination: float, fit_options: dict[str, Any],
                   preprocessing: Preprocessing | None = None,
                   with_threshold: bool = True) -> _Trained:
    mixture_data = data if preprocessing is None else preprocessing.transform_arrays(data)
    model.fit(mixture_data, **fit_options)
    fitted = model if preprocessing is None else preprocessing.model(model, len(
        next(iter(data.values()))))
    batch = fitted.to_batch(data)
    scores = -fitted.score_samples(data)
    detector = AnomalyDetector(fitted, contamination)
    reference = None
    if with_threshold:
        detector.set_threshold(scores, detector.patterns(batch))
        reference = in_memory_reference(detector, batch)
    if batch.n_rows > PLOT_ROWS:
        batch = batch.take(_plot_rows(batch.n_rows))
    return _Trained(detector, model, len(scores), float(-scores.mean()), float(scores.std()),
                    batch, "in-memory", _n_parameters(model, preprocessing), reference)


def _plot_rows(n_rows: int) -> np.ndarray:
    """(min(n_rows, PLOT_ROWS),) row indices of the in-memory sample (plots, reference edges)."""
    if n_rows <= PLOT_ROWS:
        return np.arange(n_rows)
    return np.random.default_rng(0).choice(n_rows, PLOT_ROWS, False)


def in_memory_reference(detector: AnomalyDetector, batch: Batch) -> DriftReference:
    """The drift reference of all training rows ``batch`` (n rows): counts of every row,
    bin edges and quantiles from the plot sample of them."""
    values = detector.score_batch(batch)
    columns = monitored_columns(detector)
    sample = _plot_rows(batch.n_rows)
    return reference_from_values({n: values[n] for n in columns},
                                 {n: values[n][sample] for n in columns},
                                 {m: n for n, m in columns.items() if m is not None})


def thresholded_on_spark(fitted: MultimodalGaussianMixture | FusionModel, cached: CachedBlocks,
                         contamination: float) -> tuple[TrainingScores, AnomalyDetector,
                                                        Batch, DriftReference]:
    """The exact training threshold and calibration of ``fitted`` over the cached training
    rows, the detector holding them, a plot sample of the rows and the drift reference (one
    more pass over the same cached rows): what every Spark fit that registers a detector
    (single, sweep winner, ``late``) stores with it."""
    scores = training_threshold(fitted, cached, contamination)
    sample = cached.sample(PLOT_ROWS, seed=0)
    detector = AnomalyDetector(fitted, contamination, scores.threshold, scores.calibration)
    return scores, detector, sample, training_reference(detector, cached, sample)


def _n_parameters(model: MultimodalGaussianMixture, preprocessing: Preprocessing | None) -> int:
    return model.n_parameters() + (0 if preprocessing is None else preprocessing.n_parameters())


CACHE_OPTIONS = ("source", "rows_per_block", "use_rdd", "weight_column")
"""The Spark options that say how input rows are cached (the others go to the fit)."""


def _fit_on_spark(model: MultimodalGaussianMixture, data: DataFrame | CachedBlocks,
                  contamination: float, fit_options: dict[str, Any],
                  preprocessing: Preprocessing | None = None, transformed: Any = None,
                  with_threshold: bool = True) -> _Trained:
    """Cache the input rows (unless given cached), fit, threshold, sample, unpersist.

    With ``preprocessing`` the mixture is fitted on a second cache of the transformed rows
    (``transformed`` when given) and the threshold is taken over the input rows'
    log-density (preprocessing included).
    """
    inputs = model.modalities if preprocessing is None else preprocessing.modalities
    cache = {k: v for k, v in fit_options.items() if k in CACHE_OPTIONS}
    fit_options = {k: v for k, v in fit_options.items() if k not in CACHE_OPTIONS}
    with cached_blocks(data, tuple(inputs), **cache) as cached:
        owned_transform = preprocessing is not None and transformed is None
        try:
            if owned_transform:
                transformed = transformed_rows(cached, preprocessing, model.modalities)
            model.fit(transformed or cached, **fit_options)
            fitted = (model if preprocessing is None
                      else preprocessing.model(model, cached.total_weight))
            if with_threshold:
                scores, detector, sample, reference = thresholded_on_spark(
                    fitted, cached, contamination)
            else:
                scores, reference = training_summary(fitted, cached), None
                sample = cached.sample(PLOT_ROWS, seed=0)
                detector = AnomalyDetector(fitted, contamination)
        finally:
            if owned_transform and transformed is not None:
                transformed.unpersist()
    return _Trained(detector, model, scores.n_rows, scores.mean_log_likelihood,
                    scores.std_log_likelihood, sample, "spark", _n_parameters(model, preprocessing),
                    reference)


def _fit(model: MultimodalGaussianMixture, data: Any, contamination: float,
         fit_options: dict[str, Any], preprocessing: Preprocessing | None, transformed: Any,
         threshold: bool) -> _Trained:
    if isinstance(data, Mapping):
        fit_options = {k: v for k, v in fit_options.items() if k not in CACHE_OPTIONS}
        return _fit_in_memory(model, data, contamination, fit_options, preprocessing, threshold)
    return _fit_on_spark(model, data, contamination, fit_options, preprocessing, transformed,
                         threshold)


def transformed_rows(cached: Any, preprocessing: Preprocessing,
                     modalities: Sequence[Modality]) -> Any:
    """A cache of the rows of ``cached`` as the mixture (of ``modalities``) sees them, or None
    when the preprocessing changes nothing; the caller unpersists it."""
    if preprocessing.is_identity():
        return None
    return cached.mapped(preprocessing.transform, tuple(modalities),
                         preprocessing.describe_rows(cached.source))


def _log_plots(trained: _Trained) -> None:
    model = trained.mixture
    log_figures({"plots/convergence.png": plots.convergence_curve(model.lower_bounds_),
                 "plots/component_weights.png": plots.component_weights(model.weights_),
                 **score_figures(trained.detector, trained.sample)})


def score_figures(detector: AnomalyDetector, sample: Batch) -> dict[str, Any]:
    """Histogram of the anomaly scores of ``sample`` and the top anomalies by modality."""
    columns = detector.score_batch(sample)
    return {
        "plots/score_histogram.png": plots.score_histogram(columns["anomaly_score"],
                                                           detector.threshold),
        "plots/top_anomalies_by_modality.png": plots.modality_contributions(
            columns["anomaly_score"],
            {m.name: columns[modality_column(m.name)] for m in detector.modalities}),
    }


def log_figures(figures: Mapping[str, Any]) -> None:
    """Log each figure to the active run at its artefact path, then close it."""
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)
        plt.close(figure)


def final_metrics(trained: _Trained) -> dict[str, float]:
    """Lower bound, final mean log-likelihood, BIC, AIC, iterations, convergence, weights."""
    model = trained.mixture
    return {
        "lower_bound": float(model.lower_bound_),
        "final_mean_log_likelihood": trained.mean_log_likelihood,
        "final_log_likelihood_std": trained.std_log_likelihood,
        **information_criteria(trained.mean_log_likelihood, trained.n_rows, trained.n_parameters),
        "n_iter": float(model.n_iter_), "converged": float(model.converged_),
        "min_component_weight": float(model.weights_.min()),
        "n_collapsed_components": float(len(model.collapsed_components_)),
        "n_parameters": float(trained.n_parameters),
        **({} if trained.detector.threshold is None
           else {"threshold": float(trained.detector.threshold)}),
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


@contextlib.contextmanager
def mlflow_run(experiment_id: str, run_name: str | None, nested: bool,
                run_id: str | None) -> Iterator[Any]:
    """``mlflow.start_run`` (a new run, or ``run_id`` continued) whose end never masks an error.

    Ending the run talks to the server; when that fails the run stays RUNNING and a warning
    is logged instead of replacing the error (or result) of the fit.
    """
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id, nested=nested)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        try:
            mlflow.end_run(status)
        except Exception as error:
            log.warning("Could not mark MLflow run %s %s: %s", run.info.run_id, status, error)


def find_checkpoint(client: MlflowClient, run_id: str, model: MultimodalGaussianMixture,
                    local_dir: str | None) -> Checkpoint:
    """The most advanced valid checkpoint of ``run_id``: local copy or run artefact.

    Raises :class:`CheckpointError` when the run finished, has no checkpoint, or a
    checkpoint is invalid (tampered, other model).
    """
    run = client.get_run(run_id)
    if run.info.status == "FINISHED":
        raise CheckpointError(f"Run {run_id} already finished; there is nothing to resume.")
    found = []
    if local_dir is not None and os.path.exists(os.path.join(local_dir, FILENAME)):
        found.append(load_checkpoint(local_dir, model))
    with tempfile.TemporaryDirectory() as target:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{FILENAME}", dst_path=target,
                tracking_uri=client._tracking_client.tracking_uri)
        except Exception as error:  # no such artefact, or the store is unreachable
            log.info("No checkpoint artefact in run %s: %s", run_id, error)
        else:
            found.append(load_checkpoint(path, model))
    found = [c for c in found if c.run_id == run_id]
    if not found:
        raise CheckpointError(f"Run {run_id} has no checkpoint (artefact "
                              f"{ARTIFACT_DIR}/{FILENAME} or {local_dir}); it cannot be resumed.")
    return max(found, key=lambda c: (c.progress.restart, c.iterations))


def _checkpointing(config: TrackingConfig, client: MlflowClient, run_id: str,
                   model: MultimodalGaussianMixture, checkpoint_dir: str | None,
                   resume_run_id: str | None) -> tuple[Checkpointer | None, Checkpoint | None]:
    """The run's checkpoint writer (local dir + artefact upload) and what to resume from."""
    if checkpoint_dir is None and resume_run_id is None:
        return None, None
    directory = os.path.join(checkpoint_dir or os.path.join(config.work_dir, CHECKPOINT_DIR),
                             run_id)
    resume = None if resume_run_id is None else find_checkpoint(client, run_id, model, directory)
    upload = lambda path: client.log_artifact(run_id, path, ARTIFACT_DIR)  # noqa: E731
    return Checkpointer(directory, model, run_id, upload), resume


def _finish(config: TrackingConfig, trained: _Trained, logger: MetricLogger,
            holdout: Mapping[str, np.ndarray] | None, run_id: str, log_model: bool,
            retry: RetryPolicy) -> FitRun:
    """Everything logged after the fit, each step retried on transient errors."""
    metrics = final_metrics(trained)
    logger.flush(retry)
    call_with_retry(lambda: mlflow.log_params({"n_rows": trained.n_rows,
                                               "data_path": trained.data_path}),
                    retry, "Logging run parameters")
    call_with_retry(lambda: mlflow.log_metrics(metrics), retry, "Logging final metrics")
    call_with_retry(lambda: _log_plots(trained), retry, "Logging plots")
    if trained.reference is not None:
        call_with_retry(lambda: log_reference(trained.reference), retry,
                        "Logging the drift reference")
    result = FitRun(run_id, trained.detector, trained.n_rows, metrics)
    if log_model:
        result.model_uri, result.model_version, result.decision = call_with_retry(
            lambda: register_detector(config, trained.detector, trained.sample, holdout, run_id),
            retry, "Logging the model")
    return result


def tracked_fit(model: MultimodalGaussianMixture, data: Any, *, contamination: float = 0.01,
                config: TrackingConfig | None = None,
                table_versions: Mapping[str, Any] | None = None,
                holdout: Mapping[str, np.ndarray] | None = None, run_name: str | None = None,
                log_model: bool = True, nested: bool = False,
                checkpoint_dir: str | None = None, resume_run_id: str | None = None,
                retry: RetryPolicy | None = None, preprocessing: Preprocessing | None = None,
                transformed: Any = None, threshold: bool = True,
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
        run_name, nested: the MLflow run's name; start it nested in the active run.
        log_model: log the pyfunc model (and register it when the config names one).
        checkpoint_dir: write a checkpoint after every EM iteration to
            ``<checkpoint_dir>/<run_id>/`` and the run's ``checkpoint/`` artefacts (removed
            locally once the run is complete); None: none.
        resume_run_id: continue this interrupted run (same run, same step numbering) from
            its most advanced checkpoint; the data must be the same rows.
        retry: backoff for logging after the fit; if logging still fails, the detector is
            saved under ``<work_dir>/unlogged/`` and :class:`ModelNotLoggedError` names it.
        preprocessing: fitted :class:`Preprocessing`: ``data`` holds the input rows, ``model``
            is the mixture of the transformed rows, and the logged detector applies both.
        transformed: on Spark, ``data``'s rows already transformed by ``preprocessing`` and
            cached (:meth:`CachedBlocks.mapped`; the caller unpersists them).
        threshold: compute the exact training threshold; False: only the log-likelihood's
            mean and std (sweep candidates, late parts), and the threshold is None.
        spark_options: ``source``, ``rows_per_block``, ``use_rdd``, ``tree_depth``,
            ``init_sample_rows``.
    """
    config = config or TrackingConfig()
    retry = retry or RetryPolicy()
    fit_params = {**model_params(model, contamination),
                  **(preprocessing.params() if preprocessing is not None else {})}
    with tracking(config) as experiment_id, mlflow_run(
            experiment_id, run_name, nested, resume_run_id) as run:
        run_id, client = run.info.run_id, config.client()
        checkpointer, resume = _checkpointing(config, client, run_id, model, checkpoint_dir,
                                              resume_run_id)
        if resume is None:  # a resumed run has them (the checkpoint checked the model's)
            _log_inputs(fit_params, table_versions or {}, retry)
        logger = MetricLogger(client, run_id, model.n_init, resume)
        options = {**spark_options, "on_iteration": logger, "checkpointer": checkpointer,
                   "resume": resume}
        with preprocessing.naming_coordinates() if preprocessing else contextlib.nullcontext():
            trained = _fit(model, data, contamination, options, preprocessing, transformed,
                           threshold)
        result = _finish_or_save(config, trained, logger, holdout, run_id, log_model, retry,
                                 fit_params)
        if checkpointer is not None:
            shutil.rmtree(checkpointer.directory, ignore_errors=True)
        return result


def _log_inputs(fit_params: dict[str, Any], table_versions: Mapping[str, Any],
                retry: RetryPolicy) -> None:
    params, tags = table_params(table_versions)
    params = {**fit_params, **params}
    call_with_retry(lambda: (mlflow.log_params(params), mlflow.set_tags(tags)), retry,
                    "Logging run parameters")


def _finish_or_save(config: TrackingConfig, trained: _Trained, logger: MetricLogger,
                    holdout: Mapping[str, np.ndarray] | None, run_id: str, log_model: bool,
                    retry: RetryPolicy, fit_params: dict[str, Any]) -> FitRun:
    """:func:`_finish`; when logging still fails, the detector is saved locally."""
    try:
        return _finish(config, trained, logger, holdout, run_id, log_model, retry)
    except Exception as error:
        path = save_unlogged(trained.detector, config.work_dir, run_id,
                             {"metrics": final_metrics(trained), "params": fit_params})
        log.error("Run %s: the fitted model could not be logged (%s); saved at %s",
                  run_id, error, path)
        raise ModelNotLoggedError(path, run_id, error) from error
