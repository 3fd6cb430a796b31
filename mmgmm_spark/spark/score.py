"""Training threshold and batch scoring on Spark.

* :func:`training_threshold`: the exact (1 - contamination) quantile of the training anomaly
  scores (numpy's default linear interpolation) over :class:`CachedBlocks`, without collecting
  the scores: a summary pass (count, sum, min, max), then histogram passes of ``bins`` counts
  that narrow the value range holding the wanted order statistic, until at most
  ``max_collect`` candidate values remain; only those reach the driver. One more pass adds
  the per-missingness-pattern histograms of the calibration table
  (:mod:`mmgmm_spark.core.calibration`), merged like the other partial results. With row
  weights every count is a sum of weights (a row of integer weight w counts as w rows, a
  zero-weight row is absent), so the threshold, the calibration and the mean/std equal those
  of the rows repeated.
* :func:`score_dataframe`: :meth:`AnomalyDetector.score_batch` as ``mapInArrow`` tasks; the
  output columns and their Spark types are :mod:`mmgmm_spark.models.scores`'.
* :func:`score_to_delta`: scores plus model name/version, scoring run id and time, written
  to a Delta table in one transaction that replaces the rows of the same scoring run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.calibration import (
    Calibration,
    calibration_from_histograms,
    merge_histograms,
    pattern_codes,
    pattern_histograms,
)
from mmgmm_spark.core.densities import normalise_log_prob, weighted_log_prob
from mmgmm_spark.core.quantiles import as_count, lerp, order_statistics
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.fusion import FusionModel
from mmgmm_spark.models.mixture import MultimodalGaussianMixture
from mmgmm_spark.models.scores import (
    LOG_LIKELIHOOD,
    MODEL_NAME,
    MODEL_VERSION,
    SCORED_AT,
    SCORING_RUN_ID,
)
from mmgmm_spark.spark.arrow import (
    batch_from_arrow,
    decode_arrays,
    dense_list_column,
    encode_arrays,
    payload_batches,
)
from mmgmm_spark.spark.data import CachedBlocks, features_column, translated_errors
from mmgmm_spark.spark.tasks import spark_task

Stats = tuple[np.ndarray, ...]


# ------------------------------------------------------------------------ training threshold
@dataclass(frozen=True)
class TrainingScores:
    """What the threshold passes measured over all n training rows.

    Attributes:
        threshold: (1 - contamination) quantile of the anomaly scores (equal to
            ``np.quantile(scores, 1 - contamination)``); None from :func:`training_summary`.
        n_rows: n (with row weights: their sum, an int when it is one).
        mean_log_likelihood: mean log-likelihood of the rows under the fitted parameters
            (of a ``late`` model: the mean fused, unitless score).
        std_log_likelihood: their standard deviation (population, ``np.std``).
        passes: Spark jobs run over the cached blocks.
        calibration: the per-pattern tail tables of the scores; None from
            :func:`training_summary`.
    """

    threshold: float | None
    n_rows: int | float
    mean_log_likelihood: float
    std_log_likelihood: float
    passes: int
    calibration: Calibration | None = None


def anomaly_scores(model: MultimodalGaussianMixture | FusionModel, batch: Batch) -> np.ndarray:
    """(n,) negative log-likelihood of the rows of ``batch`` (preprocessing included)."""
    if isinstance(model, FusionModel):
        return -model.batch_columns(batch)[LOG_LIKELIHOOD.name]
    log_likelihood, _ = normalise_log_prob(weighted_log_prob(batch, model.params, model.modalities))
    return -log_likelihood


def scores_and_patterns(model: MultimodalGaussianMixture | FusionModel, batch: Batch
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m,) anomaly scores, (m,) missingness patterns and (m,) weights of the m rows of
    ``batch`` with a weight > 0 (all rows, weight 1, when unweighted): a zero-weight row is
    absent from the threshold, the calibration and the summary."""
    kept = batch if batch.weights is None else batch.take(np.flatnonzero(batch.weights > 0))
    observed = [kept.blocks[m.name].observed for m in model.modalities]
    weights = np.ones(kept.n_rows) if kept.weights is None else kept.weights
    return anomaly_scores(model, kept), pattern_codes(observed), weights


