"""Fusion strategies against independent references (scikit-learn, scipy) and the detector."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm, rankdata
from sklearn.mixture import GaussianMixture

from mmgmm_spark import Modality
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.fusion import EARLY, FusionConfig, FusionModel

RAW = {"standardise": False, "projection": None, "reg_covar": 1e-6, "min_weight": 0.0}
MODALITIES = [Modality("a", 3), Modality("b", 2)]


@pytest.fixture()
def two_views() -> dict[str, np.ndarray]:
    """400 rows of two correlated views (3 and 2 features) from two clusters."""
    rng = np.random.RandomState(0)
    label = rng.rand(400) < 0.4
    a = rng.randn(400, 3) @ np.array([[1, .5, 0], [0, 1, .3], [0, 0, .5]]) + 4 * label[:, None]
    b = rng.randn(400, 2) + a[:, :2] * 0.5 - 3 * label[:, None]
    return {"a": a, "b": b}


def _gaussian_ll(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Log-density under the maximum-likelihood Gaussian of ``train`` (reg_covar 1e-6)."""
    cov = np.cov(train, rowvar=False, bias=True) + 1e-6 * np.eye(train.shape[1])
    return multivariate_normal(train.mean(axis=0), cov).logpdf(x)


def test_early_equals_sklearn_on_concatenated_features(two_views) -> None:
    x = np.hstack([two_views["a"], two_views["b"]])
    rng = np.random.RandomState(3)
    weights, means = np.array([0.5, 0.3, 0.2]), x[rng.choice(len(x), 3, replace=False)]
    precisions = np.stack([np.eye(5)] * 3)
    init = {"weights_init": weights, "means_init": {EARLY: means},
            "precisions_init": {EARLY: precisions}}
    model = FusionModel(MODALITIES, FusionConfig("early", n_components=(3,), tol=1e-6,
                                                 max_iter=300, **RAW), init).fit(two_views)
    reference = GaussianMixture(3, covariance_type="full", tol=1e-6, max_iter=300,
                                reg_covar=1e-6, weights_init=weights, means_init=means,
                                precisions_init=precisions).fit(x)
    np.testing.assert_allclose(model.score_samples(two_views), reference.score_samples(x),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.mixtures_[EARLY].means_[EARLY], reference.means_,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.columns(two_views)["cluster"], reference.predict(x))


def test_early_marginalises_missing_modalities_exactly(two_views) -> None:
    model = FusionModel(MODALITIES, FusionConfig("early", n_components=(1,), **RAW))
    model.fit(two_views)
    x = np.hstack([two_views["a"], two_views["b"]])
    test = {"a": two_views["a"][:10].copy(), "b": two_views["b"][:10].copy()}
    test["b"][:4] = np.nan
    columns = model.columns(test)
    mean, cov = x.mean(axis=0), np.cov(x, rowvar=False, bias=True) + 1e-6 * np.eye(5)
    marginal_a = multivariate_normal(mean[:3], cov[:3, :3]).logpdf(test["a"])
    full = multivariate_normal(mean, cov).logpdf(np.hstack([test["a"], two_views["b"][:10]]))
    np.testing.assert_allclose(columns["log_likelihood"][:4], marginal_a[:4], rtol=1e-8)
    np.testing.assert_allclose(columns["log_likelihood"][4:], full[4:], rtol=1e-8)
    np.testing.assert_allclose(columns["a"], marginal_a, rtol=1e-8)
    assert np.isnan(columns["b"][:4]).all()


def test_joint_with_one_component_is_the_product_of_gaussians(two_views) -> None:
    model = FusionModel(MODALITIES, FusionConfig("joint", n_components=(1,), **RAW))
    model.fit(two_views)
    expected = {name: _gaussian_ll(x, x) for name, x in two_views.items()}
    columns = model.columns(two_views)
    np.testing.assert_allclose(columns["log_likelihood"], expected["a"] + expected["b"],
                               rtol=1e-7)
    np.testing.assert_allclose(columns["b"], expected["b"], rtol=1e-7)


def test_late_score_is_the_hand_computed_combination(two_views) -> None:
    model = FusionModel(MODALITIES, FusionConfig("late", n_components=(1,), **RAW))
    model.fit(two_views)
    train = {name: _gaussian_ll(x, x) for name, x in two_views.items()}
    test = {"a": two_views["a"][:20].copy(), "b": two_views["b"][:20].copy()}
    test["a"][:5] = np.nan                     # rows 0-4 observe only b
    z = {name: (_gaussian_ll(test[name], two_views[name]) - train[name].mean())
         / train[name].std() for name in test}
    expected = np.where(np.arange(20) < 5, z["b"], (z["a"] + z["b"]) / 2)
    columns = model.columns(test)
    np.testing.assert_allclose(columns["log_likelihood"], expected, rtol=1e-7)
    np.testing.assert_allclose(columns["b"], _gaussian_ll(test["b"], two_views["b"]),
                               rtol=1e-7)
    assert np.isnan(columns["a"][:5]).all()
    ll = {name: _gaussian_ll(test[name], two_views[name]) for name in test}
    density = np.where(np.arange(20) < 5, ll["b"], ll["a"] + ll["b"])   # independent views
    np.testing.assert_allclose(model.log_density(test), density, rtol=1e-7)
    assert model.score(test) == pytest.approx(density.mean(), rel=1e-7)


