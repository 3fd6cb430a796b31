"""save/load: a lossless round trip through plain arrays + JSON, and tampering is rejected."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mmgmm_spark import Modality, ModelFormatError, MultimodalGaussianMixture

MODS = [Modality("image", 3, "full"), Modality("text", 2, "diag", weight=0.5),
        Modality("geo", 2, "tied"), Modality("tag", 2, "spherical")]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(3, size=300)
    data = {m.name: rng.normal(size=(300, m.dim)) + 3.0 * labels[:, None] for m in MODS}
    data["text"][::7] = np.nan
    return data


@pytest.fixture(scope="module")
def fitted() -> MultimodalGaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MultimodalGaussianMixture(MODS, 3, random_state=0, tol=1e-4).fit(
            _data(), on_iteration=None)


@pytest.fixture
def saved(fitted: MultimodalGaussianMixture, tmp_path: Path) -> Path:
    path = tmp_path / "model"
    fitted.save(str(path))
    return path


def test_round_trip_is_exact(fitted: MultimodalGaussianMixture, saved: Path) -> None:
    """Every parameter, the fit history and the scores survive save/load bit for bit."""
    loaded = MultimodalGaussianMixture.load(str(saved))
    assert loaded.modalities == fitted.modalities
    assert loaded.n_components == fitted.n_components and loaded.tol == fitted.tol
    np.testing.assert_array_equal(loaded.weights_, fitted.weights_)
    for attribute in ("means_", "covariances_", "precisions_cholesky_"):
        for name, value in getattr(fitted, attribute).items():
            np.testing.assert_array_equal(getattr(loaded, attribute)[name], value)
    assert loaded.lower_bounds_ == fitted.lower_bounds_
    assert loaded.converged_ == fitted.converged_
    np.testing.assert_array_equal(loaded.score_samples(_data()), fitted.score_samples(_data()))


def test_artefact_is_plain_arrays_and_json(saved: Path) -> None:
    """arrays.npz loads with allow_pickle=False and holds only float64 arrays."""
    with np.load(saved / "arrays.npz", allow_pickle=False) as arrays:
        assert all(arrays[key].dtype == np.float64 for key in arrays.files)
    json.loads((saved / "model.json").read_text())


def _rewrite_arrays(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(path / "arrays.npz", allow_pickle=False) as f:
        arrays = dict(f)
    change(arrays)
    np.savez(path / "arrays.npz", **arrays)


def _rewrite_json(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads((path / "model.json").read_text())
    change(document)
    (path / "model.json").write_text(json.dumps(document))


def _set(mapping: dict, key: str, value: object) -> None:
    mapping[key] = value


ARRAY_TAMPERING: dict[str, Callable[[dict], None]] = {
    "pickled object array": lambda a: _set(a, "weights", np.array([{"x": 1}, 2, 3],
                                                                  dtype=object)),
    "weights not summing to 1": lambda a: _set(a, "weights", a["weights"] * 2),
    "negative weight": lambda a: _set(a, "weights", a["weights"] * [-1, 1, 1]),
    "wrong mean shape": lambda a: _set(a, "m0_means", a["m0_means"][:, :2]),
    "float32 covariance": lambda a: _set(a, "m1_covariances",
                                         a["m1_covariances"].astype(np.float32)),
    "nan in means": lambda a: _set(a, "m3_means", a["m3_means"] * np.nan),
    "covariance without matching precision": lambda a: _set(a, "m0_covariances",
                                                            a["m0_covariances"] * 1.5),
    "tied precision changed": lambda a: _set(a, "m2_precisions_cholesky",
                                             a["m2_precisions_cholesky"] * 1.01),
    "missing array": lambda a: a.pop("m3_covariances"),
}


@pytest.mark.parametrize("change", ARRAY_TAMPERING.values(), ids=ARRAY_TAMPERING.keys())
def test_tampered_arrays_are_rejected(saved: Path, change: Callable[[dict], None]) -> None:
    _rewrite_arrays(saved, change)
    with pytest.raises(ModelFormatError):
        MultimodalGaussianMixture.load(str(saved))


JSON_TAMPERING: dict[str, Callable[[dict], None]] = {
    "wrong format": lambda d: _set(d, "format", "pickle/1"),
    "modality dim changed": lambda d: _set(d["modalities"][0], "dim", 4),
    "unknown covariance type": lambda d: _set(d["modalities"][1], "covariance_type", "banded"),
    "n_components changed": lambda d: _set(d["hyperparameters"], "n_components", 4),
    "bad hyperparameter": lambda d: _set(d["hyperparameters"], "tol", -1),
    "modalities removed": lambda d: d.pop("modalities"),
}


@pytest.mark.parametrize("change", JSON_TAMPERING.values(), ids=JSON_TAMPERING.keys())
def test_tampered_model_json_is_rejected(saved: Path, change: Callable[[dict], None]) -> None:
    _rewrite_json(saved, change)
    with pytest.raises(ModelFormatError):
        MultimodalGaussianMixture.load(str(saved))


def test_unreadable_artefacts_are_rejected(saved: Path, tmp_path: Path) -> None:
    (saved / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="JSON"):
        MultimodalGaussianMixture.load(str(saved))
    with pytest.raises(ModelFormatError, match="missing"):
        MultimodalGaussianMixture.load(str(tmp_path / "nowhere"))
