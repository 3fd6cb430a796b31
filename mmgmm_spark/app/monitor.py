"""``mmgmm monitor``: the latest scoring run's drift against the training reference.

Reads the ``drift.*`` metrics the newest finished scoring run into ``scoring.output_table``
logged (:mod:`mmgmm_spark.tracking.drift`), flags the score and every modality whose PSI or
KS statistic exceeds ``monitoring.psi_threshold`` / ``ks_threshold`` or whose share of rows
missing it moved by more than ``missing_share_threshold``, appends one row per checked run
to the Delta table ``monitoring.table`` (re-checking a run replaces its row), and logs a
plot of the score's and each modality's quantiles over the checked runs to the scoring run
(``drift/quantiles_over_runs.png``). The CLI exits with :data:`EXIT_DRIFT` when something
drifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from mmgmm_spark.app.config import AppConfig, MonitoringConfig
from mmgmm_spark.app.pipeline import tracking_config
from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.drift import QUANTILES
from mmgmm_spark.models.scores import ANOMALY_SCORE, MODALITY_SUFFIX, SCORING_RUN_ID
from mmgmm_spark.storage import TableWrite, read_table, write_table
from mmgmm_spark.tracking.drift import PREFIX, load_reference
from mmgmm_spark.tracking.history import latest_scoring_run
from mmgmm_spark.tracking.plots import quantiles_over_runs

EXIT_DRIFT = 3
"""Exit code of ``mmgmm monitor`` when a configured threshold is crossed."""
SCORE = "score"
ROW_SCHEMA = ("scoring_run_id string, model_name string, model_version string, "
              "run_started_at long, checked_at timestamp_ntz, n_rows long, "
              "fraction_over_threshold double, psi map<string,double>, "
              "ks map<string,double>, missing_share map<string,double>, "
              "quantiles map<string,array<double>>, drifted array<string>, "
              "reasons array<string>")


@dataclass(frozen=True)
class MonitorResult:
    """One check: the scoring run, what drifted ({score or modality: reasons}), the row."""

    scoring_run_id: str
    model: str
    drifted: dict[str, list[str]]
    metrics: dict[str, float]
    written: TableWrite


def _subject(column: str) -> str:
    """``anomaly_score`` -> ``score``; ``<modality>_log_likelihood`` -> the modality."""
    return SCORE if column == ANOMALY_SCORE.name else column.removesuffix(MODALITY_SUFFIX)


def flagged(metrics: dict[str, float], limits: MonitoringConfig) -> dict[str, list[str]]:
    """{score or modality: reasons} for every threshold crossed in ``metrics`` (drift.*
    names without the prefix)."""
    found: dict[str, list[str]] = {}
    checks = (("psi.", limits.psi_threshold, "PSI"), ("ks.", limits.ks_threshold, "KS"),
              ("missing_share_change.", limits.missing_share_threshold,
               "missing-share change"))
    for prefix, limit, label in checks:
        for key, value in metrics.items():
            if key.startswith(prefix) and value > limit:
                subject = key.removeprefix(prefix)
                found.setdefault(_subject(subject), []).append(
                    f"{label} {value:.3g} > {limit:g}")
    return found


def _drift_metrics(config: AppConfig):
    """(run, {drift metric: value}) of the newest scoring run, or a clear error."""
    table = config.scoring.output_table
    tracking = tracking_config(config)
    run = latest_scoring_run(tracking, table)
    if run is None:
        raise DataValidationError(f"No finished scoring run into {table!r} in experiment "
                                  f"{config.tracking.experiment!r}: run `mmgmm score` first.")
    params = run.data.params
    metrics = {k.removeprefix(PREFIX): v for k, v in run.data.metrics.items()
               if k.startswith(PREFIX)}
    if not metrics:
        load_reference(tracking, params["model_name"], params["model_version"])  # explains
        raise DataValidationError(
            f"Scoring run {run.info.run_id} logged no drift metrics (it scored before drift "
            "monitoring existed): run `mmgmm score` again, then `mmgmm monitor`.")
    return run, metrics


def _row(run, metrics: dict[str, float], drifted: dict[str, list[str]]) -> dict:
    def group(prefix: str) -> dict[str, float]:
        return {k.removeprefix(prefix): v for k, v in metrics.items()
                if k.startswith(prefix) and k.count(".") == prefix.count(".")}

    columns = sorted(group("psi."))
    quantiles = {c: [metrics.get(f"quantile.{c}.{q:g}") for q in QUANTILES] for c in columns}
    return {"scoring_run_id": run.info.run_id, "model_name": run.data.params["model_name"],
            "model_version": run.data.params["model_version"],
            "run_started_at": run.info.start_time,
            "checked_at": datetime.now(UTC).replace(tzinfo=None),
            "n_rows": int(metrics.get("n_rows", 0)),
            "fraction_over_threshold": metrics.get("fraction_over_threshold"),
            "psi": group("psi."), "ks": group("ks."),
            "missing_share": group("missing_share."), "quantiles": quantiles,
            "drifted": sorted(drifted),
            "reasons": [f"{k}: {r}" for k, rs in sorted(drifted.items()) for r in rs]}


def monitor(spark: SparkSession, config: AppConfig) -> MonitorResult:
    """Check the newest scoring run, append its row, log the plot (module docstring)."""
    run, metrics = _drift_metrics(config)
    drifted = flagged(metrics, config.monitoring)
    row = spark.createDataFrame([_row(run, metrics, drifted)], ROW_SCHEMA)
    table, engine = config.monitoring.table, config.storage.engine
    written = write_table(spark, row, table, mode="overwrite",
                          replace_where={SCORING_RUN_ID: run.info.run_id}, engine=engine)
    history = (read_table(spark, table, engine=engine).df.orderBy("run_started_at")
               .select(SCORING_RUN_ID, "quantiles").collect())
    figure = quantiles_over_runs([r[SCORING_RUN_ID][:8] for r in history],
                                 [dict(r["quantiles"]) for r in history], QUANTILES)
    tracking_config(config).client().log_figure(run.info.run_id, figure,
                                                "drift/quantiles_over_runs.png")
    model = f"{run.data.params['model_name']} v{run.data.params['model_version']}"
    return MonitorResult(run.info.run_id, model, drifted, metrics, written)