def test_bic_selects_the_number_of_clusters_without_labels(two_views) -> None:
    model = FusionModel(MODALITIES, FusionConfig("joint", n_components=(1, 2, 3)))
    model.fit(two_views)
    assert model.chosen["joint"]["n_components"] == 2
    bics = {c["n_components"]: c["bic"] for c in model.selection_["joint"]}
    assert bics[2] == min(bics.values())


def test_projection_grid_is_chosen_by_bic() -> None:
    rng = np.random.RandomState(0)
    x = rng.randn(300, 3) @ rng.randn(3, 40) + 0.05 * rng.randn(300, 40)
    model = FusionModel([Modality("e", 40)],
                        FusionConfig("joint", n_components=(1,), projection_grid=(1, 3, 10),
                                     standardise=False))      # isotropic noise stays isotropic
    model.fit({"e": x})
    assert model.chosen["joint"]["projection"] == {"e": 3}


def test_auto_standardisation_is_chosen_by_bic_only_for_projected_modalities() -> None:
    """Raw-scale PCA is the true model of ``e`` (isotropic noise in raw units); ``s`` is not
    projected, so it is always standardised."""
    rng = np.random.RandomState(0)
    scales = np.geomspace(0.1, 10.0, 40)
    e = (rng.randn(300, 3) @ rng.randn(3, 40)) * scales + 0.05 * rng.randn(300, 40)
    s = rng.randn(300, 2) * [100.0, 0.01]
    model = FusionModel([Modality("e", 40), Modality("s", 2)],
                        FusionConfig("joint", n_components=(1,), projection=3))
    model.fit({"e": e, "s": s})
    tried = {c["standardise"]: c["bic"] for c in model.selection_["joint"]}
    assert set(tried) == {True, False} and tried[False] < tried[True]
    np.testing.assert_array_equal(model.preprocessors_["e"].scale, np.ones(40))
    np.testing.assert_allclose(model.preprocessors_["s"].scale, s.std(axis=0), rtol=1e-12)
    unprojected = FusionModel([Modality("s", 2)], FusionConfig("joint", n_components=(1, 2)))
    unprojected.fit({"s": s})
    assert {c["standardise"] for c in unprojected.selection_["joint"]} == {True}


@pytest.mark.parametrize("strategy", ["joint", "early", "late"])
def test_detector_covers_every_strategy_in_one_artefact(two_views, strategy, tmp_path) -> None:
    wide = {"a": two_views["a"], "b": np.hstack([two_views["b"]] * 30)
            + 0.1 * np.random.RandomState(1).randn(400, 60)}
    modalities = [Modality("a", 3), Modality("b", 60)]
    detector = AnomalyDetector.fit(FusionModel(modalities, FusionConfig(strategy)), wide, 0.05)
    columns = detector.score(wide)
    assert list(columns) == detector.output_columns() == [
        "log_likelihood", "anomaly_score", "calibrated_score", "is_anomaly", "cluster",
        "a_log_likelihood", "b_log_likelihood"]
    assert columns["is_anomaly"].mean() == pytest.approx(0.05, abs=0.01)
    np.testing.assert_array_equal(columns["anomaly_score"], -columns["log_likelihood"])
    detector.save(str(tmp_path / "model"))
    loaded = AnomalyDetector.load(str(tmp_path / "model"))
    assert isinstance(loaded.model, FusionModel) and loaded.model.strategy == strategy
    assert loaded.threshold == detector.threshold and loaded.contamination == 0.05
    again = loaded.score(wide)
    for name, values in columns.items():
        np.testing.assert_array_equal(again[name], values)
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))


def test_degenerate_feature_warnings_say_projected_features_are_components() -> None:
    """Inside naming_coordinates, a mixture warning about a projected modality gains the note;
    other warnings pass unchanged, also when the fit fails."""
    import warnings

    from mmgmm_spark.core.params import DegenerateComponentWarning
    from mmgmm_spark.core.preprocessing import ModalityPreprocessor
    from mmgmm_spark.models.fusion import Preprocessing

    rng = np.random.default_rng(0)
    projected = ModalityPreprocessor.fit(rng.normal(size=(50, 3)), 2)
    preprocessing = Preprocessing(tuple(MODALITIES), {"a": projected,
                                                      "b": ModalityPreprocessor.identity(2)},
                                  FusionConfig())
    with (pytest.warns(DegenerateComponentWarning) as seen, pytest.raises(RuntimeError),
          preprocessing.naming_coordinates()):
        warnings.warn("Modality 'a': feature(s) [1] have no variance",
                      DegenerateComponentWarning, stacklevel=1)
        warnings.warn("Modality 'b': feature(s) [0] have no variance",
                      DegenerateComponentWarning, stacklevel=1)
        raise RuntimeError("the fit failed")
    messages = [str(w.message) for w in seen]
    assert messages[0].endswith("In 'a' the features are principal components of the "
                                "preprocessing, not input columns.)")
    assert messages[1] == "Modality 'b': feature(s) [0] have no variance"


