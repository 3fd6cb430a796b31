"""What a fusion strategy is: its capabilities and the hooks the estimator calls.

A strategy is one object (a subclass of :class:`FusionStrategy`, one module each:
:mod:`.joint`, :mod:`.early`, :mod:`.late`) registered in :mod:`.registry`. The estimator
(:class:`mmgmm_spark.models.fusion.model.FusionModel`), the Spark preprocessing
(:class:`mmgmm_spark.models.fusion.preprocessing.Preprocessing`), the pipeline and the
tracking code ask it, never compare strategy names. The hooks receive the fitted state
through the small :class:`FittedFusion` protocol, so this module needs nothing of the
estimator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from mmgmm_spark.core.batch import Batch, Block
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.preprocessing import ModalityPreprocessor, preprocess_batch
from mmgmm_spark.models import scores
from mmgmm_spark.models.mixture import MultimodalGaussianMixture

JOINT = "joint"
"""Key of the one mixture of the ``joint`` strategy."""
EARLY = "early"
"""Name of the single concatenated modality of the ``early`` strategy's mixture."""
LOG_LIKELIHOOD = scores.LOG_LIKELIHOOD.name
CLUSTER = scores.CLUSTER.name
"""Keys of :meth:`FusionStrategy.columns` besides the plain modality names."""

Arrays = dict[str, np.ndarray]
Stats = dict[str, tuple[float, float]]


class FittedFusion(Protocol):
    """The fitted state a strategy's hooks read (a fitted ``FusionModel`` has it)."""

    modalities: list[Modality]
    preprocessors_: dict[str, ModalityPreprocessor]
    mixtures_: dict[str, MultimodalGaussianMixture]
    late_stats_: Stats


@dataclass(frozen=True)
class TrainingSet:
    """One mixture to select: its key in ``mixtures_``, input modalities and (n, d_m) rows."""

    key: str
    modalities: list[Modality]
    data: Arrays


