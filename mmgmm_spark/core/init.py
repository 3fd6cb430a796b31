"""Initial parameters: responsibilities from a seeding method, then one M-step.

Seeding runs on the rows that observe every modality, in a space where each feature is
standardised and each modality block is scaled by 1/sqrt(d_m) (so a wide embedding does not
drown a narrow one). Every row, complete or not, is then assigned to its nearest centre over
the blocks it observes, and the M-step turns those hard assignments into parameters.
On Spark the same function runs on a bounded driver-side sample. With row weights
(:attr:`Batch.weights`) the moments, the standardisation, k-means / k-means++ and
``random_from_data`` draws are weighted (a zero-weight row is never a seed); ``random``
draws responsibilities per row, which the weighted M-step then weighs.
"""

from __future__ import annotations

import warnings

import numpy as np

from mmgmm_spark.core.batch import Batch, DataValidationError
from mmgmm_spark.core.covariance import covariance_type
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import (
    DegenerateComponentWarning,
    GaussianBlock,
    MixtureParams,
    RegCovar,
    block_reg_covar,
    covariances_from_precisions,
)
from mmgmm_spark.core.stats import accumulate_stats

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")


def pooled_params(batch: Batch, modalities: tuple[Modality, ...], n_components: int,
                  reg_covar: RegCovar) -> MixtureParams:
    """Every component equal to the whole data's (weighted) mean and covariance, per modality."""
    k = n_components
    blocks = {}
    for m in modalities:
        values = batch.blocks[m.name].values
        weights = batch.weights_where(batch.blocks[m.name].observed)
        mean = np.average(values, axis=0, weights=weights)
        reg = block_reg_covar(reg_covar, m.name)
        cov = np.atleast_2d(np.cov(values, rowvar=False, bias=True, aweights=weights))
        cov = cov + reg * np.eye(m.dim)
        covariances = covariance_type(m.covariance_type).pooled(cov, k)
        blocks[m.name] = GaussianBlock.from_covariances(
            m.covariance_type, np.tile(mean, (k, 1)), covariances, m.name, reg)
    return MixtureParams(np.full(k, 1.0 / k), blocks)


DUPLICATE_SHARE = 0.01
"""Warn when at least this share of a modality's rows repeat another row exactly."""


def warn_about_flat_data(batch: Batch, modalities: tuple[Modality, ...]) -> None:
    """Warn about constant features and duplicated rows (of the rows seen at initialisation).

    Both leave a component with no variance in some direction; ``reg_covar`` keeps the fit
    going, but the user should know (their scores near those rows become extreme).
    """
    for m in modalities:
        values = batch.blocks[m.name].values                   # (n_observed, d)
        constant = np.flatnonzero(np.ptp(values, axis=0) == 0).tolist()
        if constant and len(values) > 1:
            warnings.warn(
                f"Modality '{m.name}': feature(s) {constant[:10]} are constant over the "
                f"{len(values)} rows seen at initialisation; they are regularised by reg_covar. "
                "Drop them if they carry no information.", DegenerateComponentWarning,
                stacklevel=4)
        repeats = len(values) - len(np.unique(values, axis=0))
        if repeats >= DUPLICATE_SHARE * len(values) and repeats:
            warnings.warn(
                f"Modality '{m.name}': {repeats} of the {len(values)} rows seen at "
                "initialisation repeat another row exactly (duplicated rows); a component "
                "may collapse onto them and be held up by reg_covar only. Deduplicate the "
                "table if the copies are not real.", DegenerateComponentWarning, stacklevel=4)


def _scaled_blocks(batch: Batch, modalities: tuple[Modality, ...]) -> dict[str, np.ndarray]:
    """Per modality, the observed values standardised and scaled by 1/sqrt(d_m)."""
    out = {}
    for m in modalities:
        values = batch.blocks[m.name].values
        weights = batch.weights_where(batch.blocks[m.name].observed)
        mean = np.average(values, axis=0, weights=weights)
        std = np.sqrt(np.average((values - mean) ** 2, axis=0, weights=weights))
        std[std == 0] = 1.0
        out[m.name] = (values - mean) / (std * np.sqrt(m.dim))
    return out


