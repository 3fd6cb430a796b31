"""EM checkpoints: the state of an interrupted fit, as plain arrays + JSON (never pickle).

A checkpoint is one file ``<directory>/checkpoint.npz`` written after every EM iteration
(to a temporary file, then ``os.replace``: a reader sees the previous or the new checkpoint,
never a partial one). It holds

* arrays (float64): the parameters of the restart in progress (``cur_*``) and of the best
  finished restart (``best_*``, when ``n_init > 1``), in the codec of
  :mod:`mmgmm_spark.io.arrays` (shared with model files); the state of the initialisation
  random generator (``rng_keys``, uint32);
* ``document`` (uint8, UTF-8 JSON): format, the model's modalities and hyperparameters, the
  restart index, the lower-bound histories, the MLflow run id, and a SHA-256 digest of all of
  the above.

Loading reads with ``allow_pickle=False``, accepts exactly the expected keys, dtypes and
shapes, checks the digest, the consistency of covariances and precisions and that the
checkpoint belongs to the model being resumed; anything else is a :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from mmgmm_spark.core.em import EMProgress, EMResult
from mmgmm_spark.core.params import MixtureParams
from mmgmm_spark.core.spec import MixtureSpec
from mmgmm_spark.io.arrays import ArrayFormatError, param_arrays, param_keys, read_params


class HasSpec(Protocol):
    """An estimator: anything whose ``spec()`` is the :class:`MixtureSpec` being fitted."""

    def spec(self) -> MixtureSpec: ...


Fitted = MixtureSpec | HasSpec
"""What a checkpoint belongs to: a spec, or an estimator that has one."""


def _spec_of(model: Fitted) -> MixtureSpec:
    return model if isinstance(model, MixtureSpec) else model.spec()


log = logging.getLogger(__name__)

FORMAT = "mmgmm-spark-checkpoint/1"
FILENAME = "checkpoint.npz"
ARTIFACT_DIR = "checkpoint"
"""Where a tracked fit keeps its checkpoint among the run's artefacts."""
_RNG_WORDS = 624


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed, tampered with, or belongs to another fit."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, validated checkpoint.

    Attributes:
        progress: restart index, the restart's parameters/lower bounds, the best earlier restart.
        rng_state: ``RandomState.get_state()`` of the initialisation generator, or None
            (the EM driver restores it when resuming).
        run_id: the MLflow run the fit belongs to, or None.
        path: the file it was read from.
    """

    progress: EMProgress
    rng_state: tuple | None
    run_id: str | None
    path: str

    @property
    def iterations(self) -> int:
        """Completed iterations of the restart in progress."""
        return self.progress.current.n_iter


# --------------------------------------------------------------------------------- writing
def model_spec(model: Fitted) -> dict[str, Any]:
    """What must not change between an interrupted fit and its resumption."""
    return _spec_of(model).to_dict()


def _digest(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the canonical JSON (without the digest) and every array's key/dtype/bytes."""
    sha = hashlib.sha256(json.dumps({k: v for k, v in document.items() if k != "digest"},
                                    sort_keys=True).encode())
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        sha.update(f"{key}|{value.dtype.str}|{value.shape}".encode())
        sha.update(value.tobytes())
    return sha.hexdigest()


def _history(result: EMResult) -> dict[str, Any]:
    return {"lower_bounds": [float(v) for v in result.lower_bounds],
            "converged": bool(result.converged)}