class FusionStrategy:
    """One way to fuse modalities into one anomaly score.

    Capabilities (class attributes; the application refuses what a strategy lacks):
        name: the value of ``model.fusion`` / ``FusionConfig.strategy``.
        summary: what it fits, for messages ("fits one mixture per modality").
        resume: a Spark fit can be checkpointed and resumed (``mmgmm train --resume``).
        sweep: ``model.sweep`` can select its one mixture by BIC.
        responsibilities: component posteriors are defined (one set of components).
        fusion_weights: ``Modality.weight`` scales the modality's log-density.
        per_modality: one mixture per modality, fitted as nested runs on Spark.
        plain_mixture: without preprocessing it is a bare :class:`MultimodalGaussianMixture`
            (no :class:`FusionModel` is needed around it).
        transforms_rows: the mixture's rows are not the input rows (a selection/reshaping).
        fisher_vectors: ``mmgmm features`` is defined: one mixture whose blocks are the
            (preprocessed) modalities, so every row has posteriors and a Fisher vector.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    resume: ClassVar[bool] = True
    sweep: ClassVar[bool] = True
    responsibilities: ClassVar[bool] = True
    fusion_weights: ClassVar[bool] = False
    per_modality: ClassVar[bool] = False
    plain_mixture: ClassVar[bool] = False
    transforms_rows: ClassVar[bool] = False
    fisher_vectors: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<fusion strategy {self.name!r}>"

    # ------------------------------------------------------------------------- fitting
    def mixture_keys(self, modalities: list[Modality] | tuple[Modality, ...]) -> list[str]:
        """Keys of the fitted ``mixtures_`` (a single key unless :attr:`per_modality`)."""
        raise NotImplementedError

    def training_sets(self, modalities: list[Modality], batch: Batch) -> list[TrainingSet]:
        """The mixture(s) to fit on a validated input ``batch`` (one per key)."""
        raise NotImplementedError

    def mixture_inputs(self, modalities: list[Modality],
                       preprocessors: Mapping[str, ModalityPreprocessor],
                       projected: Arrays, covariance_type: str
                       ) -> tuple[list[Modality], Arrays]:
        """(mixture modalities, {name: (n, q)}) of one candidate: one block per modality at
        its projected width, weighted if :attr:`fusion_weights`."""
        out = [Modality(m.name, preprocessors[m.name].output_dim, covariance_type,
                        m.weight if self.fusion_weights else 1.0) for m in modalities]
        return out, projected

    def fitted_stats(self, model: FittedFusion, dense: Arrays) -> Stats:
        """Statistics of the training rows kept with the model ({} but for ``late``)."""
        return {}

    def preprocessed_names(self, key: str, modalities: list[Modality]) -> list[str]:
        """The modalities whose preprocessing feeds mixture ``key``."""
        return [m.name for m in modalities]

    # ------------------------------------------------------------------------- scoring
    def columns(self, model: FittedFusion, dense: Arrays) -> Arrays:
        """Per row (each (n,)): ``log_likelihood``, ``cluster`` and each modality's
        log-likelihood under its plain name, from {modality: (n, d_m)} (NaN rows: missing)."""
        raise NotImplementedError

    def log_responsibilities(self, model: FittedFusion, dense: Arrays) -> np.ndarray:
        """(n, K) log posterior of each component (only if :attr:`responsibilities`)."""
        raise ValueError(f"Responsibilities are not defined for '{self.name}' models.")

    def log_density(self, model: FittedFusion, columns: Arrays) -> np.ndarray:
        """(n,) log-density of the input rows from :meth:`columns` (input units)."""
        return columns[LOG_LIKELIHOOD]

    def consistency_error(self, model: FittedFusion) -> str | None:
        """Why a loaded model's mixtures do not fit this strategy (None: they do)."""
        expected = set(self.mixture_keys(model.modalities))
        if set(model.mixtures_) != expected:
            return (f"fusion artefact for '{self.name}' has mixtures "
                    f"{sorted(model.mixtures_)}, expected {sorted(expected)}.")
        return None

    # ------------------------------------------------------------ preprocessing (Spark)
    def mixture_modalities(self, modalities: tuple[Modality, ...],
                           preprocessors: Mapping[str, ModalityPreprocessor]) -> list[Modality]:
        """The Spark fit's mixture modalities: each input modality at its transformed width,
        with its own covariance type and weight."""
        return [Modality(m.name, preprocessors[m.name].output_dim, m.covariance_type, m.weight)
                for m in modalities]

    def transform(self, batch: Batch, preprocessors: Mapping[str, ModalityPreprocessor],
                  names: list[str]) -> Batch:
        """Rows of input ``batch`` as the mixture sees them (missing stays missing)."""
        return preprocess_batch(batch, dict(preprocessors))

    def coordinate_blocks(self, projected: list[str]) -> list[str]:
        """The mixture blocks holding the coordinates of the ``projected`` modalities."""
        return projected

    def block_names(self, names: list[str]) -> list[str]:
        """The mixture's block names for input modalities ``names``."""
        return names

    def describe_rows(self, source: str) -> str:
        """What the mixture's rows of ``source`` are (for messages)."""
        return source


# ----------------------------------------------------------------- shared scoring helpers
def dense(batch: Batch) -> Arrays:
    """{modality: (n, d_m)} of a batch, NaN rows where missing."""
    return {name: block.dense() for name, block in batch.blocks.items()}


def projected_rows(model: FittedFusion, data: Arrays) -> Arrays:
    """{modality: (n, q_m)} the preprocessed rows (NaN rows stay NaN)."""
    return {name: p.transform(data[name]) for name, p in model.preprocessors_.items()}


def residual_terms(model: FittedFusion, data: Arrays) -> Arrays:
    """{modality: (n,)} the preprocessing's log-density terms (NaN where missing)."""
    return {name: p.residual_log_density(data[name]) for name, p in model.preprocessors_.items()}


def observed(x: np.ndarray) -> np.ndarray:
    """(n,) True where row of (n, d) ``x`` is not all NaN."""
    return ~np.isnan(x).all(axis=1)


def single_block(name: str, values: np.ndarray, weights: np.ndarray | None = None) -> Batch:
    """A batch of one fully observed block ``name`` of (n, d) ``values`` (row ``weights``
    (n,) or None)."""
    n_rows = values.shape[0]
    return Batch(n_rows, {name: Block(np.ones(n_rows, dtype=bool), values)}, weights)
