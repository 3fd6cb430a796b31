"""EM checkpoints: the state of an interrupted fit, as plain arrays + JSON (never pickle).

A checkpoint is one file ``<directory>/checkpoint.npz`` written after every EM iteration
(to a temporary file, then ``os.replace``: a reader sees the previous or the new checkpoint,
never a partial one). It holds

* arrays (float64): the parameters of the restart in progress (``cur_*``) and of the best
  finished restart (``best_*``, when ``n_init > 1``), in the layout of
  :mod:`mmgmm_spark.io.model_files`; the state of the initialisation random generator
  (``rng_keys``, uint32);
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
from typing import TYPE_CHECKING, Any

import numpy as np

from mmgmm_spark.core.em import (
    EMProgress,
    EMResult,
    IterationCallback,
    StatsPass,
    resumable_restarts,
    run_em,
)
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import (
    DegenerateComponentError,
    GaussianBlock,
    MixtureParams,
    covariance_shape,
    precisions_cholesky_from_covariances,
)
from mmgmm_spark.io.model_files import HYPERPARAMETERS

if TYPE_CHECKING:
    from mmgmm_spark.models.mixture import MultimodalGaussianMixture

log = logging.getLogger(__name__)

FORMAT = "mmgmm-spark-checkpoint/1"
FILENAME = "checkpoint.npz"
ARTIFACT_DIR = "checkpoint"
"""Where a tracked fit keeps its checkpoint among the run's artefacts."""
_BLOCK_FIELDS = ("means", "covariances", "precisions_cholesky")
_RNG_WORDS = 624


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed, tampered with, or belongs to another fit."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, validated checkpoint.

    Attributes:
        progress: restart index, the restart's parameters/lower bounds, the best earlier restart.
        rng_state: ``RandomState.get_state()`` of the initialisation generator, or None.
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

    def restore_rng(self, rng: np.random.RandomState) -> None:
        """Put ``rng`` in the state it had when the checkpoint was written."""
        if self.rng_state is not None:
            rng.set_state(self.rng_state)


# --------------------------------------------------------------------------------- writing
def model_spec(model: MultimodalGaussianMixture) -> dict[str, Any]:
    """What must not change between an interrupted fit and its resumption."""
    seed = model.random_state if isinstance(model.random_state, int) else None
    return {"modalities": [m.to_dict() for m in model.modalities],
            "hyperparameters": {name: getattr(model, name) for name in HYPERPARAMETERS}
            | {"random_state": seed}}


def _param_arrays(prefix: str, params: MixtureParams,
                  modalities: tuple[Modality, ...]) -> dict[str, np.ndarray]:
    arrays = {f"{prefix}weights": np.asarray(params.weights, dtype=np.float64)}
    for index, m in enumerate(modalities):
        block = params.blocks[m.name]
        for name in _BLOCK_FIELDS:
            arrays[f"{prefix}m{index}_{name}"] = np.asarray(getattr(block, name), np.float64)
    return arrays


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


def checkpoint_content(progress: EMProgress, model: MultimodalGaussianMixture,
                       rng: np.random.RandomState | None, run_id: str | None
                       ) -> dict[str, np.ndarray]:
    """The arrays of the checkpoint file, ``document`` (JSON as uint8) included."""
    arrays = _param_arrays("cur_", progress.current.params, model.modalities)
    if progress.best is not None:
        arrays |= _param_arrays("best_", progress.best.params, model.modalities)
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


