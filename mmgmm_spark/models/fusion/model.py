"""The fused estimator: preprocessing + a fusion strategy + its mixture(s), as one model.

See :mod:`mmgmm_spark.models.fusion` for the strategies and the meaning of the columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch, batch_from_arrays
from mmgmm_spark.core.marginals import NormalScores
from mmgmm_spark.core.modality import Modality, check_modalities
from mmgmm_spark.core.preprocessing import ModalityPreprocessor
from mmgmm_spark.io.model_files import ModelFormatError
from mmgmm_spark.models.fusion.base import LOG_LIKELIHOOD, FusionStrategy, Stats, dense
from mmgmm_spark.models.fusion.config import FusionConfig
from mmgmm_spark.models.fusion.ensemble import (
    Member,
    Subspace,
    ensemble_log_likelihood,
    fit_member,
)
from mmgmm_spark.models.fusion.files import (
    FORMAT,
    FusionFile,
    check_fusion_format,
    read_fusion_file,
    write_fusion_file,
)
from mmgmm_spark.models.fusion.selection import Grid, select
from mmgmm_spark.models.fusion.subspaces import fit_subspace_members
from mmgmm_spark.models.mixture import (
    MultimodalGaussianMixture,
    NotFittedError,
    model_file,
    model_from_file,
)

ArrayData = Mapping[str, np.ndarray]


class FusionModel:
    """Preprocessing + a fusion strategy + its mixture(s), fitted and scored as one model.

    Args:
        modalities: the input feature blocks (their ``covariance_type`` is ignored: the
            config's grid decides; their ``weight`` is the fusion weight of ``joint``).
        config: a :class:`FusionConfig`.
        mixture_options: extra keyword arguments for every
            :class:`MultimodalGaussianMixture` (e.g. ``weights_init``); not saved.
    """

    def __init__(self, modalities: list[Modality], config: FusionConfig | None = None,
                 mixture_options: dict[str, Any] | None = None) -> None:
        self.modalities = check_modalities(modalities)
        self.config = config or FusionConfig()
        self.mixture_options = dict(mixture_options or {})
        self.preprocessors_: dict[str, ModalityPreprocessor] = {}
        self.mixtures_: dict[str, MultimodalGaussianMixture] = {}
        self.late_stats_: Stats = {}
        self.selection_: dict[str, list[dict]] = {}
        self.members_: dict[str, list[Member]] = {}
        self.n_train_rows_ = 0
        self.extra_: dict[str, Any] = {}

    @property
    def strategy(self) -> str:
        """The strategy's name (``config.strategy``)."""
        return self.config.strategy

    @property
    def fusion(self) -> FusionStrategy:
        """The :class:`FusionStrategy` of this model."""
        return self.config.fusion

    # ----------------------------------------------------------------------------- fitting
    def fit(self, data: ArrayData) -> FusionModel:
        """Fit preprocessing and mixture(s) on a dict of (n, d_m) arrays (NaN rows = missing)."""
        batch = self.to_batch(data)
        self.n_train_rows_ = batch.n_rows
        grid = Grid(self.config, self.fusion, self.mixture_options)
        self.preprocessors_, self.mixtures_, self.members_ = {}, {}, {}
        for training in self.fusion.training_sets(list(self.modalities), batch):
            best, candidates = select(grid, training)
            self.selection_[training.key] = [c.summary() for c in candidates]
            self.preprocessors_.update(best.preprocessors)
            self.mixtures_[training.key] = best.mixture
            if self.config.subspaces:
                self.members_[training.key] = fit_subspace_members(grid, training)
            elif self.config.ensemble:
                self.members_[training.key] = [
                    fit_member(self.fusion, self.modalities, best.preprocessors, training.key,
                               c.mixture, training.data, self.config.n_quantiles)
                    for c in candidates if c.admissible and c.preprocessors is best.preprocessors]
        self.late_stats_ = self.fusion.fitted_stats(self, dense(batch))
        return self

    # ----------------------------------------------------------------------------- scoring
    def _check_fitted(self) -> None:
        if not self.mixtures_:
            raise NotFittedError("This FusionModel is not fitted yet: call fit() or load().")

    def to_batch(self, data: ArrayData) -> Batch:
        """Validate a dict of (n, d_m) arrays against the input modalities."""
        return batch_from_arrays(data, self.modalities)

    def columns(self, data: ArrayData) -> dict[str, np.ndarray]:
        """Per row (each (n,)): log_likelihood, cluster and ``<modality>`` log-likelihoods.

        See :mod:`mmgmm_spark.models.fusion` for what they mean under each strategy.
        """
        return self.batch_columns(self.to_batch(data))

    def batch_columns(self, batch: Batch) -> dict[str, np.ndarray]:
        """:meth:`columns` of a validated :class:`Batch`; modality keys are plain names."""
        self._check_fitted()
        rows = dense(batch)
        out = self.fusion.columns(self, rows)
        for key, members in self.members_.items():      # ensemble: a unitless rank average
            out[LOG_LIKELIHOOD] = ensemble_log_likelihood(
                self.fusion, self.modalities, self.preprocessors_, key, members, rows)
        return out

    def responsibilities(self, batch: Batch) -> np.ndarray:
        """(n, K) component posteriors of the ``joint`` or ``early`` mixture (``early``: of
        each row's observed coordinates). ``late`` has one mixture per modality: undefined."""
        self._check_fitted()
        return np.exp(self.fusion.log_responsibilities(self, dense(batch)))

    def score_samples(self, data: ArrayData) -> np.ndarray:
        """(n,) the fused log-likelihood (the negative is the anomaly score); with
        ``config.ensemble`` or ``config.subspaces`` the members' mean normal score (unitless;
        :meth:`log_density`, ``cluster``, the per-modality columns and :attr:`chosen` still
        describe the lowest-BIC mixture on every feature)."""
        return self.columns(data)[LOG_LIKELIHOOD]

    def log_density(self, data: ArrayData) -> np.ndarray:
        """(n,) log-density of the rows in input units: ``log_likelihood`` for ``joint`` and
        ``early``; for ``late`` the sum over observed modalities of their own mixtures'
        log-densities (the density of independent modalities). Comparable across strategies
        when every ``joint`` modality weight is 1 (a weight scales its modality's term)."""
        rows = dense(self.to_batch(data))
        return self.fusion.log_density(self, self.fusion.columns(self, rows))

    def score(self, data: ArrayData) -> float:
        """Mean :meth:`log_density` of the rows (what the champion check compares)."""
        return float(self.log_density(data).mean())

    # ---------------------------------------------------------------------------- summary
    @property
    def chosen(self) -> dict[str, dict]:
        """Per mixture (``joint``, ``early`` or each modality for ``late``): the chosen K,
        covariance type and projection sizes."""
        self._check_fitted()
        return {key: {"n_components": int(m.n_components),
                      "covariance_type": m.modalities[0].covariance_type,
                      "projection": {name: self.preprocessors_[name].output_dim for name in
                                     self.fusion.preprocessed_names(key, self.modalities)}}
                for key, m in self.mixtures_.items()}

    # ------------------------------------------------------------------------ persistence
    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        """Write to directory ``path``: fusion.json, preprocessing.npz and one model directory
        per mixture (:mod:`.files`). No pickle anywhere."""
        write_fusion_file(path, self.to_file(extra))

    @classmethod
    def load(cls, path: str) -> FusionModel:
        """Read a directory written by :meth:`save`, validating arrays and metadata."""
        return cls.from_file(read_fusion_file(path), path)

    def to_file(self, extra: dict[str, Any] | None = None) -> FusionFile:
        """What a saved model holds (:class:`FusionFile`); ``extra`` is JSON kept with it."""
        self._check_fitted()
        arrays, meta = {}, {}
        for index, m in enumerate(self.modalities):
            a, meta[m.name] = self.preprocessors_[m.name].to_arrays(f"p{index}_")
            arrays.update(a)
        files, mixtures, members = {}, {}, {}
        for index, (key, mixture) in enumerate(self.mixtures_.items()):
            mixtures[key] = f"mixture_{index}"
            files[mixtures[key]] = model_file(mixture)
        for key, listed in self.members_.items():
            members[key] = []
            for index, member in enumerate(listed):
                sub = f"member_{key}_{index}"
                members[key].append({"mixture": sub,
                                     "quantiles": member.ranks.quantiles[:, 0].tolist(),
                                     "std": float(member.ranks.std[0]),
                                     **_subspace_document(member.subspace, sub, arrays)})
                files[sub] = model_file(member.mixture)
        document = {"format": FORMAT, "modalities": [m.to_dict() for m in self.modalities],
                    "config": self.config.to_dict(), "preprocessing": meta,
                    "mixtures": mixtures, "members": members,
                    "late_stats": {k: list(v) for k, v in self.late_stats_.items()},
                    "selection": self.selection_, "n_train_rows": int(self.n_train_rows_),
                    "extra": {**self.extra_, **(extra or {})}}
        return FusionFile(document, arrays, files)

    @classmethod
    def from_file(cls, content: FusionFile, where: str) -> FusionModel:
        """The model ``content`` (read from ``where``) holds, validating arrays and metadata."""
        document, arrays = content.document, content.preprocessing
        try:
            check_fusion_format(document, where)
            model = cls([Modality.from_dict(d) for d in document["modalities"]],
                        FusionConfig.from_dict(document["config"]))
            for index, m in enumerate(model.modalities):
                p = ModalityPreprocessor.from_arrays(arrays, document["preprocessing"][m.name],
                                                     f"p{index}_")
                if p.input_dim != m.dim:
                    raise ValueError(f"preprocessing of '{m.name}' has width {p.input_dim}")
                model.preprocessors_[m.name] = p
            model.mixtures_ = {key: model_from_file(content.mixtures[sub])
                               for key, sub in document["mixtures"].items()}
            model.late_stats_ = {k: (float(v[0]), float(v[1]))
                                 for k, v in document.get("late_stats", {}).items()}
            model.members_ = {key: [_member(content, d, model.modalities) for d in listed]
                              for key, listed in document.get("members", {}).items()}
            model.selection_ = dict(document.get("selection", {}))
            model.n_train_rows_ = int(document.get("n_train_rows", 0))
            model.extra_ = dict(document.get("extra", {}))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ModelFormatError(f"{where} is not a valid fusion model: {e}") from None
        model._check_consistency()
        return model

    def _check_consistency(self) -> None:
        error = self.fusion.consistency_error(self)
        if error is not None:
            raise ModelFormatError(error)


def _member(content: FusionFile, document: dict[str, Any],
            modalities: list[Modality]) -> Member:
    """One ensemble :class:`Member` of a :class:`FusionFile` (quantiles checked)."""
    ranks = NormalScores.from_quantiles(np.asarray(document["quantiles"], dtype=float)[:, None],
                                        np.array([float(document["std"])]))
    return Member(model_from_file(content.mixtures[document["mixture"]]), ranks,
                  _subspace(content, document, modalities))


def _subspace_document(subspace: Subspace | None, sub: str,
                       arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A member's subspace as JSON ({} without one); its preprocessing arrays are added to
    ``arrays`` as ``<sub>_p<i>_<field>``."""
    if subspace is None:
        return {}
    preprocessing = {}
    for index, m in enumerate(subspace.modalities):
        values, preprocessing[m.name] = subspace.preprocessors[m.name].to_arrays(
            f"{sub}_p{index}_")
        arrays.update(values)
    return {"features": {name: columns.tolist() for name, columns in subspace.features.items()},
            "preprocessing": preprocessing}


def _subspace(content: FusionFile, document: dict[str, Any],
              modalities: list[Modality]) -> Subspace | None:
    """The :class:`Subspace` of a member's document (None without one), its columns checked
    against the model's ``modalities``."""
    if "features" not in document:
        return None
    features, widths = {}, {m.name: m.dim for m in modalities}
    for name, columns in document["features"].items():
        features[name] = np.asarray(columns, dtype=np.int64)
        if (name not in widths or features[name].size == 0
                or features[name].min() < 0 or features[name].max() >= widths[name]):
            raise ValueError(f"member {document['mixture']}: features of '{name}' are not "
                             f"columns of the model's modalities")
    subspace_modalities = [replace(m, dim=len(features[m.name])) for m in modalities]
    preprocessors = {m.name: ModalityPreprocessor.from_arrays(
        content.preprocessing, document["preprocessing"][m.name],
        f"{document['mixture']}_p{index}_") for index, m in enumerate(subspace_modalities)}
    return Subspace(features, subspace_modalities, preprocessors)
