"""Demo data: the synthetic multimodal entities written as per-modality Delta tables.

Each modality table holds only the entities that observe the modality (a missing modality is
an absent row, as in real feature stores); the labels table holds the injected truth, used
only for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import SparkSession
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from mmgmm_spark.app.config import AppConfig
from mmgmm_spark.app.pipeline import scores_with_labels
from mmgmm_spark.app.synthetic import DEMO_MODALITIES, SyntheticData, generate
from mmgmm_spark.models.evaluation import evaluate_by_pattern
from mmgmm_spark.models.scores import ANOMALY_SCORE, CALIBRATED_SCORE, modality_column
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.storage import TableWrite, write_table


@dataclass(frozen=True)
class DemoTables:
    """Where the demo data went: modality tables, the labels table, the generated data."""

    modalities: dict[str, TableWrite]
    labels: TableWrite
    data: SyntheticData
    ids: np.ndarray


def write_demo_tables(spark: SparkSession, config: AppConfig, labels_table: str,
                      n_rows: int = 200_000, seed: int = 0) -> DemoTables:
    """Generate ``n_rows`` entities and overwrite the configured modality tables with them."""
    dims = {m.name: m.dim for m in DEMO_MODALITIES}
    configured = [m.name for m in config.data.modalities]
    if sorted(configured) != sorted(dims):
        raise ValueError(f"The demo generates modalities {sorted(dims)}; the config lists "
                         f"{configured}. Run the demo with the embedded default config "
                         "(no --config).")
    data = generate(n_rows, DEMO_MODALITIES, seed=seed)
    ids = np.array([f"entity-{i:07d}" for i in range(n_rows)], dtype=object)
    id_column = config.data.id_column
    writes = {}
    for m in config.data.modalities:
        x = data.features[m.name]
        observed = ~np.isnan(x).all(axis=1)
        table = arrow_table({m.features_column: x[observed]}, ids=ids[observed],
                            id_column=id_column)
        writes[m.name] = write_table(spark, spark.createDataFrame(table), m.table,
                                     mode="overwrite", engine=config.storage.engine)
    labels = spark.createDataFrame(pa.table({id_column: pa.array(ids, pa.string()),
                                             "is_anomaly": data.is_anomaly,
                                             "kind": data.kind.astype(str)}))
    label_write = write_table(spark, labels, labels_table, mode="overwrite",
                              engine=config.storage.engine)
    return DemoTables(writes, label_write, data, ids)


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured against the injected truth."""

    metrics: dict[str, float]
    auroc_by_kind: dict[str, float]
    per_modality_detector_auroc_by_kind: dict[str, float]
    top_anomalies: pd.DataFrame
    by_pattern: dict[str, dict[str, float]]
    """{"anomaly_score" / "calibrated_score": :func:`evaluate_by_pattern` of that score}."""
    isolation_forest_auroc_by_kind: dict[str, float]
    """The reference's AUROC per kind and over every anomaly ("all"); {} without one."""


def isolation_forest_scores(features: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    """(n,) anomaly scores of scikit-learn's ``IsolationForest`` (default settings,
    ``random_state=seed``) on the concatenated (n, sum d_m) ``features``, what a user would run
    on the joined table: a missing modality's features (NaN rows) are imputed with their
    column means, since the forest takes no NaN."""
    x = np.hstack(list(features.values()))
    x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
    return -IsolationForest(random_state=seed).fit(x).score_samples(x)


def modality_surprise(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per modality, the z-score of the negative marginal log-likelihood (NaN where missing)."""
    out = {}
    for name in names:
        score = -frame[modality_column(name)]
        out[name] = (score - score.mean()) / score.std()
    return pd.DataFrame(out, index=frame.index)


def _auroc_by_kind(frame: pd.DataFrame, score: pd.Series) -> dict[str, float]:
    normal = frame["kind"] == "normal"
    return {kind: float(roc_auc_score(frame["kind"][normal | (frame["kind"] == kind)] == kind,
                                      score[normal | (frame["kind"] == kind)]))
            for kind in sorted(set(frame["kind"]) - {"normal"})}


def _by_pattern(frame: pd.DataFrame, names: list[str], ids: pd.Series,
                altered: pd.Series | None) -> dict[str, dict[str, float]]:
    """:func:`evaluate_by_pattern` of the raw and the calibrated score (a missing modality's
    log-likelihood column is NaN); ``altered``: {id: modality an anomaly altered, or ""}."""
    missing = frame[[modality_column(n) for n in names]].isna().to_numpy()
    evidence = None
    if altered is not None:
        changed = ids.map(altered).fillna("").to_numpy()
        evidence = ~np.array([c in names and row[names.index(c)]
                              for c, row in zip(changed, missing, strict=True)])
    pattern = np.array(["complete" if not row.any() else
                        "no " + "+".join(n for n, gone in zip(names, row, strict=True) if gone)
                        for row in missing])
    labels = (frame["kind"] != "normal").to_numpy()
    return {column: evaluate_by_pattern(labels, frame[column].to_numpy(), ~missing.any(axis=1),
                                        pattern, evidence)
            for column in (ANOMALY_SCORE.name, CALIBRATED_SCORE.name)
            if frame[column].notna().all()}


def demo_report(spark: SparkSession, config: AppConfig, labels_table: str,
                metrics: dict[str, float], top: int = 8,
                altered: pd.Series | None = None,
                reference: pd.Series | None = None) -> DemoReport:
    """Per-kind AUROC of the joint model, of a per-modality detector and of ``reference``
    (anomaly scores by id, e.g. :func:`isolation_forest_scores`), the top rows, and the raw
    and calibrated scores compared across missingness patterns (``altered``: the generated
    :attr:`SyntheticData.altered` by id, to separate the incomplete anomalies whose altered
    modality is missing)."""
    names = [m.name for m in config.data.modalities]
    columns = [ANOMALY_SCORE.name, CALIBRATED_SCORE.name, "kind",
               *[modality_column(n) for n in names], config.data.id_column]
    # the demo's own data set (a few hundred thousand rows) is brought to the driver for the
    # per-kind report; production evaluation is pipeline.evaluate, which bounds what it collects
    frame = scores_with_labels(spark, config, labels_table).select(*columns).toPandas()
    score = (CALIBRATED_SCORE.name if frame[CALIBRATED_SCORE.name].notna().all()
             else ANOMALY_SCORE.name)
    surprise = modality_surprise(frame, names)
    per_modality = surprise.max(axis=1)      # flags a row unusual in any single modality
    ranked = frame.sort_values(score, ascending=False).head(top)
    table = pd.concat([ranked[[config.data.id_column, "kind", ANOMALY_SCORE.name, score]],
                       surprise.loc[ranked.index].round(1)], axis=1)
    table["most_unusual"] = surprise.loc[ranked.index].idxmax(axis=1)
    ids = frame[config.data.id_column]
    return DemoReport(metrics, _auroc_by_kind(frame, frame[score]),
                      _auroc_by_kind(frame, per_modality), table,
                      _by_pattern(frame, names, ids, altered),
                      _reference_aurocs(frame, ids, reference))


def _reference_aurocs(frame: pd.DataFrame, ids: pd.Series,
                      reference: pd.Series | None) -> dict[str, float]:
    """{"all": AUROC of every anomaly, kind: AUROC of that kind} of ``reference`` by id."""
    if reference is None:
        return {}
    score = ids.map(reference)
    return {"all": float(roc_auc_score(frame["kind"] != "normal", score)),
            **_auroc_by_kind(frame, score)}
