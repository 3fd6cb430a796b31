"""The distributed EM fit: the core's EM loop over Spark statistics passes.

Each pass broadcasts the parameters, runs the E-step and the sufficient statistics as map
tasks over the cached numpy batches, and reduces them with ``treeAggregate``; the M-step runs
on the driver (in :func:`mmgmm_spark.core.em.run_em`). Without the RDD API (Spark Connect)
each partition returns its statistics as one flat vector and the driver merges them: the
driver holds one vector per partition, never per row.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.em import IterationCallback
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import MixtureParams
from mmgmm_spark.core.stats import SufficientStats, accumulate_stats
from mmgmm_spark.spark.data import CachedBlocks

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from mmgmm_spark.io.checkpoints import Checkpoint, Checkpointer
    from mmgmm_spark.models.mixture import MultimodalGaussianMixture

log = logging.getLogger(__name__)

JOB_GROUP = "mmgmm-spark-em"
"""Spark job group of every EM pass (visible in the Spark UI and the status tracker)."""


class SparkStatsPass:
    """``params -> SufficientStats`` over all cached rows; each call is one named Spark job.

    ``modalities`` are the model's (their covariance types decide the statistics; the cache's
    own modalities only have to match them in names and widths).
    """

    def __init__(self, data: CachedBlocks, modalities: tuple[Modality, ...], n_components: int,
                 tree_depth: int = 2) -> None:
        cached = [(m.name, m.dim) for m in data.modalities]
        if [(m.name, m.dim) for m in modalities] != cached:
            raise ValueError(f"The model's modalities {[m.name for m in modalities]} do not "
                             f"match the cached blocks' (name, width) {cached}.")
        self.data = data
        self.modalities = tuple(modalities)
        self.n_components = n_components
        self.tree_depth = tree_depth
        self.passes = 0

    def __call__(self, params: MixtureParams) -> SufficientStats:
        self.passes += 1
        modalities, k = self.modalities, self.n_components
        codec = (lambda stats: (stats.to_vector(),),
                 lambda arrays: SufficientStats.from_vector(arrays[0], modalities, k))
        zero = SufficientStats.zero(modalities, k)
        if self.data.rdd is None:    # Spark Connect: the parameters travel in the closure
            return self.data.aggregate(
                lambda batch: accumulate_stats(batch, params, modalities),
                SufficientStats.merge, zero, codec, self.tree_depth)
        context = self.data.rdd.context
        context.setJobGroup(JOB_GROUP, f"mmgmm-spark EM pass {self.passes}")
        broadcast = context.broadcast(params)
        try:
            return self.data.aggregate(
                lambda batch: accumulate_stats(batch, broadcast.value, modalities),
                SufficientStats.merge, zero, codec, self.tree_depth)
        finally:
            broadcast.destroy()
            context.setLocalProperty("spark.jobGroup.id", None)
            context.setJobDescription(None)


def fit_cached(model: MultimodalGaussianMixture, data: CachedBlocks, *,
               on_iteration: IterationCallback | None = None, tree_depth: int = 2,
               init_sample_rows: int = 100_000, checkpointer: Checkpointer | None = None,
               resume: Checkpoint | None = None) -> MultimodalGaussianMixture:
    """Fit ``model`` by EM over already cached blocks (the caller unpersists them).

    Initialisation runs on a bounded driver-side sample of ``init_sample_rows`` rows.
    ``checkpointer`` writes a checkpoint after every iteration; ``resume`` (a loaded
    :class:`mmgmm_spark.io.checkpoints.Checkpoint`) continues an interrupted fit from its last
    completed iteration (see :mod:`mmgmm_spark.io.checkpoints`).
    """
    if data.n_rows < model.n_components:
        raise DataValidationError(
            f"{data.source}: {data.n_rows} rows, fewer than n_components="
            f"{model.n_components}. Lower n_components or add rows.")
    rng = model._random_state()
    seed = model.random_state if isinstance(model.random_state, int) else 0
    sample = data.sample(init_sample_rows, seed=seed)
    log.info("Fitting K=%d on %d rows of %s (%s path, init sample %d rows)", model.n_components,
             data.n_rows, data.source, "RDD" if data.rdd is not None else "DataFrame-only",
             sample.n_rows)
    stats_pass = SparkStatsPass(data, model.modalities, model.n_components, tree_depth)
    initials = lambda _: model.initial_params(sample, rng)  # noqa: E731
    if checkpointer is None and resume is None:
        result = model.fit_em(initials, stats_pass, on_iteration)
    else:
        from mmgmm_spark.io.checkpoints import resumable_fit_em

        if resume is not None:
            resume.restore_rng(rng)
        if checkpointer is not None:
            checkpointer.rng = rng
        result = resumable_fit_em(model, initials, stats_pass, on_iteration,
                                  checkpointer=checkpointer, resume=resume)
    return model.set_result(result, data.n_rows)


def fit_dataframe(model: MultimodalGaussianMixture, df: DataFrame, *,
                  on_iteration: IterationCallback | None = None, tree_depth: int = 2,
                  rows_per_block: int = 65_536, init_sample_rows: int = 100_000,
                  use_rdd: bool | None = None, source: str = "DataFrame",
                  checkpointer: Checkpointer | None = None, resume: Checkpoint | None = None,
                  ) -> MultimodalGaussianMixture:
    """Fit ``model`` on a Spark DataFrame with one array/vector column per modality.

    Args:
        model: the estimator, carrying modalities and hyperparameters.
        df: a column named after each modality (null = modality missing); others are ignored.
        on_iteration: called after each EM iteration.
        tree_depth: depth of ``treeAggregate``.
        rows_per_block: rows per cached numpy batch.
        init_sample_rows: rows sampled to the driver for initialisation (bounded).
        use_rdd: force the RDD (True) or the DataFrame-only (False) path; default: RDD
            where the session has the RDD API.
        source: what the data is called in error messages.
        checkpointer, resume: see :func:`fit_cached`.
    """
    data = CachedBlocks(df, model.modalities, source, rows_per_block, use_rdd)
    try:
        return fit_cached(model, data, on_iteration=on_iteration, tree_depth=tree_depth,
                          init_sample_rows=init_sample_rows, checkpointer=checkpointer,
                          resume=resume)
    finally:
        data.unpersist()