def _centres(scaled: dict[str, np.ndarray], batch: Batch, modalities: tuple[Modality, ...],
             n_components: int, method: str, rng: np.random.RandomState) -> np.ndarray:
    """(K, sum d_m) seeds in the scaled space, from rows that observe every modality."""
    complete = batch.complete_rows()
    if np.count_nonzero(complete) < n_components:
        none = ("" if complete.any() or len(modalities) == 1 else
                " No row has every modality: if the modality tables describe the same "
                "entities, their ids do not match (check the id column and the ids).")
        raise DataValidationError(
            f"init_params='{method}' needs at least n_components={n_components} rows that "
            f"observe every modality; only {np.count_nonzero(complete)} do. Use "
            f"init_params='random' or fewer components.{none}"
        )
    rows = []
    for m in modalities:
        position = np.cumsum(batch.blocks[m.name].observed) - 1
        rows.append(scaled[m.name][position[complete]])
    x = np.hstack(rows)
    weights = batch.weights_where(complete)
    seed = rng.randint(np.iinfo(np.int32).max)
    # imported here: Spark workers import this module but never seed, and sklearn costs them ~2 s
    from sklearn.cluster import KMeans, kmeans_plusplus

    if method == "kmeans":
        return KMeans(n_components, n_init=1, random_state=seed).fit(
            x, sample_weight=weights).cluster_centers_
    if method == "k-means++":
        return kmeans_plusplus(x, n_components, random_state=seed, sample_weight=weights)[0]
    chance = None if weights is None else weights / weights.sum()
    return x[rng.choice(len(x), size=n_components, replace=False, p=chance)]


def _nearest_centre(scaled: dict[str, np.ndarray], centres: np.ndarray, batch: Batch,
                    modalities: tuple[Modality, ...]) -> np.ndarray:
    """(n, K) one-hot responsibilities: nearest centre over the blocks a row observes."""
    distance = np.zeros((batch.n_rows, len(centres)))
    start = 0
    for m in modalities:
        c = centres[:, start: start + m.dim]
        start += m.dim
        x = scaled[m.name]
        squared = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]
        distance[batch.blocks[m.name].observed] += squared
    resp = np.zeros_like(distance)
    resp[np.arange(batch.n_rows), distance.argmin(axis=1)] = 1.0
    return resp


def initial_params(batch: Batch, modalities: tuple[Modality, ...], n_components: int,
                   method: str, rng: np.random.RandomState, reg_covar: RegCovar,
                   weights_init: np.ndarray | None = None, means_init: dict | None = None,
                   precisions_init: dict | None = None) -> MixtureParams:
    """Initial mixture parameters; given ``*_init`` values replace the estimated ones."""
    if batch.n_rows < n_components:
        raise DataValidationError(
            f"n_components={n_components} is larger than the number of rows ({batch.n_rows}). "
            "Use fewer components or more data."
        )
    if method not in INIT_METHODS:
        raise ValueError(f"init_params must be one of {INIT_METHODS}, got {method!r}.")
    unobserved = [m.name for m in modalities if batch.blocks[m.name].values.shape[0] == 0]
    if unobserved:
        raise DataValidationError(
            f"Modality(ies) {unobserved} are missing from all {batch.n_rows} rows used for "
            "initialisation. Check the input tables, remove the modality from the model, or "
            "(on Spark) raise init_sample_rows."
        )
    warn_about_flat_data(batch, modalities)
    if weights_init is not None and all(m.name in (means_init or {})
                                        and m.name in (precisions_init or {}) for m in modalities):
        return override_params(None, modalities, weights_init, means_init, precisions_init)
    pooled = pooled_params(batch, modalities, n_components, reg_covar)
    if method == "random":
        resp = rng.uniform(size=(batch.n_rows, n_components))
        resp /= resp.sum(axis=1, keepdims=True)
    else:
        scaled = _scaled_blocks(batch, modalities)
        centres = _centres(scaled, batch, modalities, n_components, method, rng)
        resp = _nearest_centre(scaled, centres, batch, modalities)
    params = accumulate_stats(batch, pooled, modalities, resp).to_params(
        pooled, reg_covar, modalities)
    return override_params(params, modalities, weights_init, means_init, precisions_init)


def override_params(params: MixtureParams | None, modalities: tuple[Modality, ...],
                    weights: np.ndarray | None, means: dict | None,
                    precisions: dict | None) -> MixtureParams:
    """``params`` with any user-given weights, means (K, d) or precisions replacing its own.

    ``params`` may be None when weights, means and precisions of every modality are given.
    """
    blocks = {}
    for m in modalities:
        block = params.blocks[m.name] if params is not None else None
        new_means = np.asarray(means[m.name], float) if means and m.name in means else block.means
        if precisions and m.name in precisions:
            cov, chol = covariances_from_precisions(
                m.covariance_type, np.asarray(precisions[m.name], float), m.name)
        else:
            cov, chol = block.covariances, block.precisions_cholesky
        blocks[m.name] = GaussianBlock(m.covariance_type, new_means, cov, chol)
    new_weights = params.weights if weights is None else np.asarray(weights, float)
    return MixtureParams(new_weights, blocks)
