"""The Spark jobs' fused model: preprocessing fitted from moments, then the model assembled.

:class:`FusionModel` selects K and the preprocessing by BIC in memory; on Spark the jobs fit
the preprocessing from distributed :class:`Moments` (or take the identity), then the mixture
on the transformed rows (per the strategy: :meth:`Preprocessing.transform`), and
:meth:`Preprocessing.model` (one mixture) or :func:`late_model` (one per modality) assembles
the same saved and scored :class:`FusionModel`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch, batch_from_arrays
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import DegenerateComponentWarning
from mmgmm_spark.core.preprocessing import ModalityPreprocessor, Moments
from mmgmm_spark.models.fusion.base import JOINT, FusionStrategy, single_block
from mmgmm_spark.models.fusion.config import (
    FUSION_PARAM,
    FusionConfig,
    capped,
    preprocessing_params,
)
from mmgmm_spark.models.fusion.late import MIN_STD
from mmgmm_spark.models.fusion.model import ArrayData, FusionModel
from mmgmm_spark.models.mixture import MultimodalGaussianMixture


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing fitted in front of the mixture(s) of one strategy (the Spark jobs' model).

    :class:`FusionModel` selects K and the preprocessing by BIC in memory; on Spark the jobs
    fit the preprocessing from distributed :class:`Moments` (or take the identity), then the
    mixture on the transformed rows, and :meth:`model` (``joint``, ``early``) or
    :func:`late_model` assembles the same saved/scored :class:`FusionModel`.

    Attributes:
        modalities: the input modalities (raw widths; covariance type and weight are the
            mixture's).
        preprocessors: {modality: fitted :class:`ModalityPreprocessor`}.
        config: its strategy, standardise (True/False), projection and preprocessing options
            were used; it is saved with the model.
    """

    modalities: tuple[Modality, ...]
    preprocessors: dict[str, ModalityPreprocessor]
    config: FusionConfig

    @classmethod
    def from_moments(cls, modalities: list[Modality], moments: Mapping[str, Moments],
                     config: FusionConfig) -> Preprocessing:
        """Fit every modality's preprocessor from the moments of its training rows."""
        if config.standardise == "auto":
            raise ValueError("Preprocessing from moments needs standardise true or false.")
        if config.normal_scores:
            raise ValueError("normal_scores needs quantiles, which the Spark preprocessing "
                             "does not compute yet: fit it in memory (FusionModel).")
        preprocessors = {}
        for m in modalities:
            try:
                preprocessors[m.name] = ModalityPreprocessor.fit_from_moments(
                    moments[m.name], capped(config.projection, m.dim),
                    standardise=bool(config.standardise), **config.preprocessor_options())
            except ValueError as error:
                raise ValueError(f"Preprocessing of modality '{m.name}': {error}") from None
        return cls(tuple(modalities), preprocessors, config)

    @classmethod
    def identity(cls, modalities: list[Modality], config: FusionConfig) -> Preprocessing:
        """No preprocessing (for ``early``/``late`` without standardisation or projection)."""
        config = dataclasses.replace(config, standardise=False, projection=None)
        return cls(tuple(modalities), {m.name: ModalityPreprocessor.identity(m.dim)
                                       for m in modalities}, config)

    @property
    def strategy(self) -> str:
        """The strategy's name."""
        return self.config.strategy

    @property
    def fusion(self) -> FusionStrategy:
        """The :class:`FusionStrategy` of :attr:`config`."""
        return self.config.fusion

    def mixture_modalities(self) -> list[Modality]:
        """The mixture's modalities: each input modality at its transformed width (``joint``),
        or the one concatenated block (``early``, see :func:`early_covariance_type`)."""
        return self.fusion.mixture_modalities(self.modalities, self.preprocessors)

    def for_modality(self, name: str) -> Preprocessing:
        """The ``joint`` preprocessing of modality ``name`` alone (one mixture of ``late``)."""
        modality = next(m for m in self.modalities if m.name == name)
        return Preprocessing((dataclasses.replace(modality, weight=1.0),),
                             {name: self.preprocessors[name]},
                             dataclasses.replace(self.config, strategy=JOINT))

    def transform(self, batch: Batch) -> Batch:
        """Rows of input ``batch`` as the mixture sees them (missing stays missing; ``early``:
        only the rows observing every modality, concatenated into one block)."""
        return self.fusion.transform(batch, self.preprocessors, [m.name for m in self.modalities])

    @contextlib.contextmanager
    def naming_coordinates(self) -> Iterator[None]:
        """Inside: a degenerate-feature warning of the mixture gains a note that the feature
        numbers of projected modalities count principal components, not input columns."""
        projected = [name for name, p in self.preprocessors.items() if p.components is not None]
        if not projected:
            yield
            return
        blocks = self.fusion.coordinate_blocks(projected)
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                yield
        finally:
            note = (f" (In {', '.join(map(repr, projected))} the features are principal "
                    "components of the preprocessing, not input columns.)")
            for w in caught:
                message = str(w.message)
                if issubclass(w.category, DegenerateComponentWarning) and any(
                        f"'{name}'" in message for name in blocks):
                    message += note
                warnings.warn_explicit(message, w.category, w.filename, w.lineno)

    def is_identity(self) -> bool:
        """True when the mixture sees the input rows unchanged (no standardisation, no
        projection, not ``early``)."""
        return not self.fusion.transforms_rows and all(
            p.components is None and p.marginal is None and not p.mean.any()
            and (p.scale == 1).all()
            for p in self.preprocessors.values())

    def describe_rows(self, source: str) -> str:
        """What the mixture's rows of ``source`` are (for messages)."""
        return self.fusion.describe_rows(source)

    def transform_arrays(self, data: ArrayData) -> dict[str, np.ndarray]:
        """{modality: (n, q)} from {modality: (n, d)} (NaN rows stay NaN; ``early``: the
        complete rows as one (n_complete, sum q) block)."""
        transformed = self.transform(batch_from_arrays(data, self.modalities))
        return {name: block.dense() for name, block in transformed.blocks.items()}

    def n_parameters(self) -> int:
        return sum(p.n_parameters() for p in self.preprocessors.values())

    def label(self) -> str:
        """Metric-name-safe settings, e.g. ``standardise-true_projection-8``."""
        q = self.config.projection
        return (f"standardise-{str(bool(self.config.standardise)).lower()}"
                f"_projection-{'none' if q is None else q}")

    def params(self) -> dict[str, Any]:
        """What to log with the fit: the strategy, the settings and each modality's input
        width (the mixture's ``modality.<name>.dim`` is its width after preprocessing)."""
        out = {FUSION_PARAM: self.strategy, **preprocessing_params(self.config)}
        for m in self.modalities:
            out[f"modality.{m.name}.input_dim"] = m.dim
        return out

    def model(self, mixture: MultimodalGaussianMixture, n_train_rows: int) -> FusionModel:
        """The fitted ``joint`` or ``early`` :class:`FusionModel` of these preprocessors and
        ``mixture``."""
        fused = FusionModel(list(self.modalities), _fitted_config(self.config, [mixture]))
        fused.preprocessors_ = dict(self.preprocessors)
        (key,) = self.fusion.mixture_keys(self.modalities)
        fused.mixtures_ = {key: mixture}
        fused.n_train_rows_ = int(n_train_rows)
        return fused


