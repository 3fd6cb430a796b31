"""The user-facing estimator, with scikit-learn's names for parameters and fitted attributes."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch, batch_from_arrays
from mmgmm_spark.core.densities import (
    modality_log_likelihoods,
    normalise_log_prob,
    weighted_log_prob,
)
from mmgmm_spark.core.em import (
    EMResult,
    IterationCallback,
    IterationReport,
    ProgressCallback,
    ResumePoint,
    fit_em,
    warn_collapsed_components,
)
from mmgmm_spark.core.modality import Modality, check_modalities
from mmgmm_spark.core.params import MixtureParams
from mmgmm_spark.core.spec import DEFAULT_REG_COVAR, SPEC_FIELDS, MixtureSpec
from mmgmm_spark.core.training import training_data
from mmgmm_spark.io.checkpoints import Checkpoint, Checkpointer, load_checkpoint
from mmgmm_spark.io.model_files import FitHistory, ModelFile, read_model_file, write_model_file

log = logging.getLogger(__name__)

ArrayData = Mapping[str, np.ndarray]


class NotFittedError(RuntimeError):
    """A method that needs fitted parameters was called before ``fit`` or ``load``."""


def information_criteria(mean_log_likelihood: float, n_rows: int,
                         n_parameters: int) -> dict[str, float]:
    """BIC and AIC from the mean log-likelihood of n rows (lower is better)."""
    deviance = -2.0 * mean_log_likelihood * n_rows
    return {"bic": deviance + n_parameters * math.log(n_rows),
            "aic": deviance + 2.0 * n_parameters}


LOG_EVERY = 10
"""EM iterations between two INFO progress lines; every iteration is a DEBUG line."""


def log_iteration(report: IterationReport) -> None:
    """Log an EM iteration: at INFO the first and every :data:`LOG_EVERY`-th, else at DEBUG
    (the fit's last iteration is an INFO line of :func:`log_fit_end`)."""
    progress = report.iteration == 1 or report.iteration % LOG_EVERY == 0
    log.log(logging.INFO if progress else logging.DEBUG,
            "EM iteration %d: mean log-likelihood %.6f (change %.3g) in %.2f s",
            report.iteration, report.mean_log_likelihood, report.change, report.seconds)


def log_fit_end(result: EMResult, n_rows: int) -> None:
    """One INFO line when a fit ends: iterations, convergence, final mean log-likelihood."""
    log.info("EM iteration %d (last, %s): mean log-likelihood %.6f on %d rows",
             result.n_iter, "converged" if result.converged else "max_iter reached",
             result.lower_bound, n_rows)


class MultimodalGaussianMixture:
    """Mixture whose components are products of per-modality Gaussians, fitted by EM.

    p(x) = sum_k pi_k prod_m N(x^(m) | mu_k^(m), Sigma_k^(m))^(w_m). A modality missing from a
    row (whole block NaN, or null in a table) is marginalised out, never imputed.

    Args:
        modalities: the feature blocks, each a :class:`Modality`.
        n_components: K.
        tol: stop when the mean log-likelihood changes by less than this (0: never).
        reg_covar: added to the diagonal of every covariance (default 1e-3, the one default
            of the package: :data:`mmgmm_spark.core.spec.DEFAULT_REG_COVAR`).
        reg_covar_mode: ``absolute`` (as scikit-learn) or ``relative``: ``reg_covar`` times
            each modality's mean feature variance (of the initialisation sample), so the
            regularisation follows the data's scale.
        max_iter: EM iterations per initialisation.
        n_init: initialisations; the best final lower bound is kept.
        init_params: "kmeans", "k-means++", "random" or "random_from_data".
        weights_init: (K,) initial weights, or None.
        means_init: {modality: (K, d)} initial means, or None.
        precisions_init: {modality: precisions in the covariance type's shape}, or None.
        random_state: seed (int), a ``numpy.random.RandomState``, or None.
        allow_small_data: fit even with fewer training rows than free parameters
            (:data:`mmgmm_spark.core.spec.MIN_ROWS_PER_PARAMETER`; refused by default).
        compute_dtype: "float64" (default, scikit-learn parity) or "float32": the E-step and
            statistics kernels multiply in float32 (about twice as fast at large d), the
            statistics are summed and the M-step done in float64.
    """

    def __init__(self, modalities: list[Modality], n_components: int = 1, *, tol: float = 1e-3,
                 reg_covar: float = DEFAULT_REG_COVAR, reg_covar_mode: str = "absolute",
                 max_iter: int = 100, n_init: int = 1,
                 init_params: str = "kmeans", weights_init: np.ndarray | None = None,
                 means_init: dict[str, np.ndarray] | None = None,
                 precisions_init: dict[str, np.ndarray] | None = None,
                 random_state: int | np.random.RandomState | None = None,
                 allow_small_data: bool = False, compute_dtype: str = "float64") -> None:
        self.modalities = check_modalities(modalities)
        self.n_components = n_components
        self.tol = tol
        self.reg_covar = reg_covar
        self.reg_covar_mode = reg_covar_mode
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.allow_small_data = allow_small_data
        self.compute_dtype = compute_dtype
        self.params_: MixtureParams | None = None
        self.converged_ = False
        self.lower_bounds_: list[float] = []
        self.n_train_rows_ = 0
        self.collapsed_components_: list[int] = []
        self.extra_: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- fitting
    def spec(self) -> MixtureSpec:
        """The modalities and hyperparameters as a :class:`MixtureSpec` (not validated)."""
        return MixtureSpec(self.modalities, **{name: getattr(self, name) for name in SPEC_FIELDS})

    @classmethod
    def from_spec(cls, spec: MixtureSpec) -> MultimodalGaussianMixture:
        """An unfitted estimator with ``spec``'s modalities and hyperparameters."""
        return cls(list(spec.modalities), **{name: getattr(spec, name) for name in SPEC_FIELDS})

    def fit(self, data: Any, *, sample_weight: Any = None,
            initial_model: MultimodalGaussianMixture | MixtureParams | None = None,
            on_iteration: IterationCallback | None = log_iteration,
            checkpointer: ProgressCallback | None = None, resume: ResumePoint | None = None,
            init_sample_rows: int = 100_000, tree_depth: int = 2,
            **source_options: Any) -> MultimodalGaussianMixture:
        """Fit by EM and return ``self``.

        Args:
            data: a dict of (n, d_m) arrays keyed by modality name (NaN rows = missing), a
                Spark DataFrame with one array/vector column per modality, or any
                :class:`~mmgmm_spark.core.training.TrainingData` (e.g. cached blocks).
            sample_weight: row weights, finite, >= 0, not all zero: (n,) numbers with a dict
                of arrays, the name of the weight column with a DataFrame (or the column the
                cached blocks were cached with). A row of integer weight w counts as w copies.
            initial_model: a fitted model (or its :class:`MixtureParams`) of the same
                modalities, widths, covariance types and K: EM starts from exactly its
                parameters (no initialisation, ``n_init`` ignored), a warm start.
            on_iteration: called after every EM iteration (default: a log line).
            checkpointer: called after every iteration with the progress (e.g. an
                :class:`mmgmm_spark.io.checkpoints.Checkpointer` writing a checkpoint).
            resume: a checkpoint of this model's fit to continue from; the result equals the
                uninterrupted fit's.
            init_sample_rows: rows (at most) initialisation reads when the data is distributed.
            tree_depth: depth of a distributed reduction.
            source_options: for a DataFrame: ``source`` (its name in errors),
                ``rows_per_block``, ``use_rdd``, ``resident`` (default True: EM passes read
                the decoded blocks from files on the executors, see
                :mod:`mmgmm_spark.spark.resident`).
        """
        spec = self.spec().validate()
        initial = (initial_model.params if isinstance(initial_model, MultimodalGaussianMixture)
                   else initial_model)
        with training_data(data, self.modalities, sample_weight, **source_options) as rows:
            result = fit_em(spec, rows, on_iteration=on_iteration, on_progress=checkpointer,
                            resume=resume, init_sample_rows=init_sample_rows,
                            tree_depth=tree_depth, initial=initial)
            log_fit_end(result, rows.n_rows)
            return self.set_result(result, rows.n_rows)

    def initial_params(self, batch: Batch, rng: np.random.RandomState) -> MixtureParams:
        """Initial parameters from (a sample of) the rows, honouring the ``*_init`` arguments."""
        return self.spec().initial_params(batch, rng)

    def set_result(self, result: EMResult, n_rows: int) -> MultimodalGaussianMixture:
        """Store the parameters and history of a finished EM run on the estimator."""
        self.params_ = result.params
        self.converged_ = result.converged
        self.lower_bounds_ = list(result.lower_bounds)
        self.n_train_rows_ = n_rows
        self.collapsed_components_ = warn_collapsed_components(
            result.params, self.modalities, n_rows, result.reg_covar or self.reg_covar)
        return self

    # ----------------------------------------------------------------- fitted attributes
    @property
    def params(self) -> MixtureParams:
        if self.params_ is None:
            raise NotFittedError("This MultimodalGaussianMixture is not fitted yet: call fit() "
                                 "or load() first.")
        return self.params_

    @property
    def weights_(self) -> np.ndarray:
        return self.params.weights

    @property
    def means_(self) -> dict[str, np.ndarray]:
        return {name: b.means for name, b in self.params.blocks.items()}

    @property
    def covariances_(self) -> dict[str, np.ndarray]:
        return {name: b.covariances for name, b in self.params.blocks.items()}

    @property
    def precisions_cholesky_(self) -> dict[str, np.ndarray]:
        return {name: b.precisions_cholesky for name, b in self.params.blocks.items()}

    @property
    def precisions_(self) -> dict[str, np.ndarray]:
        """Precision matrices (inverse covariances) in each covariance type's shape."""
        return {name: b.precisions() for name, b in self.params.blocks.items()}

    @property
    def n_iter_(self) -> int:
        return len(self.lower_bounds_)

    @property
    def lower_bound_(self) -> float:
        return self.lower_bounds_[-1] if self.lower_bounds_ else -np.inf

    # ----------------------------------------------------------------------- inference
    def to_batch(self, data: ArrayData) -> Batch:
        """Validated rows: a modality may be missing from every row (it is marginalised)."""
        return batch_from_arrays(data, self.modalities)

    def log_prob(self, data: ArrayData) -> tuple[np.ndarray, np.ndarray]:
        """(n,) log-likelihood of each row and (n, K) log posterior of each component."""
        batch = self.to_batch(data)
        return normalise_log_prob(weighted_log_prob(batch, self.params, self.modalities))

    def score_samples(self, data: ArrayData) -> np.ndarray:
        """(n,) log-likelihood of each row (the negative is the anomaly score)."""
        return self.log_prob(data)[0]

    def score(self, data: ArrayData) -> float:
        """Mean log-likelihood per row."""
        return float(self.score_samples(data).mean())

    def predict_proba(self, data: ArrayData) -> np.ndarray:
        """(n, K) posterior probability of each component."""
        return np.exp(self.log_prob(data)[1])

    def predict(self, data: ArrayData) -> np.ndarray:
        """(n,) most probable component."""
        return self.log_prob(data)[1].argmax(axis=1)

    def modality_log_likelihoods(self, data: ArrayData) -> dict[str, np.ndarray]:
        """Per modality, (n,) marginal log-likelihood of the row's block; NaN where missing."""
        return modality_log_likelihoods(self.to_batch(data), self.params, self.modalities)

    def n_parameters(self) -> int:
        return self.params.n_parameters()

    def bic(self, data: ArrayData) -> float:
        """Bayesian information criterion (lower is better)."""
        return self._criteria(data)["bic"]

    def aic(self, data: ArrayData) -> float:
        """Akaike information criterion (lower is better)."""
        return self._criteria(data)["aic"]

    def _criteria(self, data: ArrayData) -> dict[str, float]:
        log_likelihood = self.score_samples(data)
        return information_criteria(float(log_likelihood.mean()), len(log_likelihood),
                                    self.n_parameters())

    def sample(self, n_samples: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Draw rows from the mixture: ({modality: (n, d)}, component labels (n,))."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        rng = self.spec().rng()
        counts = rng.multinomial(n_samples, self.weights_)
        labels = np.repeat(np.arange(self.n_components), counts)
        out = {}
        for m in self.modalities:
            block = self.params.blocks[m.name]
            cov = block.full_covariances(self.n_components)
            out[m.name] = np.vstack([
                rng.multivariate_normal(block.means[k], cov[k], int(c)) if c else
                np.empty((0, m.dim)) for k, c in enumerate(counts)])
        return out, labels

    # ----------------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        """Write the fitted model to directory ``path`` as numpy arrays + JSON (no pickle)."""
        save_model(self, path)

    @classmethod
    def load(cls, path: str) -> MultimodalGaussianMixture:
        """Read a model written by :meth:`save`, validating every array's shape and dtype."""
        return load_model(path)


def save_model(model: MultimodalGaussianMixture, path: str,
               extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` (fitted) to directory ``path``; ``extra`` is JSON metadata kept with it."""
    write_model_file(path, model_file(model, extra))


def model_file(model: MultimodalGaussianMixture,
               extra: dict[str, Any] | None = None) -> ModelFile:
    """What a model file of ``model`` (fitted) holds; ``extra`` is JSON metadata kept with it."""
    history = FitHistory(model.converged_, model.lower_bounds_, model.n_train_rows_)
    return ModelFile(model.spec(), model.params, history, {**model.extra_, **(extra or {})})


def load_model(path: str) -> MultimodalGaussianMixture:
    """Read and validate a model directory written by :func:`save_model`."""
    return model_from_file(read_model_file(path))


def model_from_file(content: ModelFile) -> MultimodalGaussianMixture:
    """The fitted mixture a (validated) :class:`ModelFile` holds."""
    model = MultimodalGaussianMixture.from_spec(content.spec)
    model.params_ = content.params
    model.converged_ = content.fit.converged
    model.lower_bounds_ = list(content.fit.lower_bounds)
    model.n_train_rows_ = content.fit.n_train_rows
    model.extra_ = content.extra
    return model


def resume_fit(model: MultimodalGaussianMixture, data: Any, checkpoint: str | Checkpoint, *,
               checkpoint_dir: str | None = None,
               on_iteration: IterationCallback | None = log_iteration,
               **fit_options: Any) -> MultimodalGaussianMixture:
    """Continue an interrupted fit from its checkpoint; it ends equal to an uninterrupted fit.

    Args:
        model: an unfitted estimator with the same modalities and hyperparameters.
        data: the same rows as the interrupted fit (dict of arrays or Spark DataFrame).
        checkpoint: a checkpoint file/directory, or a loaded :class:`Checkpoint`.
        checkpoint_dir: where to keep writing checkpoints (default: the checkpoint's own).
        fit_options: as for :meth:`MultimodalGaussianMixture.fit`.
    """
    loaded = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(
        checkpoint, model)
    directory = checkpoint_dir or os.path.dirname(loaded.path)
    log.info("Resuming restart %d after iteration %d from %s", loaded.progress.restart,
             loaded.iterations, loaded.path)
    return model.fit(data, on_iteration=on_iteration, resume=loaded,
                     checkpointer=Checkpointer(directory, model, loaded.run_id), **fit_options)
