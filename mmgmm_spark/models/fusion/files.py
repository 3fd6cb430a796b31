"""The fusion model file codec: a directory of JSON + plain arrays, or one document + arrays.

A fusion model directory holds ``fusion.json`` (format, modalities, config, preprocessing
metadata, the sub-directory of every mixture and ensemble member, late statistics, selection
and ``extra``), ``preprocessing.npz`` (``p<i>_<field>`` arrays) and one model directory
(:mod:`mmgmm_spark.io.model_files`) per mixture. :class:`FusionFile` is that content;
:func:`write_fusion_file` / :func:`read_fusion_file` are its directory form, and
:func:`fusion_document` / :func:`fusion_arrays` / :func:`fusion_file_from` its flat form (one
JSON document + named arrays, which the Spark ML stage writes through Spark). Nothing is
pickled; reading validates every part.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmgmm_spark.io.model_files import (
    ModelFile,
    ModelFormatError,
    model_arrays,
    model_document,
    model_file_from,
    read_model_file,
    write_model_file,
)

FORMAT = "mmgmm-spark-fusion/1"
FUSION_JSON = "fusion.json"
PREPROCESSING = "preprocessing.npz"
MIXTURE_FILES = "mixture_files"
"""Key of the flat document holding each mixture's model document, by sub-directory."""
PREPROCESSING_PART = "preprocessing"
SEPARATOR = "/"
"""Flat array names are ``<part>/<name>``: ``preprocessing/p0_mean``, ``mixture_0/weights``."""


@dataclass(frozen=True)
class FusionFile:
    """Everything a fusion model directory holds.

    Attributes:
        document: the ``fusion.json`` document.
        preprocessing: the ``preprocessing.npz`` arrays, by name.
        mixtures: the model file of every mixture and ensemble member, by sub-directory.
    """

    document: dict[str, Any]
    preprocessing: dict[str, np.ndarray]
    mixtures: dict[str, ModelFile]


def mixture_dirs(document: dict[str, Any]) -> list[str]:
    """The sub-directories ``document`` refers to: its mixtures', then its members'."""
    members = [d["mixture"] for listed in document.get("members", {}).values() for d in listed]
    return [*document["mixtures"].values(), *members]


def write_fusion_file(path: str, content: FusionFile) -> None:
    """Write ``content`` to directory ``path`` (created if needed)."""
    os.makedirs(path, exist_ok=True)
    np.savez(os.path.join(path, PREPROCESSING), **content.preprocessing)
    for sub, mixture in content.mixtures.items():
        write_model_file(os.path.join(path, sub), mixture)
    with open(os.path.join(path, FUSION_JSON), "w") as f:
        json.dump(content.document, f, indent=2)


def read_fusion_file(path: str) -> FusionFile:
    """Read a directory written by :func:`write_fusion_file` (a :class:`ModelFormatError`
    naming ``path`` if a part is missing or malformed)."""
    try:
        with open(os.path.join(path, FUSION_JSON)) as f:
            document = json.load(f)
        check_fusion_format(document, f"{path}/{FUSION_JSON}")
        preprocessing = dict(np.load(os.path.join(path, PREPROCESSING), allow_pickle=False))
        subs = mixture_dirs(document)
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise ModelFormatError(f"{path} is not a valid fusion model: {e}") from None
    return FusionFile(document, preprocessing,
                      {sub: read_model_file(os.path.join(path, sub)) for sub in subs})


def is_fusion_artefact(path: str) -> bool:
    """True when directory ``path`` holds a fusion model (not a plain mixture)."""
    return os.path.isfile(os.path.join(path, FUSION_JSON))


def is_fusion_document(document: Any) -> bool:
    """True when ``document`` (a fusion.json or flat document) is of :data:`FORMAT`."""
    return isinstance(document, dict) and document.get("format") == FORMAT


def check_fusion_format(document: Any, where: str) -> None:
    """A :class:`ModelFormatError` naming ``where`` unless ``document`` is of :data:`FORMAT`."""
    if not is_fusion_document(document):
        raise ModelFormatError(f"{where} is not an {FORMAT} artefact.")


# ------------------------------------------------------------------------- flat form
def fusion_document(content: FusionFile) -> dict[str, Any]:
    """The JSON part of the flat form: ``fusion.json`` plus each mixture's model document
    under :data:`MIXTURE_FILES`."""
    return {**content.document,
            MIXTURE_FILES: {sub: model_document(m) for sub, m in content.mixtures.items()}}


def fusion_arrays(content: FusionFile) -> dict[str, np.ndarray]:
    """The array part of the flat form: every array named ``<part>/<name>``."""
    parts = {PREPROCESSING_PART: content.preprocessing,
             **{sub: model_arrays(m) for sub, m in content.mixtures.items()}}
    return {f"{part}{SEPARATOR}{name}": values
            for part, arrays in parts.items() for name, values in arrays.items()}


def fusion_file_from(document: dict[str, Any], arrays: dict[str, np.ndarray],
                     where: str) -> FusionFile:
    """Inverse of :func:`fusion_document` + :func:`fusion_arrays`, read from ``where``
    (every mixture validated as a model file; a :class:`ModelFormatError` naming ``where``)."""
    check_fusion_format(document, where)
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, values in arrays.items():
        part, _, name = key.partition(SEPARATOR)
        parts.setdefault(part, {})[name] = values
    documents = document.get(MIXTURE_FILES)
    if not isinstance(documents, dict):
        raise ModelFormatError(f"{where} has no '{MIXTURE_FILES}' object.")
    mixtures = {sub: model_file_from(doc, parts.pop(sub, {}), f"{where} ({sub})")
                for sub, doc in documents.items()}
    preprocessing = parts.pop(PREPROCESSING_PART, {})
    if parts:
        raise ModelFormatError(f"{where} has arrays of unknown parts {sorted(parts)}.")
    return FusionFile({k: v for k, v in document.items() if k != MIXTURE_FILES},
                      preprocessing, mixtures)
