"""Spark rows as EM training data: the statistics pass as map tasks + ``treeAggregate``.

Each pass broadcasts the parameters, runs the E-step and the sufficient statistics as map
tasks over the cached numpy batches, and reduces them with ``treeAggregate``; the M-step runs
on the driver (in :func:`mmgmm_spark.core.em.fit_em`, the one EM driver). Without the RDD API
(Spark Connect) each partition returns its statistics as one flat vector and the driver
merges them: the driver holds one vector per partition, never per row.

Importing this module registers Spark DataFrames and :class:`CachedBlocks` as training data
(:func:`mmgmm_spark.core.training.register_source`), so ``model.fit(df)`` works; the package
root imports it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import MixtureParams
from mmgmm_spark.core.stats import SufficientStats, accumulate_stats
from mmgmm_spark.core.training import StatsPass, register_source
from mmgmm_spark.spark.data import CachedBlocks, cached_blocks

log = logging.getLogger(__name__)

JOB_GROUP = "mmgmm-spark-em"
"""Spark job group of every EM pass (visible in the Spark UI and the status tracker)."""


class SparkStatsPass:
    """``params -> SufficientStats`` over all cached rows; each call is one named Spark job.

    ``modalities`` are the model's (their covariance types decide the statistics; the cache's
    own modalities only have to match them in names and widths); ``compute_dtype`` is the
    kernels' (:func:`~mmgmm_spark.core.stats.accumulate_stats`).
    """

    def __init__(self, data: CachedBlocks, modalities: tuple[Modality, ...], n_components: int,
                 tree_depth: int = 2, compute_dtype: str = "float64") -> None:
        cached = [(m.name, m.dim) for m in data.modalities]
        if [(m.name, m.dim) for m in modalities] != cached:
            raise ValueError(f"The model's modalities {[m.name for m in modalities]} do not "
                             f"match the cached blocks' (name, width) {cached}.")
        self.data = data
        self.modalities = tuple(modalities)
        self.n_components = n_components
        self.tree_depth = tree_depth
        self.compute_dtype = compute_dtype
        self.passes = 0

    def __call__(self, params: MixtureParams) -> SufficientStats:
        self.passes += 1
        modalities, k, dtype = self.modalities, self.n_components, self.compute_dtype
        codec = (lambda stats: (stats.to_vector(),),
                 lambda arrays: SufficientStats.from_vector(arrays[0], modalities, k))
        zero = SufficientStats.zero(modalities, k)
        if self.data.rdd is None:    # Spark Connect: the parameters travel in the closure
            return self.data.aggregate(
                lambda batch: accumulate_stats(batch, params, modalities, compute_dtype=dtype),
                SufficientStats.merge, zero, codec, self.tree_depth)
        context = self.data.rdd.context
        context.setJobGroup(JOB_GROUP, f"mmgmm-spark EM pass {self.passes}")
        broadcast = context.broadcast(params)
        try:
            return self.data.aggregate(
                lambda batch: accumulate_stats(batch, broadcast.value, modalities,
                                               compute_dtype=dtype),
                SufficientStats.merge, zero, codec, self.tree_depth)
        finally:
            broadcast.destroy()
            context.setLocalProperty("spark.jobGroup.id", None)
            context.setJobDescription(None)


@dataclass(frozen=True)
class SparkRows:
    """:class:`~mmgmm_spark.core.training.TrainingData` over cached blocks (the caller, or
    :func:`spark_rows`, unpersists them); initialised on a bounded driver-side sample."""

    data: CachedBlocks

    @property
    def n_rows(self) -> int:
        return self.data.n_rows

    @property
    def source(self) -> str:
        return self.data.source

    def init_sample(self, max_rows: int, seed: int) -> Batch:
        sample = self.data.sample(max_rows, seed=seed)
        log.info("Fitting on %s: %d rows (%s path, init sample %d rows)", self.source,
                 self.n_rows, "RDD" if self.data.rdd is not None else "DataFrame-only",
                 sample.n_rows)
        return sample

    def stats_pass(self, modalities: tuple[Modality, ...], n_components: int,
                   tree_depth: int = 2, compute_dtype: str = "float64") -> StatsPass:
        return SparkStatsPass(self.data, modalities, n_components, tree_depth, compute_dtype)


@contextlib.contextmanager
def spark_rows(data: DataFrame | CachedBlocks, modalities: tuple[Modality, ...],
               sample_weight: str | None = None, **cache_options: Any) -> Iterator[SparkRows]:
    """``data`` as training data for one fit; a DataFrame (a column per modality, null =
    missing; ``sample_weight``: the name of its weight column, or None) is cached for it and
    then unpersisted (``cache_options``: see :func:`~mmgmm_spark.spark.data.cached_blocks`)."""
    if sample_weight is not None and not isinstance(sample_weight, str):
        raise TypeError(f"sample_weight for a Spark DataFrame is the name of its weight "
                        f"column, got {type(sample_weight).__name__}.")
    with cached_blocks(data, modalities, weight_column=sample_weight, **cache_options) as blocks:
        yield SparkRows(blocks)


def is_spark_dataframe(data: Any) -> bool:
    """True for a classic or Spark Connect DataFrame."""
    return type(data).__module__.startswith("pyspark.sql") and hasattr(data, "schema")


register_source(lambda data: is_spark_dataframe(data) or isinstance(data, CachedBlocks),
                spark_rows)