def checkpoint_content(progress: EMProgress, model: Fitted,
                       run_id: str | None) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint file, ``document`` (JSON as uint8) included."""
    modalities = _spec_of(model).modalities
    arrays = param_arrays(progress.current.params, modalities, "cur_")
    if progress.best is not None:
        arrays |= param_arrays(progress.best.params, modalities, "best_")
    rng = progress.rng
    document: dict[str, Any] = {
        "format": FORMAT, **model_spec(model), "restart": int(progress.restart),
        "current": _history(progress.current),
        "best": None if progress.best is None else _history(progress.best),
        "run_id": run_id, "written_at": datetime.now(UTC).isoformat(), "rng": None,
    }
    if rng is not None:
        _, keys, pos, has_gauss, cached = rng.get_state()
        arrays["rng_keys"] = np.asarray(keys, dtype=np.uint32)
        document["rng"] = {"pos": int(pos), "has_gauss": int(has_gauss),
                           "cached_gaussian": float(cached)}
    document["digest"] = _digest(document, arrays)
    arrays["document"] = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    return arrays


def save_checkpoint(directory: str, progress: EMProgress, model: Fitted,
                    run_id: str | None = None) -> str:
    """Atomically (temp file + ``os.replace``) write ``<directory>/checkpoint.npz``; its path."""
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, FILENAME)
    temporary = os.path.join(directory, f".{FILENAME}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **checkpoint_content(progress, model, run_id))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


class Checkpointer:
    """``on_progress`` callback writing a checkpoint after every EM iteration.

    Args:
        directory: where ``checkpoint.npz`` goes.
        model: the estimator being fitted, or its spec (modalities and hyperparameters are
            recorded; the generator's state comes with each progress report).
        run_id: MLflow run recorded in the checkpoint.
        upload: called with the file's path after each write (e.g. log it as a run
            artefact); a failure there is logged once as a warning and does not stop the fit.
    """

    def __init__(self, directory: str, model: Fitted,
                 run_id: str | None = None, upload: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.spec = _spec_of(model)
        self.run_id = run_id
        self.upload = upload
        self.writes = 0
        self.upload_failures = 0

    @property
    def path(self) -> str:
        return os.path.join(self.directory, FILENAME)

    def __call__(self, progress: EMProgress) -> None:
        path = save_checkpoint(self.directory, progress, self.spec, self.run_id)
        self.writes += 1
        if self.upload is None:
            return
        try:
            self.upload(path)
        except Exception as exc:  # the local checkpoint is enough to resume
            self.upload_failures += 1
            if self.upload_failures == 1:
                log.warning("Could not upload checkpoint %s (the local copy is kept; further "
                            "failures are not reported): %s", path, exc)


# --------------------------------------------------------------------------------- reading
def _read_arrays(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise CheckpointError(f"No checkpoint at {path!r}.") from None
    except Exception as exc:  # zip errors, object arrays refused without pickle, ...
        raise CheckpointError(f"Checkpoint {path!r} is not a plain-array file: {exc}") from None


def _read_document(arrays: Mapping[str, np.ndarray], path: str) -> dict[str, Any]:
    raw = arrays.get("document")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"Checkpoint {path!r} has no JSON document.")
    try:
        document = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Checkpoint {path!r}: document is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not an {FORMAT} checkpoint.")
    return document


def _expected_keys(modalities: tuple, has_best: bool, has_rng: bool) -> set[str]:
    keys = {"document"} | ({"rng_keys"} if has_rng else set()) | param_keys(modalities, "cur_")
    return keys | (param_keys(modalities, "best_") if has_best else set())


def _read_params(arrays: Mapping[str, np.ndarray], prefix: str, spec: MixtureSpec,
                 path: str) -> MixtureParams:
    try:
        return read_params(arrays, spec.modalities, spec.n_components, prefix)
    except ArrayFormatError as error:
        raise CheckpointError(f"Checkpoint {path!r}: {error}") from None


def _history_result(entry: Any, params: MixtureParams, max_iter: int, path: str) -> EMResult:
    try:
        bounds = [float(v) for v in entry["lower_bounds"]]
        converged = entry["converged"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"Checkpoint {path!r}: malformed lower-bound history.") from None
    if (not isinstance(converged, bool) or len(bounds) > max_iter
            or not all(np.isfinite(bounds))):
        raise CheckpointError(f"Checkpoint {path!r}: invalid lower-bound history "
                              f"({len(bounds)} values, max_iter {max_iter}).")
    return EMResult(params, bounds, converged)


def _rng_state(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
               path: str) -> tuple | None:
    rng = document.get("rng")
    if rng is None:
        return None
    keys = arrays["rng_keys"]
    try:
        pos, has_gauss = int(rng["pos"]), int(rng["has_gauss"])
        cached = float(rng["cached_gaussian"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"Checkpoint {path!r}: malformed random-generator state.") from None
    if keys.dtype != np.uint32 or keys.shape != (_RNG_WORDS,) or not 0 <= pos <= _RNG_WORDS:
        raise CheckpointError(f"Checkpoint {path!r}: invalid random-generator state.")
    return ("MT19937", keys, pos, has_gauss, cached)


def _check_belongs(document: Mapping[str, Any], spec: MixtureSpec, path: str) -> None:
    expected_spec = json.loads(json.dumps(spec.to_dict()))
    found_spec = {key: document.get(key) for key in expected_spec}
    if found_spec != expected_spec:
        raise CheckpointError(
            f"Checkpoint {path!r} belongs to another fit: it was written for {found_spec}, "
            f"not {expected_spec}.")


def _progress(document: Mapping[str, Any], arrays: Mapping[str, np.ndarray], spec: MixtureSpec,
              path: str) -> EMProgress:
    has_best = document.get("best") is not None
    expected = _expected_keys(spec.modalities, has_best, document.get("rng") is not None)
    if set(arrays) != expected:
        raise CheckpointError(f"Checkpoint {path!r}: unexpected arrays "
                              f"{sorted(set(arrays) ^ expected)}.")
    restart = document.get("restart")
    if not isinstance(restart, int) or not 0 <= restart < spec.n_init:
        raise CheckpointError(f"Checkpoint {path!r}: restart {restart!r} is not in "
                              f"[0, {spec.n_init}).")
    current = _history_result(document.get("current"),
                              _read_params(arrays, "cur_", spec, path), spec.max_iter, path)
    best = None if not has_best else _history_result(
        document["best"], _read_params(arrays, "best_", spec, path), spec.max_iter, path)
    return EMProgress(restart, current, best)


def load_checkpoint(path: str, model: Fitted) -> Checkpoint:
    """Read and validate a checkpoint file (or directory holding one) for resuming ``model``.

    Raises :class:`CheckpointError` naming the problem when the file is not a plain-array
    checkpoint, was modified (digest, shapes, dtypes, covariance/precision consistency) or
    was written by a fit with other modalities or hyperparameters.
    """
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    arrays = _read_arrays(path)
    document = _read_document(arrays, path)
    if document.get("digest") != _digest(document, {k: v for k, v in arrays.items()
                                                    if k != "document"}):
        raise CheckpointError(f"Checkpoint {path!r} fails its integrity check (digest "
                              "mismatch): it was modified or corrupted.")
    spec = _spec_of(model)
    _check_belongs(document, spec, path)
    run_id = document.get("run_id")
    return Checkpoint(_progress(document, arrays, spec, path),
                      _rng_state(document, arrays, path),
                      run_id if isinstance(run_id, str) else None, path)