def test_the_registry_names_every_strategy_and_refuses_an_unknown_one() -> None:
    from mmgmm_spark.models.fusion import STRATEGIES, get_strategy, names_with

    assert list(STRATEGIES) == ["joint", "early", "late"]
    assert all(get_strategy(name).name == name for name in STRATEGIES)
    assert names_with("resume") == ["joint", "early"] and names_with("fusion_weights") == ["joint"]
    with pytest.raises(ValueError, match="'joint', 'early', 'late'.*'middle'"):
        FusionConfig("middle")


def test_ensemble_is_the_mean_normal_score_of_the_grid_members() -> None:
    """K=1 full and diag members: closed-form Gaussians, ranks from scipy."""
    rng = np.random.RandomState(4)
    x = rng.randn(200, 3) @ rng.randn(3, 3) + 1.0
    config = FusionConfig(n_components=(1,), covariance_types=("full", "diag"),
                          projection=None, standardise=True, ensemble=True)
    model = FusionModel([Modality("x", 3)], config).fit({"x": x})
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    cov = np.cov(z, rowvar=False, bias=True) + 1e-3 * np.eye(3)
    log_scale = np.log(x.std(axis=0)).sum()
    full = multivariate_normal(z.mean(axis=0), cov).logpdf(z) - log_scale
    diag = multivariate_normal(z.mean(axis=0), np.diag(np.diag(cov))).logpdf(z) - log_scale
    expected = np.mean([norm.ppf((rankdata(d) - 0.5) / len(d)) for d in (full, diag)], axis=0)
    np.testing.assert_allclose(model.score_samples({"x": x}), expected, atol=1e-8)
    np.testing.assert_allclose(model.log_density({"x": x}), full if model.chosen["joint"][
        "covariance_type"] == "full" else diag, rtol=1e-6)


def test_ensemble_round_trips_and_refuses_late(tmp_path) -> None:
    rng = np.random.RandomState(5)
    x = np.vstack([rng.randn(150, 2), rng.randn(150, 2) + 6])
    model = FusionModel([Modality("x", 2)], FusionConfig(ensemble=True)).fit({"x": x})
    assert len(model.members_["joint"]) == 3                    # K = 1, 2, 3
    model.save(str(tmp_path / "m"))
    loaded = FusionModel.load(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.score_samples({"x": x}), model.score_samples({"x": x}))
    with pytest.raises(ValueError, match="ensemble"):
        FusionConfig(strategy="late", ensemble=True)


def test_flat_form_round_trips_an_ensemble_and_names_what_is_wrong() -> None:
    """The detector's flat form (one document + named arrays, what the Spark ML stage writes)
    keeps every member and scores as the directory form; a missing, unknown or altered array
    is a ModelFormatError naming the part."""
    from mmgmm_spark import ModelFormatError

    rng = np.random.RandomState(6)
    x = np.vstack([rng.randn(150, 2), rng.randn(150, 2) + 6])
    detector = AnomalyDetector.fit(
        FusionModel([Modality("x", 2)], FusionConfig(ensemble=True)), {"x": x}, 0.05)
    document, arrays = detector.to_parts()
    assert document["format"] == "mmgmm-spark-fusion/1"
    assert sorted(document["mixture_files"]) == ["member_joint_0", "member_joint_1",
                                                 "member_joint_2", "mixture_0"]
    back = AnomalyDetector.from_parts(document, arrays, "stage")
    for name, values in detector.score({"x": x}).items():
        np.testing.assert_array_equal(back.score({"x": x})[name], values, err_msg=name)
    assert back.threshold == detector.threshold
    missing = {k: v for k, v in arrays.items() if k != "member_joint_1/weights"}
    with pytest.raises(ModelFormatError, match=r"stage \(member_joint_1\).*weights"):
        AnomalyDetector.from_parts(document, missing, "stage")
    with pytest.raises(ModelFormatError, match=r"unknown parts \['extra'\]"):
        AnomalyDetector.from_parts(document, {**arrays, "extra/a": np.ones(1)}, "stage")
    bad = {**arrays, "preprocessing/p0_scale": -arrays["preprocessing/p0_scale"]}
    with pytest.raises(ModelFormatError, match="stage is not a valid fusion model.*scale"):
        AnomalyDetector.from_parts(document, bad, "stage")
