"""Saving and loading fitted models as numpy arrays + JSON: nothing is ever unpickled.

A model directory holds ``model.json`` (modalities, hyperparameters, fit history and any
``extra`` metadata such as the anomaly threshold) and ``arrays.npz`` (the parameters). Loading
validates every array's dtype, shape and consistency and rejects anything else.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import (
    GaussianBlock,
    MixtureParams,
    covariance_shape,
    precisions_cholesky_from_covariances,
)

if TYPE_CHECKING:
    from mmgmm_spark.models.mixture import MultimodalGaussianMixture

FORMAT = "mmgmm-spark/1"
MODEL_JSON = "model.json"
ARRAYS = "arrays.npz"
HYPERPARAMETERS = ("n_components", "tol", "reg_covar", "max_iter", "n_init", "init_params")


class ModelFormatError(ValueError):
    """A model artefact that is missing, malformed or tampered with."""


def _array_keys(index: int) -> dict[str, str]:
    return {field: f"m{index}_{field}" for field in ("means", "covariances", "precisions_cholesky")}


def save_model(model: MultimodalGaussianMixture, path: str,
               extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` (fitted) to directory ``path``; ``extra`` is JSON metadata kept with it."""
    params = model.params
    os.makedirs(path, exist_ok=True)
    arrays = {"weights": params.weights}
    for index, m in enumerate(model.modalities):
        block = params.blocks[m.name]
        for field, key in _array_keys(index).items():
            arrays[key] = getattr(block, field)
    np.savez(os.path.join(path, ARRAYS), **arrays)
    seed = model.random_state if isinstance(model.random_state, int) else None
    document = {
        "format": FORMAT,
        "modalities": [m.to_dict() for m in model.modalities],
        "hyperparameters": {name: getattr(model, name) for name in HYPERPARAMETERS}
        | {"random_state": seed},
        "fit": {"converged": bool(model.converged_),
                "lower_bounds": [float(v) for v in model.lower_bounds_],
                "n_train_rows": int(model.n_train_rows_)},
        "extra": {**model.extra_, **(extra or {})},
    }
    with open(os.path.join(path, MODEL_JSON), "w") as f:
        json.dump(document, f, indent=2)


def _read_json(path: str) -> dict:
    try:
        with open(os.path.join(path, MODEL_JSON)) as f:
            document = json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"No model at '{path}': {MODEL_JSON} is missing.") from None
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}/{MODEL_JSON} is not valid JSON: {e}.") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFormatError(f"{path}/{MODEL_JSON} is not an {FORMAT} model.")
    return document


def _checked_array(arrays: Any, key: str, shape: tuple[int, ...], path: str) -> np.ndarray:
    if key not in arrays:
        raise ModelFormatError(f"{path}/{ARRAYS} lacks array '{key}'.")
    value = arrays[key]
    if value.dtype != np.float64 or value.shape != shape or not np.all(np.isfinite(value)):
        raise ModelFormatError(
            f"{path}/{ARRAYS}: '{key}' must be finite float64 of shape {shape}, got "
            f"{value.dtype} {value.shape}."
        )
    return value


def _read_params(path: str, modalities: tuple[Modality, ...], k: int) -> MixtureParams:
    try:
        arrays = dict(np.load(os.path.join(path, ARRAYS), allow_pickle=False))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"Cannot read {path}/{ARRAYS} as plain arrays: {e}") from None
    weights = _checked_array(arrays, "weights", (k,), path)
    if np.any(weights <= 0) or not np.isclose(weights.sum(), 1.0):
        raise ModelFormatError(f"{path}/{ARRAYS}: weights must be positive and sum to 1.")
    blocks = {}
    for index, m in enumerate(modalities):
        keys = _array_keys(index)
        cov_shape = covariance_shape(m.covariance_type, k, m.dim)
        means = _checked_array(arrays, keys["means"], (k, m.dim), path)
        cov = _checked_array(arrays, keys["covariances"], cov_shape, path)
        chol = _checked_array(arrays, keys["precisions_cholesky"], cov_shape, path)
        expected = precisions_cholesky_from_covariances(m.covariance_type, cov, m.name)
        block = GaussianBlock(m.covariance_type, means, cov, chol)
        if not np.allclose(block.precisions(), GaussianBlock(m.covariance_type, means, cov,
                                                             expected).precisions(),
                           rtol=1e-6, atol=0):
            raise ModelFormatError(
                f"{path}/{ARRAYS}: modality '{m.name}' precisions do not match its covariances; "
                "the artefact was modified or corrupted."
            )
        blocks[m.name] = block
    return MixtureParams(weights, blocks)


def load_model(path: str) -> MultimodalGaussianMixture:
    """Read and validate a model directory written by :func:`save_model`."""
    from mmgmm_spark.models.mixture import MultimodalGaussianMixture

    document = _read_json(path)
    try:
        modalities = [Modality.from_dict(d) for d in document["modalities"]]
        hyper = document["hyperparameters"]
        model = MultimodalGaussianMixture(
            modalities, **{name: hyper[name] for name in HYPERPARAMETERS},
            random_state=hyper.get("random_state"))
        fit = document["fit"]
        model._check_hyperparameters()
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"{path}/{MODEL_JSON} is malformed: {e}") from None
    model.params_ = _read_params(path, model.modalities, model.n_components)
    model.converged_ = bool(fit.get("converged", False))
    model.lower_bounds_ = [float(v) for v in fit.get("lower_bounds", [])]
    model.n_train_rows_ = int(fit.get("n_train_rows", 0))
    model.extra_ = dict(document.get("extra", {}))
    return model
