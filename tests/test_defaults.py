"""Defaults that do not collapse: one reg_covar default everywhere, a refusal of models with
fewer rows than parameters, warnings naming degenerate components, and the issue's case
(early fusion, K=10) against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.config import AppConfig, default_config_path, load_config
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.core.batch import DataValidationError, batch_from_arrays
from mmgmm_spark.core.params import DegenerateComponentWarning
from mmgmm_spark.core.spec import DEFAULT_REG_COVAR, MixtureSpec
from mmgmm_spark.models.fusion import FusionConfig


def test_one_reg_covar_default_everywhere():
    embedded = load_config(default_config_path())
    document = embedded.model_dump()
    document["model"].pop("reg_covar")
    assert DEFAULT_REG_COVAR == 1e-3
    assert (MultimodalGaussianMixture([Modality("x", 2)]).reg_covar
            == MixtureSpec((Modality("x", 2),)).reg_covar == FusionConfig().reg_covar
            == embedded.model.reg_covar == AppConfig.model_validate(document).model.reg_covar
            == DEFAULT_REG_COVAR)
    assert embedded.model.allow_small_data is False


@pytest.mark.parametrize("kind", ["full", "diag", "spherical", "tied"])
def test_fewer_rows_than_parameters_is_refused_unless_allowed(kind):
    """The issue's K=30 on 36 rows; the parameter count is scikit-learn's."""
    x = np.random.default_rng(0).normal(size=(36, 4))
    reference = GaussianMixture(30, covariance_type=kind)
    reference.means_ = np.zeros((30, 4))
    n_parameters = int(reference._n_parameters())
    model = MultimodalGaussianMixture([Modality("x", 4, kind)], 30, random_state=0)
    with pytest.raises(DataValidationError) as error:
        model.fit({"x": x})
    message = str(error.value)
    assert f"36 rows for {n_parameters} free parameters" in message
    assert f"{36 / n_parameters:.2f} rows per parameter" in message
    assert "n_components=30" in message and "allow_small_data" in message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MultimodalGaussianMixture([Modality("x", 4, kind)], 30, random_state=0,
                                  allow_small_data=True).fit({"x": x})


def test_component_on_too_few_rows_is_named():
    """Three far rows in a plane: one full-covariance component of a 4-d modality sits on
    them (a 4-d covariance needs 5 rows) and its covariance is near-singular."""
    rng = np.random.default_rng(1)
    far = 50.0 + np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=float)
    x = np.vstack([rng.normal(size=(400, 4)), far])
    model = MultimodalGaussianMixture([Modality("ink", 4, "full")], 2, reg_covar=1e-9,
                                      random_state=0, allow_small_data=True)
    with pytest.warns(DegenerateComponentWarning) as record:
        model.fit({"ink": x})
    messages = " ".join(str(w.message) for w in record)
    component = int(np.argmin(model.weights_))
    assert f"component(s) [{component}] of modality 'ink'" in messages
    assert "fewer than the 5 a non-singular covariance needs" in messages
    assert "near-singular covariance" in messages


def _digit_like(n_rows: int, seed: int):
    """The issue's shape of data: three modalities, an image whose border pixels are zero on
    almost every row, cross-modal anomalies (each modality normal alone)."""
    modalities = (Modality("image", 10, "full"), Modality("profile", 6, "full"),
                  Modality("summary", 3, "full"))
    data = generate(n_rows, modalities, n_clusters=4, missing_fraction=0.0, seed=seed)
    rng = np.random.default_rng(seed)
    border = np.zeros((n_rows, 6))
    ink = rng.random((n_rows, 6)) < 0.02
    border[ink] = rng.integers(1, 4, ink.sum())
    x = np.hstack([data.features["image"], border, data.features["profile"],
                   data.features["summary"]])
    keep = np.isin(data.kind, ["normal", "cross_modal"])
    return x[keep], data.kind[keep] == "cross_modal"


def test_early_fusion_k10_with_the_defaults_ranks_cross_modal_rows():
    """``model.fusion=early`` fits one full-covariance block of the concatenated modalities:
    with the default reg_covar its cross-modal AUROC is far above chance and close to
    scikit-learn's GaussianMixture with the same reg_covar."""
    x, cross_modal = _digit_like(6_000, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = MultimodalGaussianMixture([Modality("early", x.shape[1], "full")], 10,
                                         random_state=0).fit({"early": x})
        reference = GaussianMixture(10, reg_covar=DEFAULT_REG_COVAR, random_state=0).fit(x)
    auroc = roc_auc_score(cross_modal, -ours.score_samples({"early": x}))
    expected = roc_auc_score(cross_modal, -reference.score_samples(x))
    assert auroc > 0.8 and expected > 0.8
    assert auroc == pytest.approx(expected, abs=0.05)


def test_relative_reg_covar_follows_the_scale_of_each_modality():
    """``reg_covar_mode='relative'``: fitting the data in other units (x1000 for one modality)
    gives the same mixture in those units — log-density shifted by the closed form
    -d log(1000) — while the absolute mode's regularisation does not scale."""
    data = generate(3_000, (Modality("a", 4, "full"), Modality("b", 3, "full")), n_clusters=3,
                    missing_fraction=0.0, seed=2).features
    scaled = {"a": data["a"] * 1000.0, "b": data["b"]}
    modalities = [Modality("a", 4, "full"), Modality("b", 3, "full")]

    def fit(values, mode):
        return MultimodalGaussianMixture(modalities, 3, reg_covar=1e-2, reg_covar_mode=mode,
                                         tol=0, max_iter=20, random_state=0).fit(values)

    relative, relative_scaled = fit(data, "relative"), fit(scaled, "relative")
    np.testing.assert_allclose(relative_scaled.score_samples(scaled),
                               relative.score_samples(data) - 4 * np.log(1000.0),
                               rtol=1e-8, atol=1e-8)
    expected = {"a": 1e-2 * data["a"].var(axis=0).mean(), "b": 1e-2 * data["b"].var(axis=0).mean()}
    spec = relative.spec()
    got = spec.block_reg_covar(batch_from_arrays(data, tuple(modalities)))
    assert got == pytest.approx(expected, rel=1e-12)
    absolute, absolute_scaled = fit(data, "absolute"), fit(scaled, "absolute")
    gap = absolute_scaled.score_samples(scaled) - (absolute.score_samples(data) - 4 * np.log(1e3))
    assert np.abs(gap).max() > 1e-3


def test_dequantise_floor_is_the_uniform_noise_variance_of_each_step():
    """``reg_covar_mode='dequantise'``: a lattice feature of step s gets reg_covar + s^2/12
    (closed form), a constant feature reg_covar alone; with K=1 the covariance is the sample
    covariance plus that diagonal (numpy reference)."""
    rng = np.random.RandomState(0)
    x = np.column_stack([0.5 * rng.randint(0, 9, 400), 2.0 * rng.randint(-3, 4, 400),
                         np.full(400, 7.0)])
    modalities = [Modality("x", 3, "full")]
    model = MultimodalGaussianMixture(modalities, 1, reg_covar_mode="dequantise",
                                      allow_small_data=True)
    floor = model.spec().block_reg_covar(batch_from_arrays({"x": x}, tuple(modalities)))["x"]
    expected = DEFAULT_REG_COVAR + np.array([0.5 ** 2 / 12, 2.0 ** 2 / 12, 0.0])
    np.testing.assert_allclose(floor, expected, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateComponentWarning)   # the constant feature
        model.fit({"x": x}, on_iteration=None)
    np.testing.assert_allclose(model.covariances_["x"][0],
                               np.cov(x, rowvar=False, bias=True) + np.diag(expected),
                               rtol=1e-10, atol=1e-12)


def test_dequantised_fit_on_lattice_data_does_not_collapse_like_fitting_noisy_data():
    """Three groups, each at one value of an integer feature: the absolute-mode fit collapses
    every component onto its value (variance reg_covar); the dequantised fit keeps 1/12 + reg,
    as scikit-learn fitted on the data plus explicit U(-1/2, 1/2) noise does."""
    rng = np.random.RandomState(1)
    groups = np.repeat(np.arange(3), 300)
    x = np.column_stack([groups.astype(float), rng.normal(6.0 * groups, 1.0)])
    modalities = [Modality("x", 2, "full")]

    def variances(mode):
        model = MultimodalGaussianMixture(modalities, 3, reg_covar_mode=mode, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateComponentWarning)
            model.fit({"x": x}, on_iteration=None)
        return np.sort(model.covariances_["x"][:, 0, 0])

    noisy = np.repeat(x, 20, axis=0) + np.column_stack(
        [rng.uniform(-0.5, 0.5, 20 * len(x)), np.zeros(20 * len(x))])
    reference = GaussianMixture(3, reg_covar=DEFAULT_REG_COVAR, random_state=0,
                                means_init=[[g, 6.0 * g] for g in range(3)]).fit(noisy)
    np.testing.assert_allclose(variances("absolute"), DEFAULT_REG_COVAR, rtol=1e-6)
    dequantised = variances("dequantise")
    np.testing.assert_allclose(dequantised, 1 / 12 + DEFAULT_REG_COVAR, rtol=0.02)
    np.testing.assert_allclose(np.sort(reference.covariances_[:, 0, 0]), dequantised, rtol=0.03)
