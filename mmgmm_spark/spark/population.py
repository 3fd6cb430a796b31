"""The scored population on Spark: the training reference pass, the latest score per id, and
a population's profile (binned counts, missing shares, flagged rows) against a reference.

The output table keeps every scoring run's rows (one row per entity per run that scored it,
tagged ``scoring_run_id`` and ``scored_at``); after incremental runs an entity's current
score is its newest row: :func:`latest_scores`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.drift import (
    DriftReference,
    Profile,
    assemble_reference,
    bin_counts,
    empty_profile,
    profile_values,
    quantile_edges,
)
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.scores import ANOMALY_SCORE, IS_ANOMALY, SCORED_AT, modality_column
from mmgmm_spark.spark.data import CachedBlocks, translated_errors
from mmgmm_spark.spark.tasks import spark_task


def monitored_columns(detector: AnomalyDetector) -> dict[str, str | None]:
    """{output column: its modality or None}: the anomaly score and every modality's
    log-likelihood."""
    return {ANOMALY_SCORE.name: None,
            **{modality_column(m.name): m.name for m in detector.modalities}}


def training_reference(detector: AnomalyDetector, data: CachedBlocks, sample: Batch,
                       tree_depth: int = 2) -> DriftReference:
    """The reference of all cached training rows, in one pass over them: bin edges and
    quantiles from ``sample`` (rows of ``data``), counts of every row; with row weights every
    count (and the edges and quantiles of the sample) is weighted, a row of integer weight w
    counting as w rows."""
    columns = monitored_columns(detector)
    sampled = detector.score_batch(sample)
    edges = {name: quantile_edges(sampled[name], weights=sample.weights) for name in columns}
    names = list(columns)

    def function(batch: Batch) -> tuple[np.ndarray, ...]:
        values, weights = detector.score_batch(batch), batch.weights
        missing = [np.isnan(values[n]) for n in names]
        return (np.array([batch.total_weight]),
                np.array([m.sum() if weights is None else weights[m].sum() for m in missing],
                         dtype=np.float64),
                *(bin_counts(values[n], edges[n], weights) for n in names))

    def merge(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        return tuple(x + y for x, y in zip(a, b, strict=True))

    zero = (np.zeros(1), np.zeros(len(names)), *(np.zeros(len(edges[n]) + 1) for n in names))
    total = data.aggregate(function, merge, zero, (tuple, tuple), tree_depth)
    missing = {m: float(total[1][i]) for i, m in enumerate(columns.values()) if m is not None}
    return assemble_reference(edges, dict(zip(names, total[2:], strict=True)), missing,
                              float(total[0][0]), {n: sampled[n] for n in names},
                              sample.weights)


def latest_scores(scores: DataFrame, id_column: str) -> DataFrame:
    """The newest row (by ``scored_at``) of every id of an output table's rows."""
    newest = Window.partitionBy(id_column).orderBy(F.col(SCORED_AT).desc())
    return (scores.withColumn("_rank", F.row_number().over(newest))
            .where(F.col("_rank") == 1).drop("_rank"))


def profile(rows: DataFrame, reference: DriftReference) -> Profile:
    """The :class:`Profile` of ``rows`` (scored rows: the reference's columns and
    ``is_anomaly``) on ``reference``'s bins, in one Spark job: each task profiles its rows,
    the driver adds the per-task profiles (one small row per task)."""
    names = list(reference.columns)

    @spark_task
    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        total = empty_profile(reference)
        for batch in batches:
            values = {n: batch.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                      for n in names}
            flagged = batch.column(IS_ANOMALY.name).to_numpy(zero_copy_only=False)
            total = total.plus(profile_values(values, flagged.astype(bool), reference))
        yield pa.RecordBatch.from_pydict({"profile": [json.dumps(total.to_dict())]})

    with translated_errors():
        parts = rows.select(*names, IS_ANOMALY.name).mapInArrow(count, "profile string")
        total = empty_profile(reference)
        for row in parts.collect():
            total = total.plus(Profile.from_dict(json.loads(row["profile"])))
    return total
