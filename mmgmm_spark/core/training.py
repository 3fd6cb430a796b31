"""The typed boundary of every fit: rows EM can fit, wherever they live.

:class:`TrainingData` is what the EM driver (:func:`mmgmm_spark.core.em.fit_em`) needs of
rows: their count, a sample to initialise from and a statistics pass. :class:`InMemoryRows`
implements it over a :class:`Batch`; the Spark layer's cached blocks implement it over a
cluster and register, with :func:`register_source`, how a Spark DataFrame becomes one — so a
model of a lower layer fits a DataFrame without importing Spark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mmgmm_spark.core.batch import Batch, batch_from_arrays
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import MixtureParams
from mmgmm_spark.core.stats import SufficientStats, accumulate_stats

StatsPass = Callable[[MixtureParams], SufficientStats]


@runtime_checkable
class TrainingData(Protocol):
    """Rows EM can fit, wherever they live: the typed boundary of every fit.

    Attributes:
        n_rows: number of rows.
        source: what the rows are called in error messages.
    """

    n_rows: int
    source: str

    def init_sample(self, max_rows: int, seed: int) -> Batch:
        """At most about ``max_rows`` rows for initialisation, drawn with ``seed``."""

    def stats_pass(self, modalities: tuple[Modality, ...], n_components: int,
                   tree_depth: int, compute_dtype: str = "float64") -> StatsPass:
        """``params -> SufficientStats`` over all rows, for a model of ``modalities``
        (reduced over a tree of depth ``tree_depth`` where the rows are distributed), the
        kernels multiplying in ``compute_dtype`` (see :func:`accumulate_stats`)."""


@dataclass(frozen=True)
class InMemoryRows:
    """:class:`TrainingData` over a validated in-memory :class:`Batch` (initialised on all rows)."""

    batch: Batch
    source: str = "data"

    @property
    def n_rows(self) -> int:
        return self.batch.n_rows

    def init_sample(self, max_rows: int, seed: int) -> Batch:
        return self.batch

    def stats_pass(self, modalities: tuple[Modality, ...], n_components: int,
                   tree_depth: int = 2, compute_dtype: str = "float64") -> StatsPass:
        return lambda params: accumulate_stats(self.batch, params, modalities,
                                               compute_dtype=compute_dtype)


Source = Callable[..., contextlib.AbstractContextManager[TrainingData]]
"""``source(data, modalities, sample_weight=..., **options)``: a context in which ``data`` is
TrainingData (``sample_weight``: None or the name of the source's weight column)."""

_SOURCES: list[tuple[Callable[[Any], bool], Source]] = []


def register_source(accepts: Callable[[Any], bool], source: Source) -> None:
    """Let :func:`training_data` turn objects for which ``accepts(data)`` holds into rows."""
    if (accepts, source) not in _SOURCES:
        _SOURCES.append((accepts, source))


@contextlib.contextmanager
def training_data(data: Any, modalities: tuple[Modality, ...], sample_weight: Any = None,
                  **options: Any) -> Iterator[TrainingData]:
    """``data`` as :class:`TrainingData` for the duration of a fit.

    Args:
        data: a dict of (n, d_m) arrays (NaN rows = missing modality), an object that is
            already TrainingData, or one a registered source accepts (a Spark DataFrame).
        modalities: the model's modalities.
        sample_weight: row weights: (n,) numbers for a dict of arrays, the name of the weight
            column for a registered source; None: every row weighs 1.
        options: passed to a registered source (e.g. ``rows_per_block``); ``source`` also
            names in-memory rows in error messages (default "data").
    """
    for accepts, make in _SOURCES:  # first: a Connect DataFrame "has" every attribute
        if accepts(data):
            with make(data, modalities, sample_weight=sample_weight, **options) as rows:
                yield rows
            return
    if isinstance(data, TrainingData):
        if sample_weight is not None:
            raise TypeError(f"{data.source}: sample_weight cannot be applied to prepared "
                            "training data; give the weights when the rows are prepared.")
        yield data
        return
    source = options.get("source", "data")
    yield InMemoryRows(batch_from_arrays(data, modalities, source, sample_weight), source)
