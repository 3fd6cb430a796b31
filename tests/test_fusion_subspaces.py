"""Random-subspace ensembles (``FusionConfig.subspaces``) against scipy references."""

import json
import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm, rankdata

from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.fusion import FusionConfig, FusionModel
from mmgmm_spark.models.fusion.files import fusion_arrays, fusion_document, fusion_file_from

REG = 1e-6
ONE_GAUSSIAN = {"n_components": (1,), "projection": None, "standardise": True,
                "reg_covar": REG}


def _data(n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 7)) @ rng.normal(size=(7, 7)) + 3.0
    return {"a": a, "b": rng.normal(size=(n, 2)) * [1.0, 5.0]}


def _gaussian_log_density(x: np.ndarray) -> np.ndarray:
    """(n,) log-density of rows x (n, d) under the Gaussian of their own mean and covariance
    fitted on standardised columns (+ REG on the diagonal), in input units."""
    scale = x.std(axis=0)
    z = (x - x.mean(axis=0)) / scale
    covariance = np.cov(z, rowvar=False, bias=True) + REG * np.eye(x.shape[1])
    return multivariate_normal(np.zeros(x.shape[1]), covariance).logpdf(z) - np.log(scale).sum()


def test_members_are_gaussians_of_their_columns_and_scores_their_mean_normal_score():
    data = _data()
    modalities = [Modality("a", 7), Modality("b", 2)]
    model = FusionModel(modalities, FusionConfig(subspaces=4, **ONE_GAUSSIAN)).fit(data)
    members = model.members_["joint"]
    assert len(members) == 4
    reference = []
    for member in members:
        features = member.subspace.features
        assert len(features["a"]) == min(6, math.ceil(0.75 * 7))     # at most d - 1
        np.testing.assert_array_equal(features["b"], [0, 1])          # d <= 2: every column
        assert np.all(np.diff(features["a"]) > 0)
        log_density = sum(_gaussian_log_density(data[name][:, columns])
                          for name, columns in features.items())
        reference.append(norm.ppf((rankdata(log_density) - 0.5) / len(log_density)))
    assert len({tuple(m.subspace.features["a"]) for m in members}) > 1     # distinct draws
    np.testing.assert_allclose(model.score_samples(data), np.mean(reference, axis=0),
                               atol=1e-6)


def test_a_missing_modality_is_marginalised_in_every_member():
    data = _data()
    data["a"][:40] = np.nan
    model = FusionModel([Modality("a", 7), Modality("b", 2)],
                        FusionConfig(subspaces=3, **ONE_GAUSSIAN)).fit(data)
    scores = model.score_samples(data)
    assert np.isfinite(scores).all()
    only_b = {"a": np.full((5, 7), np.nan), "b": data["b"][:5]}
    np.testing.assert_array_equal(model.score_samples(only_b), scores[:5])


def test_saved_and_flat_forms_give_the_same_scores(tmp_path):
    data = _data(300, seed=1)
    model = FusionModel([Modality("a", 7), Modality("b", 2)],
                        FusionConfig(subspaces=3, n_components=(1, 2))).fit(data)
    model.save(str(tmp_path / "m"))
    loaded = FusionModel.load(str(tmp_path / "m"))
    content = model.to_file()
    flat = FusionModel.from_file(fusion_file_from(fusion_document(content),
                                                  fusion_arrays(content), "flat"), "flat")
    for other in (loaded, flat):
        np.testing.assert_array_equal(other.score_samples(data), model.score_samples(data))
        assert [m.subspace.features["a"].tolist() for m in other.members_["joint"]] == [
            m.subspace.features["a"].tolist() for m in model.members_["joint"]]


@pytest.mark.parametrize("options, named", [
    ({"subspaces": -1}, "subspaces"), ({"subspaces": 2.5}, "subspaces"),
    ({"subspaces": True}, "subspaces"),
    ({"subspaces": 2, "subspace_fraction": 0.0}, "subspace_fraction"),
    ({"subspaces": 2, "subspace_fraction": "0.5"}, "subspace_fraction"),
    ({"subspaces": 2, "subspace_fraction": 1.5}, "subspace_fraction"),
    ({"subspaces": 2, "ensemble": True}, "ensemble"),
    ({"subspaces": 2, "strategy": "late"}, "late")])
def test_bad_subspace_settings_are_refused_by_name(options, named):
    with pytest.raises(ValueError, match=named):
        FusionConfig(**options)


def test_numpy_numbers_are_accepted_and_saved_as_json_numbers():
    config = FusionConfig(subspaces=np.int64(3), subspace_fraction=np.float32(0.5))
    assert json.loads(json.dumps(config.to_dict()))["subspaces"] == 3