def save_checkpoint(directory: str, progress: EMProgress, model: MultimodalGaussianMixture,
                    rng: np.random.RandomState | None = None, run_id: str | None = None) -> str:
    """Atomically (temp file + ``os.replace``) write ``<directory>/checkpoint.npz``; its path."""
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, FILENAME)
    temporary = os.path.join(directory, f".{FILENAME}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **checkpoint_content(progress, model, rng, run_id))
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
        model: the estimator being fitted (its modalities and hyperparameters are recorded).
        run_id: MLflow run recorded in the checkpoint.
        upload: called with the file's path after each write (e.g. log it as a run
            artefact); a failure there is logged once as a warning and does not stop the fit.
    """

    def __init__(self, directory: str, model: MultimodalGaussianMixture,
                 run_id: str | None = None, upload: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.model = model
        self.run_id = run_id
        self.upload = upload
        self.rng: np.random.RandomState | None = None  # set by the fitting function
        self.writes = 0
        self.upload_failures = 0

    @property
    def path(self) -> str:
        return os.path.join(self.directory, FILENAME)

    def __call__(self, progress: EMProgress) -> None:
        path = save_checkpoint(self.directory, progress, self.model, self.rng, self.run_id)
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


def _expected_keys(modalities: tuple[Modality, ...], has_best: bool, has_rng: bool) -> set[str]:
    prefixes = ("cur_", "best_") if has_best else ("cur_",)
    keys = {"document"} | ({"rng_keys"} if has_rng else set())
    for prefix in prefixes:
        keys.add(f"{prefix}weights")
        keys |= {f"{prefix}m{i}_{name}" for i in range(len(modalities)) for name in _BLOCK_FIELDS}
    return keys


def _float_array(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...],
                 path: str) -> np.ndarray:
    value = arrays[key]
    if value.dtype != np.float64 or value.shape != shape or not np.all(np.isfinite(value)):
        raise CheckpointError(f"Checkpoint {path!r}: '{key}' must be finite float64 of shape "
                              f"{shape}, got {value.dtype} {value.shape}.")
    return value


def _read_params(arrays: Mapping[str, np.ndarray], prefix: str,
                 modalities: tuple[Modality, ...], k: int, path: str) -> MixtureParams:
    weights = _float_array(arrays, f"{prefix}weights", (k,), path)
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
        raise CheckpointError(f"Checkpoint {path!r}: weights must be >= 0 and sum to 1.")
    blocks = {}
    for index, m in enumerate(modalities):
        shape = covariance_shape(m.covariance_type, k, m.dim)
        means = _float_array(arrays, f"{prefix}m{index}_means", (k, m.dim), path)
        cov = _float_array(arrays, f"{prefix}m{index}_covariances", shape, path)
        chol = _float_array(arrays, f"{prefix}m{index}_precisions_cholesky", shape, path)
        try:
            expected = precisions_cholesky_from_covariances(m.covariance_type, cov, m.name)
        except DegenerateComponentError as exc:
            raise CheckpointError(f"Checkpoint {path!r}: {exc}") from None
        if not np.allclose(chol, expected, rtol=1e-6, atol=1e-12):
            raise CheckpointError(f"Checkpoint {path!r}: modality '{m.name}' precisions do not "
                                  "match its covariances (modified or corrupted).")
        blocks[m.name] = GaussianBlock(m.covariance_type, means, cov, chol)
    return MixtureParams(weights, blocks)


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


def load_checkpoint(path: str, model: MultimodalGaussianMixture) -> Checkpoint:
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
    expected_spec = json.loads(json.dumps(model_spec(model)))
    found_spec = {key: document.get(key) for key in expected_spec}
    if found_spec != expected_spec:
        raise CheckpointError(
            f"Checkpoint {path!r} belongs to another fit: it was written for {found_spec}, "
            f"not {expected_spec}.")
    has_best = document.get("best") is not None
    expected = _expected_keys(model.modalities, has_best, document.get("rng") is not None)
    if set(arrays) != expected:
        raise CheckpointError(f"Checkpoint {path!r}: unexpected arrays "
                              f"{sorted(set(arrays) ^ expected)}.")
    restart = document.get("restart")
    if not isinstance(restart, int) or not 0 <= restart < model.n_init:
        raise CheckpointError(f"Checkpoint {path!r}: restart {restart!r} is not in "
                              f"[0, {model.n_init}).")
    k = model.n_components
    current = _history_result(document.get("current"),
                              _read_params(arrays, "cur_", model.modalities, k, path),
                              model.max_iter, path)
    best = None if not has_best else _history_result(
        document["best"], _read_params(arrays, "best_", model.modalities, k, path),
        model.max_iter, path)
    run_id = document.get("run_id")
    return Checkpoint(EMProgress(restart, current, best), _rng_state(document, arrays, path),
                      run_id if isinstance(run_id, str) else None, path)


# ------------------------------------------------------------------------------ fitting
def resumable_fit_em(model: MultimodalGaussianMixture, initials: Callable[[int], MixtureParams],
                     stats_pass: StatsPass, on_iteration: IterationCallback | None, *,
                     checkpointer: Checkpointer | None = None,
                     resume: Checkpoint | None = None) -> EMResult:
    """``model.fit_em`` that writes a checkpoint after every iteration and can resume from one.

    The caller restores its random generator with :meth:`Checkpoint.restore_rng` before
    ``initials`` may be called, and sets ``checkpointer.rng`` to that generator.
    """
    def run(start: EMResult, on_result: Callable[[EMResult], None]) -> EMResult:
        return run_em(stats_pass, start.params, model.modalities, model.reg_covar, model.tol,
                      model.max_iter, on_iteration, history=start.lower_bounds,
                      on_result=on_result)

    return resumable_restarts(initials, model.n_init, run,
                              resume=resume.progress if resume is not None else None,
                              on_progress=checkpointer)
