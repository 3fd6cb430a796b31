"""Model files: a fitted mixture as numpy arrays + JSON; nothing is ever unpickled.

A model directory holds ``model.json`` (format, the :class:`MixtureSpec`'s modalities and
hyperparameters, the fit history and any ``extra`` metadata such as the anomaly threshold)
and ``arrays.npz`` (the parameters, in the codec of :mod:`mmgmm_spark.io.arrays`). Reading
validates the JSON, every array's dtype, shape and consistency, and rejects anything else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmgmm_spark.core.params import MixtureParams
from mmgmm_spark.core.spec import MixtureSpec
from mmgmm_spark.io.arrays import ArrayFormatError, param_arrays, read_params

FORMAT = "mmgmm-spark/1"
MODEL_JSON = "model.json"
ARRAYS = "arrays.npz"


class ModelFormatError(ValueError):
    """A model artefact that is missing, malformed or tampered with."""


@dataclass(frozen=True)
class FitHistory:
    """How the stored parameters were fitted: convergence, lower bounds, training rows."""

    converged: bool = False
    lower_bounds: list[float] = field(default_factory=list)
    n_train_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"converged": bool(self.converged),
                "lower_bounds": [float(v) for v in self.lower_bounds],
                "n_train_rows": int(self.n_train_rows)}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> FitHistory:
        return cls(bool(document.get("converged", False)),
                   [float(v) for v in document.get("lower_bounds", [])],
                   int(document.get("n_train_rows", 0)))


@dataclass(frozen=True)
class ModelFile:
    """Everything a model directory holds."""

    spec: MixtureSpec
    params: MixtureParams
    fit: FitHistory
    extra: dict[str, Any]


def model_document(content: ModelFile) -> dict[str, Any]:
    """The JSON part of ``content``: format, spec, fit history and ``extra``."""
    return {"format": FORMAT, **content.spec.to_dict(), "fit": content.fit.to_dict(),
            "extra": content.extra}


def model_arrays(content: ModelFile) -> dict[str, np.ndarray]:
    """The array part of ``content``: the parameters in the codec of :mod:`.arrays`."""
    return param_arrays(content.params, content.spec.modalities)


def write_model_file(path: str, content: ModelFile) -> None:
    """Write ``content`` to directory ``path`` (created if needed)."""
    os.makedirs(path, exist_ok=True)
    np.savez(os.path.join(path, ARRAYS), **model_arrays(content))
    with open(os.path.join(path, MODEL_JSON), "w") as f:
        json.dump(model_document(content), f, indent=2)


def _read_json(path: str) -> dict:
    try:
        with open(os.path.join(path, MODEL_JSON)) as f:
            document = json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"No model at '{path}': {MODEL_JSON} is missing.") from None
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}/{MODEL_JSON} is not valid JSON: {e}.") from None
    return document


def check_format(document: Any, where: str) -> None:
    """A :class:`ModelFormatError` naming ``where`` unless ``document`` is of :data:`FORMAT`."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFormatError(f"{where} is not an {FORMAT} model.")


def _read_params(path: str, spec: MixtureSpec) -> MixtureParams:
    try:
        arrays = dict(np.load(os.path.join(path, ARRAYS), allow_pickle=False))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"Cannot read {path}/{ARRAYS} as plain arrays: {e}") from None
    return checked_params(arrays, spec, f"{path}/{ARRAYS}")


def checked_params(arrays: dict[str, np.ndarray], spec: MixtureSpec,
                   where: str) -> MixtureParams:
    """The validated parameters of ``spec`` in ``arrays`` (read from ``where``)."""
    try:
        return read_params(arrays, spec.modalities, spec.n_components)
    except ArrayFormatError as e:
        raise ModelFormatError(f"{where}: {e}") from None


def model_from_document(document: dict[str, Any], where: str
                        ) -> tuple[MixtureSpec, FitHistory, dict[str, Any]]:
    """Spec, fit history and ``extra`` of a :func:`model_document` read from ``where``."""
    check_format(document, where)
    try:
        return (MixtureSpec.from_dict(document), FitHistory.from_dict(document["fit"]),
                dict(document.get("extra", {})))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"{where} is malformed: {e}") from None


def model_file_from(document: Any, arrays: dict[str, np.ndarray], where: str) -> ModelFile:
    """Inverse of :func:`model_document` + :func:`model_arrays`, read from ``where`` (the
    JSON and every array validated; a :class:`ModelFormatError` naming ``where``)."""
    spec, fit, extra = model_from_document(document, where)
    return ModelFile(spec, checked_params(arrays, spec, where), fit, extra)


def read_model_file(path: str) -> ModelFile:
    """Read and validate a model directory written by :func:`write_model_file`."""
    spec, fit, extra = model_from_document(_read_json(path), f"{path}/{MODEL_JSON}")
    return ModelFile(spec, _read_params(path, spec), fit, extra)
