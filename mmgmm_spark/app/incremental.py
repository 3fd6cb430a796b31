"""Incremental scoring: score only the entities whose rows changed since the last run.

The base is the newest finished scoring run of the same model version into the same output
table (:mod:`mmgmm_spark.tracking.history`: its MLflow params record the Delta version of
every modality table it read). For every modality table whose version moved since, the
storage engine reports the rows added and removed (Change Data Feed or the log's files,
:mod:`mmgmm_spark.storage.changes`); the entities to score are those with a new or different
row, or a row removed, in any modality, read from the current snapshots exactly as a full
run reads them (so their scores equal a full re-score's). They are appended as one
transaction, tagged with the new scoring run id.

* No base (first run, a new model version under the alias, a modality the base did not
  read): a full run.
* Nothing changed: a run that records the versions read, scores nothing and writes nothing.
* An id removed from every modality table is counted (metric ``n_deleted``) and its last
  score stays in the output table: readers wanting current entities join with the modality
  tables; :func:`mmgmm_spark.spark.population.latest_scores` gives the latest row per id.
* A failed run is recorded ``FAILED`` in MLflow and is never a base; its rows were not
  committed unless the failure came after the commit, in which case the next run scores the
  same entities again (same scores). ``--scoring-run-id`` re-runs a run on its recorded
  base, replacing its own rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mmgmm_spark.app.config import AppConfig
from mmgmm_spark.app.pipeline import (
    Features,
    ModalityReads,
    joined_rows,
    load_matching_model,
    read_modalities,
    score_checked,
    tracking_config,
)
from mmgmm_spark.spark.score import ScoringResult
from mmgmm_spark.storage import check_ids, net_changes, read_changes
from mmgmm_spark.tracking.drift import PopulationChange
from mmgmm_spark.tracking.history import (
    BASE_RUN_PARAM,
    MODE_PARAM,
    NO_BASE,
    ScoringRunRecord,
    last_scoring_run,
    recorded_base,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncrementalResult:
    """One incremental scoring run.

    Attributes:
        mode: ``full`` (no usable base) or ``incremental``.
        base_run_id: the scoring run whose versions were compared, or None.
        n_changed: entities with a new, changed or removed row in some modality (None for
            a full run, and likewise the next two).
        n_scored: entities scored and appended (0: nothing written).
        n_deleted: changed entities present in no modality table any more (not scored).
        methods: {modality: how its changes were read} for the tables that moved.
        written: the commit, or None when nothing was scored.
    """

    mode: str
    base_run_id: str | None
    n_changed: int | None
    n_scored: int | None
    n_deleted: int | None
    methods: dict[str, str]
    written: ScoringResult | None


def _base(config: AppConfig, name: str, version: str, features: Features,
          scoring_run_id: str | None) -> ScoringRunRecord | None:
    """The run to compare with, if it read every configured modality."""
    tracking = tracking_config(config)
    base = (recorded_base(tracking, scoring_run_id) if scoring_run_id else
            last_scoring_run(tracking, name, version, config.scoring.output_table))
    if base is not None and set(features.versions) - set(base.versions):
        log.info("Scoring run %s did not read modalities %s: full scoring run", base.run_id,
                 sorted(set(features.versions) - set(base.versions)))
        return None
    return base


def changed_ids(spark: SparkSession, config: AppConfig, since: dict[str, int],
                until: dict[str, int]) -> tuple[DataFrame | None, dict[str, str]]:
    """Distinct ids (one column) with a row added, changed or removed in any modality table
    between the versions ``since`` and ``until`` ({modality: version}); None if none moved."""
    id_column, parts, methods = config.data.id_column, [], {}
    for m in config.data.modalities:
        if since[m.name] == until[m.name]:
            continue
        changes = read_changes(spark, m.table, since[m.name], until[m.name],
                               engine=config.storage.engine)
        net = net_changes(changes, id_column, [m.features_column])
        parts += [net.changed, net.deleted]
        methods[m.name] = changes.method
        log.info("Modality '%s' (%s): versions %d..%d read from its %s", m.name, m.table,
                 since[m.name], until[m.name], changes.method)
    if not parts:
        return None, methods
    return reduce(DataFrame.unionByName, parts).distinct(), methods


def score_incremental(spark: SparkSession, config: AppConfig,
                      scoring_run_id: str | None = None) -> IncrementalResult:
    """Score the entities changed since the last scoring run of the model version (see the
    module docstring); the run's params record ``scoring.mode`` and ``scoring.base_run_id``,
    its metrics ``n_changed``, ``n_scored`` and ``n_deleted`` (incremental runs)."""
    reads = read_modalities(spark, config, check=False)  # ids checked below, where read
    features = Features(joined_rows(config, reads.frames), reads.modalities, reads.versions)
    registered = load_matching_model(config, features)
    base = _base(config, registered.name, registered.version, features, scoring_run_id)
    params = {MODE_PARAM: "full" if base is None else "incremental",
              BASE_RUN_PARAM: NO_BASE if base is None else base.run_id}
    if base is None:
        for m in config.data.modalities:
            check_ids(reads.frames[m.name], m.table, config.data.id_column, m.features_column)
        written = score_checked(spark, config, features, registered, scoring_run_id,
                                features.df, extra_params=params)
        return IncrementalResult("full", None, None, None, None, {}, written)
    ids, methods = changed_ids(spark, config, base.versions, features.versions)
    changed = None if ids is None else ChangedIds.of(ids, config.data.id_column)
    rows = None
    try:
        rows, counts = _changed_rows(config, reads, changed)
        metrics = dict(zip(("n_changed", "n_scored", "n_deleted"), counts, strict=True))
        old = None if changed is None else _restricted_join(
            config, read_modalities(spark, config, base.versions, check=False).frames, changed)
        written = score_checked(spark, config, features, registered, scoring_run_id,
                                rows if counts[1] else None, extra_params=params,
                                extra_metrics=metrics,
                                population_change=PopulationChange(base.run_id, old))
    finally:
        for cached in (None if changed is None else changed.frame, rows):
            if cached is not None:
                cached.unpersist()
    return IncrementalResult("incremental", base.run_id, *counts, methods, written)


MAX_BROADCAST_IDS = 1_000_000
"""Changed ids up to this many are broadcast to the tasks that filter every table read (a
semi-join without a shuffle); more are semi-joined with a shuffle."""


@dataclass(frozen=True)
class ChangedIds:
    """The changed ids: a cached one-column ``frame``, their ``count``, how many are null
    (``n_null``) and their range (``low``, ``high``; None when there are none).

    Every table read is filtered by the range first, a predicate Spark pushes down to the
    Parquet reader (row-group statistics: data holding no id of the range is skipped, so a
    table laid out by id reads only its files with changed ids), then semi-joined with the
    ids. No id is brought to the driver: an ``IN`` list of the ids would cost one Py4J call
    per id and Parquet turns one of more than 10 values into the same range anyway.
    """

    frame: DataFrame
    count: int
    n_null: int
    low: object
    high: object
    id_column: str

    @classmethod
    def of(cls, ids: DataFrame, id_column: str) -> ChangedIds:
        ids = ids.cache()
        column = F.col(id_column)
        count, n_null, low, high = ids.agg(
            F.count(F.lit(1)), F.count(F.when(column.isNull(), 1)), F.min(column),
            F.max(column)).first()
        return cls(ids, count, n_null, low, high, id_column)

    def restrict(self, df: DataFrame) -> DataFrame:
        """The rows of ``df`` whose id is one of these."""
        if self.low is None:
            return df.where(F.lit(False))
        ids = F.broadcast(self.frame) if self.count <= MAX_BROADCAST_IDS else self.frame
        return (df.where(F.col(self.id_column).between(self.low, self.high))
                .join(ids, self.id_column, "left_semi"))


def _restricted_join(config: AppConfig, frames: dict[str, DataFrame],
                     changed: ChangedIds) -> DataFrame:
    """The changed ids' rows of every modality table (filtered before the outer join, so
    only their rows are read where the layout allows and joined)."""
    return joined_rows(config, {name: changed.restrict(df) for name, df in frames.items()})


def _changed_rows(config: AppConfig, reads: ModalityReads, changed: ChangedIds | None
                  ) -> tuple[DataFrame | None, tuple[int, int, int]]:
    """The current rows of the changed ids (cached) and the (changed, to score, deleted)
    counts; their ids are checked as a full run checks every table's (one aggregation)."""
    if changed is None:
        return None, (0, 0, 0)
    id_column = config.data.id_column
    rows = _restricted_join(config, reads.frames, changed).cache()
    n_rows, n_distinct = rows.agg(F.count(F.lit(1)), F.count_distinct(id_column)).first()
    n_changed = changed.count
    if n_rows != n_distinct or changed.n_null:
        for m in config.data.modalities:  # names the table (a null or duplicated id)
            check_ids(reads.frames[m.name], m.table, id_column, m.features_column)
    return rows, (n_changed, n_distinct, n_changed - n_distinct)
