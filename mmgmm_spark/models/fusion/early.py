"""``early``: every (preprocessed) modality concatenated into one block, the scikit-learn way.

The mixture has one block, :data:`EARLY`, with one covariance (full unless every modality
declares the same type), fitted on the rows observing every modality. A row missing a
modality is scored by the exact Gaussian marginal over its observed coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mmgmm_spark.core.batch import Batch, Block
from mmgmm_spark.core.densities import Centred, log_gaussian_density, logsumexp_rows
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import GaussianBlock
from mmgmm_spark.core.preprocessing import ModalityPreprocessor, preprocess_batch
from mmgmm_spark.models.fusion.base import (
    CLUSTER,
    EARLY,
    LOG_LIKELIHOOD,
    Arrays,
    FittedFusion,
    FusionStrategy,
    TrainingSet,
    dense,
    observed,
    projected_rows,
    residual_terms,
)
from mmgmm_spark.models.mixture import MultimodalGaussianMixture


class EarlyFusion(FusionStrategy):
    """One mixture of the concatenated modalities, fitted on the complete rows."""

    name = EARLY
    summary = "fits one mixture of the concatenated modalities"
    transforms_rows = True

    def mixture_keys(self, modalities: list[Modality] | tuple[Modality, ...]) -> list[str]:
        return [EARLY]

    def training_sets(self, modalities: list[Modality], batch: Batch) -> list[TrainingSet]:
        complete = batch.complete_rows()
        return [TrainingSet(EARLY, list(modalities),
                            {name: x[complete] for name, x in dense(batch).items()})]

    def mixture_inputs(self, modalities: list[Modality],
                       preprocessors: Mapping[str, ModalityPreprocessor],
                       projected: Arrays, covariance_type: str
                       ) -> tuple[list[Modality], Arrays]:
        dim = sum(p.output_dim for p in preprocessors.values())
        x = np.hstack([projected[m.name] for m in modalities])
        return [Modality(EARLY, dim, covariance_type)], {EARLY: x}

    def columns(self, model: FittedFusion, data: Arrays) -> Arrays:
        mixture, spans = model.mixtures_[EARLY], spans_of(model)
        x, extra = projected_rows(model, data), residual_terms(model, data)
        joint = _log_prob(model, x)
        out = {LOG_LIKELIHOOD: logsumexp_rows(joint)
               + sum(np.nan_to_num(r) for r in extra.values()),
               CLUSTER: joint.argmax(axis=1).astype(np.int32)}
        for m in model.modalities:
            block = x[m.name]
            column = np.full(len(block), np.nan)
            rows = observed(block)
            column[rows] = logsumexp_rows(marginal_log_prob(
                mixture, block[rows], spans[m.name])) + extra[m.name][rows]
            out[m.name] = column
        return out

    def log_responsibilities(self, model: FittedFusion, data: Arrays) -> np.ndarray:
        joint = _log_prob(model, projected_rows(model, data))
        return joint - logsumexp_rows(joint)[:, None]

    def mixture_modalities(self, modalities: tuple[Modality, ...],
                           preprocessors: Mapping[str, ModalityPreprocessor]) -> list[Modality]:
        """The one concatenated block (see :func:`early_covariance_type`)."""
        width = sum(p.output_dim for p in preprocessors.values())
        return [Modality(EARLY, width, early_covariance_type(modalities))]

    def transform(self, batch: Batch, preprocessors: Mapping[str, ModalityPreprocessor],
                  names: list[str]) -> Batch:
        """Only the rows observing every modality, concatenated into one block."""
        return concatenated(preprocess_batch(batch, dict(preprocessors)), names)

    def coordinate_blocks(self, projected: list[str]) -> list[str]:
        return [EARLY]

    def block_names(self, names: list[str]) -> list[str]:
        return [EARLY]

    def describe_rows(self, source: str) -> str:
        return f"{source} (early fusion: the rows observing every modality)"


EARLY_FUSION = EarlyFusion()


def early_covariance_type(modalities: tuple[Modality, ...] | list[Modality]) -> str:
    """Covariance type of the ``early`` block: the modalities' type when they all have the
    same, else ``full`` (the concatenated block of the scikit-learn approach)."""
    types = {m.covariance_type for m in modalities}
    return types.pop() if len(types) == 1 else "full"


def concatenated(batch: Batch, names: list[str]) -> Batch:
    """The rows of ``batch`` observing every modality, blocks ``names`` side by side as the
    one ``early`` block."""
    complete = batch.take(np.flatnonzero(batch.complete_rows()))
    values = np.hstack([complete.blocks[name].values for name in names])
    return Batch(complete.n_rows, {EARLY: Block(np.ones(complete.n_rows, dtype=bool), values)},
                 complete.weights)


def spans_of(model: FittedFusion) -> dict[str, np.ndarray]:
    """{modality: its column indices in the concatenated ``early`` block}."""
    widths = [model.preprocessors_[m.name].output_dim for m in model.modalities]
    starts = np.cumsum([0, *widths])
    return {m.name: np.arange(starts[i], starts[i + 1]) for i, m in enumerate(model.modalities)}


def _log_prob(model: FittedFusion, x: Arrays) -> np.ndarray:
    """(n, K) log pi_k + log N_k(x) of the ``early`` mixture of projected rows ``x``, each row
    by the exact marginal over the modalities it observes."""
    mixture, spans, modalities = model.mixtures_[EARLY], spans_of(model), model.modalities
    values = np.hstack([x[m.name] for m in modalities])
    pattern = np.stack([observed(x[m.name]) for m in modalities], axis=1)
    out = np.empty((len(values), mixture.n_components))
    for key in np.unique(pattern, axis=0):
        rows = (pattern == key).all(axis=1)
        index = np.concatenate([spans[m.name] for m, seen in zip(modalities, key, strict=True)
                                if seen])
        out[rows] = marginal_log_prob(mixture, values[np.ix_(rows, index)], index)
    return out


def marginal_log_prob(mixture: MultimodalGaussianMixture, x: np.ndarray,
                      index: np.ndarray) -> np.ndarray:
    """(n, K) log pi_k + log N(x | marginal of component k on coordinates ``index``)."""
    block = mixture.params.blocks[EARLY]
    k = mixture.n_components
    cov = block.full_covariances(k)[:, index][:, :, index]
    sub = GaussianBlock.from_covariances("full", block.means[:, index], cov, EARLY)
    return log_gaussian_density(Centred(np.zeros(len(index)), x), sub) + np.log(mixture.weights_)