class _ScoreReducer:
    """Map a function over the (anomaly scores, weights) of every cached block and merge the
    results; ``with_patterns`` functions get (scores, patterns, weights).

    RDD path: the (n_i,) score, pattern and weight arrays are computed once and cached.
    DataFrame-only path: each pass decodes the cached payloads and recomputes the scores (one
    E-step per pass).
    """

    def __init__(self, model: MultimodalGaussianMixture | FusionModel,
                 data: CachedBlocks) -> None:
        self.data = data
        self.passes = 0
        self.scores = None
        if data.rdd is not None:
            self.scores = data.rdd.mapPartitions(spark_task(
                lambda batches: (scores_and_patterns(model, batch) for batch in batches)))
            self.scores.persist(StorageLevel.MEMORY_AND_DISK)
        self.model = model

    def reduce(self, function: Callable[..., Stats], merge: Callable[[Stats, Stats], Stats],
               with_patterns: bool = False) -> Stats:
        self.passes += 1

        def apply(triple: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Stats:
            scores, codes, weights = triple
            return function(scores, codes, weights) if with_patterns else function(scores,
                                                                                   weights)

        with translated_errors():
            if self.scores is not None:
                return self.scores.map(apply).treeReduce(merge)
            return self._dataframe_reduce(apply, merge)

    def _dataframe_reduce(self, function: Callable[[tuple[np.ndarray, ...]], Stats],
                          merge: Callable[[Stats, Stats], Stats]) -> Stats:
        model, modalities = self.model, self.data.modalities

        @spark_task
        def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            total = None
            for batch in payload_batches(batches, modalities):
                stats = function(scores_and_patterns(model, batch))
                total = stats if total is None else merge(total, stats)
            if total is not None:
                yield pa.RecordBatch.from_pydict({"stats": [encode_arrays(total)]})

        rows = self.data.payload.mapInArrow(partition, "stats binary").collect()
        results = [decode_arrays(row.stats) for row in rows]
        total = results[0]
        for stats in results[1:]:
            total = merge(total, stats)
        return total

    def close(self) -> None:
        if self.scores is not None:
            self.scores.unpersist()


def _summary(scores: np.ndarray, weights: np.ndarray) -> Stats:
    """(rows, non-finite rows), (weight, weighted sum), min, max and weighted centred sum of
    squares of the finite scores."""
    finite = np.isfinite(scores)
    values, w = scores[finite], weights[finite]
    weight, total = float(w.sum()), float(w @ values)
    squares = float((w * (values - total / weight) ** 2).sum()) if weight > 0 else 0.0
    return (np.array([scores.size, scores.size - values.size]), np.array([weight, total]),
            np.array([values.min(initial=np.inf)]), np.array([values.max(initial=-np.inf)]),
            np.array([squares]))


def _merge_summary(a: Stats, b: Stats) -> Stats:
    """Chan et al.'s pairwise merge of the (weighted) centred sums of squares."""
    (w_a, s_a), (w_b, s_b) = a[1], b[1]
    squares = a[4] + b[4]
    if w_a > 0 and w_b > 0:
        squares = squares + (s_a / w_a - s_b / w_b) ** 2 * (w_a / (w_a + w_b) * w_b)
    return a[0] + b[0], a[1] + b[1], np.minimum(a[2], b[2]), np.maximum(a[3], b[3]), squares


def _histogram(lo: float, hi: float, bins: int) -> Callable[[np.ndarray, np.ndarray], Stats]:
    """Per bin of [lo, hi]: rows, weight, min and max of the scores in it (bin index is
    monotone)."""

    def histogram(scores: np.ndarray, weights: np.ndarray) -> Stats:
        inside = (scores >= lo) & (scores <= hi)
        values = scores[inside]
        index = np.minimum(((values - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
        mins = np.full(bins, np.inf)
        maxs = np.full(bins, -np.inf)
        np.minimum.at(mins, index, values)
        np.maximum.at(maxs, index, values)
        return (np.bincount(index, minlength=bins),
                np.bincount(index, weights=weights[inside], minlength=bins), mins, maxs)

    return histogram


def _merge_histogram(a: Stats, b: Stats) -> Stats:
    return a[0] + b[0], a[1] + b[1], np.minimum(a[2], b[2]), np.maximum(a[3], b[3])


def _order_statistic(reducer: _ScoreReducer, rank: float, lo: float, hi: float, n: int,
                     bins: int, max_collect: int) -> float:
    """The score of 0-based ``rank`` in ascending order (ranks count weight: a row of
    integer weight w holds w ranks), all n scores lying in [lo, hi]."""
    below, count = 0.0, n
    while lo < hi and count > max_collect:
        rows, weights, mins, maxs = reducer.reduce(_histogram(lo, hi, bins), _merge_histogram)
        ends = below + np.cumsum(weights)
        b = min(int(np.searchsorted(ends, rank, side="right")), int(np.flatnonzero(rows)[-1]))
        below, count = float(ends[b] - weights[b]), int(rows[b])
        lo, hi = float(mins[b]), float(maxs[b])
    if lo == hi:
        return lo
    low, high = lo, hi
    values, weights = reducer.reduce(
        lambda s, w: (s[(s >= low) & (s <= high)], w[(s >= low) & (s <= high)]),
        lambda a, b: (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])))
    order = np.argsort(values, kind="stable")
    return float(order_statistics(values[order], below + np.cumsum(weights[order]),
                                  np.array([rank]))[0])


def training_threshold(model: MultimodalGaussianMixture | FusionModel, data: CachedBlocks,
                       contamination: float, *, bins: int = 1024,
                       max_collect: int = 100_000) -> TrainingScores:
    """Exact (1 - contamination) quantile of the anomaly scores of all cached rows, weighted
    by their row weights (:func:`mmgmm_spark.core.quantiles.weighted_quantile`'s rule: a row
    of integer weight w counts as w rows).

    Args:
        model: the fitted mixture, or a fitted :class:`FusionModel`.
        data: the cached training blocks (not unpersisted here).
        contamination: in (0, 0.5).
        bins: counts per histogram pass (each pass divides the candidate range by about this).
        max_collect: candidate values brought to the driver at most.
    """
    if not 0.0 < contamination < 0.5:
        raise ValueError(f"contamination must be in (0, 0.5), got {contamination!r}.")
    reducer = _ScoreReducer(model, data)
    try:
        n, weight, total, lo, hi, squares = _summarise(reducer)
        last = max(weight - 1.0, 0.0)
        position = last * (1.0 - contamination)
        rank = float(np.floor(position))
        below = _order_statistic(reducer, rank, lo, hi, n, bins, max_collect)
        above = below if rank + 1 > last else _order_statistic(
            reducer, rank + 1, lo, hi, n, bins, max_collect)
        threshold = lerp(below, above, position - rank)
        calibration = _calibration(reducer, lo, hi)
        return TrainingScores(threshold, as_count(weight), float(-total / weight),
                              float(np.sqrt(squares / weight)), reducer.passes, calibration)
    finally:
        reducer.close()


def _calibration(reducer: _ScoreReducer, lo: float, hi: float) -> Calibration:
    """The calibration table of all scores, in [lo, hi], from one histogram pass."""
    histograms = reducer.reduce(
        lambda scores, codes, weights: pattern_histograms(scores, codes, lo, hi,
                                                          weights=weights),
        merge_histograms, with_patterns=True)
    return calibration_from_histograms(histograms, lo, hi,
                                       [m.name for m in reducer.model.modalities])


def training_summary(model: MultimodalGaussianMixture | FusionModel,
                     data: CachedBlocks) -> TrainingScores:
    """(Weighted) mean and standard deviation of the log-likelihood of all cached rows in one
    pass, without the threshold (``threshold`` None): for fits whose detector is not used."""
    reducer = _ScoreReducer(model, data)
    try:
        _, weight, total, _, _, squares = _summarise(reducer)
        return TrainingScores(None, as_count(weight), float(-total / weight),
                              float(np.sqrt(squares / weight)), reducer.passes)
    finally:
        reducer.close()


def _summarise(reducer: _ScoreReducer) -> tuple[int, float, float, float, float, float]:
    """(rows, weight, weighted sum, min, max, weighted centred sum of squares) of the scores
    of the rows with a weight > 0; all must be finite."""
    (n, bad), (weight, total), (lo,), (hi,), (squares,) = reducer.reduce(_summary,
                                                                          _merge_summary)
    if bad:
        raise ValueError(f"{bad} training rows have a non-finite anomaly score.")
    return int(n), float(weight), float(total), float(lo), float(hi), float(squares)


# ------------------------------------------------------------------------------- scoring
def score_schema(detector: AnomalyDetector, id_field: T.StructField,
                 responsibilities: bool) -> T.StructType:
    """Output schema of :func:`score_dataframe`: ``id_field``, then the detector's
    :meth:`AnomalyDetector.output_schema` (types from :mod:`mmgmm_spark.models.scores`)."""
    return T.StructType([id_field, *(T.StructField.fromJson(c.spark_field())
                                     for c in detector.output_schema(responsibilities))])


def _responsibility_column(detector: AnomalyDetector, batch: Batch) -> pa.ListArray:
    return dense_list_column(detector.responsibilities(batch))


def score_dataframe(df: DataFrame, detector: AnomalyDetector, *, id_column: str = "id",
                    responsibilities: bool = False, source: str = "DataFrame") -> DataFrame:
    """Score every row of ``df`` (``id_column`` + one column per modality, null = missing).

    Returns a DataFrame (lazy) with ``id_column``, the columns of
    :meth:`AnomalyDetector.output_columns` and, if asked, ``responsibilities`` (K,) per row.
    """
    modalities = detector.modalities
    frame = df.select(F.col(id_column), *[features_column(df, m.name, source).alias(m.name)
                                          for m in modalities])
    schema = score_schema(detector, frame.schema[id_column], responsibilities)
    arrow_schema = pa.schema([pa.field(f.name, _arrow_type(f.dataType)) for f in schema.fields])
    names = detector.output_columns()

    @spark_task
    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            if record_batch.num_rows == 0:
                continue
            batch = batch_from_arrow(record_batch, modalities, source)
            columns = detector.score_batch(batch)
            arrays = [record_batch.column(id_column)] + [pa.array(columns[n]) for n in names]
            if responsibilities:
                arrays.append(_responsibility_column(detector, batch))
            yield pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)

    return frame.mapInArrow(score_partition, schema)


def _arrow_type(data_type: T.DataType) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(data_type)


@dataclass(frozen=True)
class ScoringResult:
    """One committed scoring write."""

    table: str
    version: int
    scoring_run_id: str
    model_name: str
    model_version: str
    scored_at: datetime


def score_to_delta(spark: SparkSession, df: DataFrame, table: str, detector: AnomalyDetector,
                   *, model_name: str, model_version: str, scoring_run_id: str | None = None,
                   id_column: str = "id", responsibilities: bool = False,
                   engine: str = "auto", scored_at: datetime | None = None) -> ScoringResult:
    """Score ``df`` and write the rows to Delta ``table`` in one transaction.

    Columns: ``id_column``, the score columns, optionally ``responsibilities``, then
    ``model_name``, ``model_version``, ``scoring_run_id`` and ``scored_at`` (UTC wall-clock time,
    ``timestamp_ntz``).
    The write replaces the table's rows of ``scoring_run_id`` (Delta ``replaceWhere``), so
    re-running a scoring run leaves exactly one copy of its rows; a failure before the commit
    leaves the table unchanged.
    """
    from mmgmm_spark.storage import write_table

    run_id = scoring_run_id or uuid.uuid4().hex
    when = (scored_at or datetime.now(UTC)).astimezone(UTC)
    scored = score_dataframe(df, detector, id_column=id_column,
                             responsibilities=responsibilities).select(
        "*", F.lit(model_name).alias(MODEL_NAME),
        F.lit(str(model_version)).alias(MODEL_VERSION), F.lit(run_id).alias(SCORING_RUN_ID),
        # From text: a datetime literal would be shifted by the Python process's time zone.
        F.lit(when.strftime("%Y-%m-%d %H:%M:%S.%f")).cast("timestamp_ntz").alias(SCORED_AT))
    with translated_errors():
        written = write_table(spark, scored, table, mode="overwrite",
                              replace_where={SCORING_RUN_ID: run_id}, engine=engine)
    return ScoringResult(written.table, written.version, run_id, model_name, str(model_version),
                         when)


def read_and_join(spark: SparkSession, tables: Mapping[str, str], *, id_column: str = "id",
                  features_column: str | Mapping[str, str] = "features",
                  versions: Mapping[str, int | None] | None = None,
                  engine: str = "auto") -> tuple[DataFrame, dict[str, int]]:
    """Read per-modality Delta tables (pinned ``versions`` optional) and full-outer-join them.

    ``features_column``: one name for every table, or {modality: column}.
    Returns (DataFrame(id, <modality>...), {modality: Delta version read}).
    """
    from mmgmm_spark.spark.data import join_modalities
    from mmgmm_spark.storage import read_modality

    columns = ({name: features_column for name in tables} if isinstance(features_column, str)
               else dict(features_column))
    frames, read_versions = {}, {}
    for name, table in tables.items():
        read = read_modality(spark, table, id_col=id_column, features_col=columns[name],
                             version=(versions or {}).get(name), engine=engine)
        frames[name] = read.df
        read_versions[name] = read.version
    joined = join_modalities(frames, id_column, columns)
    return joined, read_versions
