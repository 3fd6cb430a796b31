"""Input validation, hyperparameter checks, restarts, warnings and degenerate components."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mmgmm_spark import (
    ConvergenceWarning,
    DataValidationError,
    DegenerateComponentError,
    DegenerateComponentWarning,
    Modality,
    MultimodalGaussianMixture,
)
from mmgmm_spark.core.em import IterationReport

MODS = [Modality("image", 3, "full"), Modality("text", 2, "diag")]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


def _data(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, size=n)
    return {"image": rng.normal(size=(n, 3)) + 4.0 * labels[:, None],
            "text": rng.normal(size=(n, 2)) - 3.0 * labels[:, None]}


def _fitted() -> MultimodalGaussianMixture:
    return MultimodalGaussianMixture(MODS, 2, random_state=0).fit(_data(), on_iteration=None)


def _partly_nan(d: dict) -> None:
    d["text"][[3, 7, 11], 1] = np.nan


def _infinite(d: dict) -> None:
    d["image"][[1, 2], 0] = np.inf
    d["image"][5, 2] = -np.inf


def _wrong_width(d: dict) -> None:
    d["text"] = np.hstack([d["text"], d["text"]])


def _no_modality(d: dict) -> None:
    d["image"][[4, 8, 9, 10]] = np.nan
    d["text"][[4, 8, 9, 10]] = np.nan


def _row_counts(d: dict) -> None:
    d["text"] = d["text"][:-7]


def _unknown_key(d: dict) -> None:
    d["audio"] = d.pop("text")


def _missing_key(d: dict) -> None:
    del d["image"]


CORRUPTIONS: list[tuple[Callable[[dict], None], list[str]]] = [
    (_partly_nan, ["text", "3 row"]),
    (_infinite, ["image", "3 row"]),
    (_wrong_width, ["text", "width 4", "expected 2"]),
    (_no_modality, ["image", "text", "4 row"]),
    (_row_counts, ["'text': 193", "'image': 200"]),
    (_unknown_key, ["audio", "text"]),
    (_missing_key, ["missing: ['image']"]),
]


@pytest.mark.parametrize("corrupt, fragments", CORRUPTIONS,
                         ids=[c.__name__.strip("_") for c, _ in CORRUPTIONS])
@pytest.mark.parametrize("method", ["fit", "score_samples"])
def test_bad_data_raises_data_validation_error_naming_modality_and_rows(
        corrupt: Callable[[dict], None], fragments: list[str], method: str) -> None:
    """Each kind of bad input raises DataValidationError naming the modality and the row count."""
    data = _data()
    corrupt(data)
    model = MultimodalGaussianMixture(MODS, 2, random_state=0)
    call = (lambda: model.fit(data, on_iteration=None)) if method == "fit" else (
        lambda: _fitted().score_samples(data))
    with pytest.raises(DataValidationError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value)


def test_fit_rejects_a_modality_no_row_observes_but_scoring_marginalises_it() -> None:
    """Fitting needs every modality somewhere; scoring one row lacking a modality is fine."""
    data = _data()
    data["text"][:] = np.nan
    with pytest.raises(DataValidationError, match="text"):
        MultimodalGaussianMixture(MODS, 2).fit(data, on_iteration=None)
    model = _fitted()
    row = {"image": _data()["image"][:1], "text": np.full((1, 2), np.nan)}
    alone = model.modality_log_likelihoods(row)["image"]
    np.testing.assert_allclose(model.score_samples(row), alone, rtol=1e-12)


def test_k_means_seeding_without_complete_rows_points_at_the_ids() -> None:
    rng = np.random.RandomState(0)
    image, text = rng.randn(40, 3), rng.randn(40, 2)
    image[20:], text[:20] = np.nan, np.nan        # no entity has both modalities
    with pytest.raises(DataValidationError, match="only 0 do.*ids do not match"):
        MultimodalGaussianMixture(MODS, 2).fit({"image": image, "text": text})


def test_non_dict_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="dict"):
        MultimodalGaussianMixture(MODS, 2).fit(np.zeros((5, 5)), on_iteration=None)


@pytest.mark.parametrize("name, value", [
    ("n_components", 0), ("n_components", 2.5), ("tol", -1e-3), ("tol", float("nan")),
    ("reg_covar", -1.0), ("max_iter", -1), ("n_init", 0), ("init_params", "spectral"),
    ("weights_init", np.array([0.7, 0.7])), ("means_init", {"image": np.zeros((3, 3))}),
    ("precisions_init", {"text": np.ones((2, 2, 2))}), ("means_init", {"audio": np.zeros((2, 3))}),
])
def test_bad_hyperparameter_raises_value_error_naming_it(name: str, value: object) -> None:
    """A bad hyperparameter is a ValueError whose message names the parameter."""
    model = MultimodalGaussianMixture(MODS, **{"n_components": 2, name: value})
    with pytest.raises(ValueError, match=re.escape(name)):
        model.fit(_data(), on_iteration=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"covariance_type": "banded"}, "covariance_type"), ({"dim": 0}, "dim"),
    ({"weight": 0.0}, "weight"), ({"name": ""}, "name"),
])
def test_bad_modality_raises_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Modality(**{"name": "x", "dim": 2, **kwargs})


def test_duplicate_modality_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        MultimodalGaussianMixture([Modality("a", 2), Modality("a", 3)])


def test_n_init_keeps_the_restart_with_the_best_lower_bound() -> None:
    """With several restarts the fitted history is the restart whose final bound is highest."""
    runs: list[list[float]] = []

    def record(report: IterationReport) -> None:
        if report.iteration == 1:
            runs.append([])
        runs[-1].append(report.mean_log_likelihood)

    rng = np.random.default_rng(1)
    data = {"image": rng.normal(size=(300, 3)) * [1, 2, 3], "text": rng.normal(size=(300, 2))}
    model = MultimodalGaussianMixture(MODS, 5, n_init=4, tol=1e-4, max_iter=30,
                                      init_params="random", random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, on_iteration=record)
    assert len(runs) == 4
    finals = [run[-1] for run in runs]
    assert len(set(np.round(finals, 10))) > 1, "restarts should differ for the test to mean much"
    assert model.lower_bound_ == max(finals)
    assert model.lower_bounds_ == runs[int(np.argmax(finals))]


def test_convergence_warning_when_max_iter_is_hit() -> None:
    """Stopping at max_iter warns with ConvergenceWarning; converging does not."""
    with pytest.warns(ConvergenceWarning, match="3 iterations"):
        model = MultimodalGaussianMixture(MODS, 2, tol=0, max_iter=3, random_state=0)
        model.fit(_data(), on_iteration=None)
    assert not model.converged_ and model.n_iter_ == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = MultimodalGaussianMixture(MODS, 2, tol=1e-3, max_iter=200, random_state=0)
        model.fit(_data(), on_iteration=None)
    assert model.converged_ and model.n_iter_ < 200
    assert abs(model.lower_bounds_[-1] - model.lower_bounds_[-2]) < 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collapsed_component_without_regularisation_raises_naming_it(seed: int) -> None:
    """A component left alone on identical rows has a singular covariance when reg_covar=0."""
    d = 8
    rng = np.random.default_rng(seed)
    data = {"emb": np.vstack([rng.normal(size=(200, d)), np.full((3, d), 50.0)])}
    model = MultimodalGaussianMixture(
        [Modality("emb", d, "full")], 2, tol=0, max_iter=5, reg_covar=0.0,
        init_params="random", random_state=seed, weights_init=np.array([0.9, 0.1]),
        means_init={"emb": np.vstack([np.zeros(d), np.full(d, 50.0)])},
        precisions_init={"emb": np.stack([np.eye(d)] * 2)})
    with pytest.raises(DegenerateComponentError) as info:
        model.fit(data, on_iteration=None)
    assert "Component 1" in str(info.value) and "'emb'" in str(info.value)
    model.reg_covar = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, on_iteration=None)
    assert np.all(np.isfinite(model.lower_bounds_))


def _degenerate_warnings(data: dict[str, np.ndarray], **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MultimodalGaussianMixture(MODS, 2, random_state=0, **kwargs).fit(data, on_iteration=None)
    return [str(w.message) for w in caught if w.category is DegenerateComponentWarning]


def test_constant_feature_and_duplicated_rows_warn_naming_modality_and_feature() -> None:
    """Clean data warns nothing; a constant column and a block of copies are each named."""
    assert _degenerate_warnings(_data()) == []
    constant = _data()
    constant["image"][:, 2] = 7.0
    messages = _degenerate_warnings(constant)
    assert any("'image': feature(s) [2] are constant over the 200 rows" in m for m in messages)
    assert any("'image': feature(s) [2] have no variance" in m for m in messages)
    assert not any("'text'" in m for m in messages)
    copies = _data()
    copies["text"][:30] = copies["text"][0]
    messages = _degenerate_warnings(copies)
    assert any("'text': 29 of the 200 rows" in m and "duplicated" in m for m in messages)
    assert not any("'image'" in m for m in messages)


def test_unfitted_model_raises() -> None:
    from mmgmm_spark import NotFittedError

    with pytest.raises(NotFittedError):
        MultimodalGaussianMixture(MODS, 2).score_samples(_data())