@dataclass(frozen=True)
class LatePart:
    """One modality's fitted piece of a ``late`` model.

    Attributes:
        model: the ``joint`` :class:`FusionModel` of that modality alone.
        mean, std: mean and (population) standard deviation of its log-likelihood over the
            training rows observing the modality.
    """

    model: FusionModel
    mean: float
    std: float


def late_model(preprocessing: Preprocessing, parts: Mapping[str, LatePart],
               n_train_rows: int) -> FusionModel:
    """The fitted ``late`` :class:`FusionModel` of one fitted part per modality."""
    mixtures = {name: part.model.mixtures_[JOINT] for name, part in parts.items()}
    fused = FusionModel(list(preprocessing.modalities),
                        _fitted_config(preprocessing.config, list(mixtures.values())))
    fused.preprocessors_ = {name: part.model.preprocessors_[name] for name, part in parts.items()}
    fused.mixtures_ = mixtures
    fused.late_stats_ = {name: (part.mean, max(part.std, MIN_STD))
                         for name, part in parts.items()}
    fused.n_train_rows_ = int(n_train_rows)
    return fused


def _fitted_config(config: FusionConfig,
                   mixtures: list[MultimodalGaussianMixture]) -> FusionConfig:
    """``config`` naming the K and covariance types the fitted ``mixtures`` have."""
    return dataclasses.replace(
        config, n_components=tuple(dict.fromkeys(m.n_components for m in mixtures)),
        covariance_types=tuple(dict.fromkeys(x.covariance_type for m in mixtures
                                             for x in m.modalities)))


def observing(name: str) -> Callable[[Batch], Batch]:
    """A function keeping, of a batch, only block ``name`` and the rows observing it (with
    their weights)."""

    def restrict(batch: Batch) -> Batch:
        block = batch.blocks[name]
        return single_block(name, block.values, batch.weights_where(block.observed))

    return restrict
