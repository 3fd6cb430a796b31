"""Mixture features (posteriors and improved Fisher vectors) against independent references.

References: scikit-image's ``fisher_vector`` and scikit-learn's ``predict_proba`` on the same
mixture (a diag single-modality model), finite differences of scikit-learn's log-likelihood
(the blocks are Fisher-normalised gradients, with their signs), and a plain numpy/scipy
reference written here for a multimodal model with missing modalities and for bags.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from skimage.feature import fisher_vector
from sklearn.mixture import GaussianMixture

from mmgmm_spark.core.batch import batch_from_arrays
from mmgmm_spark.core.fisher import (
    fisher_layout,
    improved_fisher_vectors,
    row_scores,
    sum_by_key,
)
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import GaussianBlock, MixtureParams


def blobs(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d) + rng.integers(0, 3, n)[:, None] * 3


def sklearn_mixture(x: np.ndarray, kind: str, k: int = 3) -> GaussianMixture:
    return GaussianMixture(k, covariance_type=kind, random_state=0).fit(x)


def params_of(gmm: GaussianMixture, kind: str, name: str = "a") -> MixtureParams:
    return MixtureParams(gmm.weights_.copy(), {name: GaussianBlock(
        kind, gmm.means_.copy(), gmm.covariances_.copy(), gmm.precisions_cholesky_.copy())})


def scores_of(x: np.ndarray, params: MixtureParams, modalities: tuple[Modality, ...],
              name: str = "a") -> tuple[np.ndarray, np.ndarray]:
    return row_scores(batch_from_arrays({name: x}, modalities), params, modalities)


# ---------------------------------------------------------------------------- core, one modality
def test_diag_fisher_vector_equals_scikit_image_and_posteriors_equal_sklearn() -> None:
    x = blobs(400, 5)
    gmm = sklearn_mixture(x, "diag", k=4)
    modalities = (Modality("a", 5, "diag"),)
    params = params_of(gmm, "diag")
    resp, scores = scores_of(x[:50], params, modalities)
    np.testing.assert_allclose(resp, gmm.predict_proba(x[:50]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, atol=1e-12)
    ours = improved_fisher_vectors(scores.sum(axis=0, keepdims=True), np.array([50]))[0]
    reference = fisher_vector(x[:50], gmm, improved=True)
    assert [name for name, _ in fisher_layout(params, modalities)] == [
        "weights", "a.means", "a.variances"]
    # scikit-image's variance block is sigma^2 - (x - mu)^2: the negative of the gradient
    sign = np.concatenate([np.ones(4 + 4 * 5), -np.ones(4 * 5)])
    np.testing.assert_allclose(ours, sign * reference, rtol=0, atol=1e-12)
    one_row = improved_fisher_vectors(scores[:1], np.ones(1))[0]
    np.testing.assert_allclose(one_row, sign * fisher_vector(x[:1], gmm, improved=True),
                               atol=1e-12)


def _fd_gradient(gmm: GaussianMixture, x: np.ndarray, attribute: str, kind: str,
                 eps: float = 1e-6) -> np.ndarray:
    """Central differences of sum_i log p(x_i) by the entries of ``means_`` or of the
    standard deviations (``std``: sqrt of ``covariances_`` for diag/spherical)."""
    base = (gmm.means_ if attribute == "means" else np.sqrt(gmm.covariances_)).copy()
    grad = np.zeros_like(base)

    def total(value: np.ndarray) -> float:
        g = GaussianMixture(gmm.n_components, covariance_type=kind)
        g.weights_ = gmm.weights_
        g.means_ = value if attribute == "means" else gmm.means_
        g.covariances_ = gmm.covariances_ if attribute == "means" else value ** 2
        if kind == "full":
            g.precisions_cholesky_ = gmm.precisions_cholesky_
        else:
            g.precisions_cholesky_ = 1.0 / np.sqrt(g.covariances_)
        return float(g.score_samples(x).sum())

    for index in np.ndindex(base.shape):
        up, down = base.copy(), base.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (total(up) - total(down)) / (2 * eps)
    return grad


@pytest.mark.parametrize("kind", ["diag", "spherical", "full"])
def test_blocks_are_fisher_normalised_gradients(kind: str) -> None:
    """Mean block = C^-1 dlogp/dmu / sqrt(pi) (C C^T the precision); diag/spherical variance
    block = sigma dlogp/dsigma / sqrt(2 pi) (spherical: / sqrt(2 d pi)); full: no variances."""
    x = blobs(300, 3, seed=1)
    gmm = sklearn_mixture(x, kind)
    modalities = (Modality("a", 3, kind),)
    params = params_of(gmm, kind)
    rows = x[:7]
    _, scores = scores_of(rows, params, modalities)
    total = scores.sum(axis=0)
    k, d = 3, 3
    root = np.sqrt(gmm.weights_)[:, None]
    means = total[k: k + k * d].reshape(k, d)
    grad = _fd_gradient(gmm, rows, "means", kind)
    if kind == "full":
        expected = np.einsum("kij,kj->ki", np.linalg.inv(gmm.precisions_cholesky_), grad)
    else:
        std = np.sqrt(gmm.covariances_).reshape(k, -1)
        expected = grad * std
    np.testing.assert_allclose(means, expected / root, rtol=1e-5, atol=1e-6)
    if kind == "full":
        assert scores.shape[1] == k + k * d
        return
    std_grad = _fd_gradient(gmm, rows, "std", kind)
    std = np.sqrt(gmm.covariances_)
    factor = np.sqrt(2.0) if kind == "diag" else np.sqrt(2.0 * d)
    expected_var = (std_grad * std).reshape(k, -1) / (factor * root)
    np.testing.assert_allclose(total[k + k * d:].reshape(k, -1), expected_var,
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ numpy reference, multimodal
def reference_scores(data: dict[str, np.ndarray], weights: np.ndarray,
                     blocks: dict[str, dict]) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy/scipy: posteriors over observed modalities (fusion weights applied), then
    the Fisher score table of :mod:`mmgmm_spark.core.fisher`, row by row."""
    n, k = len(next(iter(data.values()))), len(weights)
    log_joint = np.tile(np.log(weights), (n, 1))
    for name, x in data.items():
        seen = ~np.isnan(x).all(axis=1)
        b = blocks[name]
        for j in range(k):
            log_joint[seen, j] += b["weight"] * multivariate_normal(
                b["means"][j], b["cov"][j]).logpdf(x[seen])
    resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    rows = []
    for i in range(n):
        parts = [(resp[i] - weights) / np.sqrt(weights)]
        for name, x in data.items():
            b, d = blocks[name], x.shape[1]
            mean_part, var_part = np.zeros((k, d)), []
            for j in range(k):
                if np.isnan(x[i]).all():
                    var_part.append(np.zeros(d if b["kind"] == "diag" else 1))
                    continue
                lower = np.linalg.cholesky(b["cov"][j])
                y = np.linalg.solve(lower, x[i] - b["means"][j])     # whitened: |y|^2 = maha
                mean_part[j] = resp[i, j] * y / np.sqrt(weights[j])
                if b["kind"] == "diag":
                    var_part.append(resp[i, j] * (y ** 2 - 1) / np.sqrt(2 * weights[j]))
                elif b["kind"] == "spherical":
                    var_part.append([resp[i, j] * (y @ y - d) / np.sqrt(2 * d * weights[j])])
            parts.append(mean_part.ravel())
            if b["kind"] in ("diag", "spherical"):
                parts.append(np.ravel(var_part))
        rows.append(np.concatenate(parts))
    return resp, np.array(rows)


def multimodal_model(seed: int = 2):
    """A 3-component model: 'img' full (d=3, weight 1.5), 'txt' spherical (d=2), 'sen' diag
    (d=2); parameters drawn at random; data with missing modalities."""
    rng = np.random.default_rng(seed)
    k = 3
    weights = np.array([0.5, 0.3, 0.2])
    modalities = (Modality("img", 3, "full", 1.5), Modality("txt", 2, "spherical"),
                  Modality("sen", 2, "diag"))
    raw = {}
    a = rng.normal(size=(k, 3, 3))
    raw["img"] = ("full", rng.normal(size=(k, 3)) * 2, a @ np.swapaxes(a, 1, 2) + np.eye(3))
    raw["txt"] = ("spherical", rng.normal(size=(k, 2)) * 2, rng.uniform(0.5, 2.0, k))
    raw["sen"] = ("diag", rng.normal(size=(k, 2)) * 2, rng.uniform(0.5, 2.0, (k, 2)))
    params = MixtureParams(weights, {
        name: GaussianBlock.from_covariances(kind, means, cov, name)
        for name, (kind, means, cov) in raw.items()})
    dense_cov = {name: params.blocks[name].full_covariances(k) for name in raw}
    blocks = {m.name: {"kind": m.covariance_type, "weight": m.weight,
                       "means": raw[m.name][1], "cov": dense_cov[m.name]} for m in modalities}
    n = 40
    data = {m.name: rng.normal(size=(n, m.dim)) * 2 for m in modalities}
    data["img"][::5] = np.nan
    data["txt"][1::7] = np.nan
    data["sen"][2::3] = np.nan
    return modalities, params, blocks, data


def test_multimodal_scores_with_missing_modalities_equal_numpy_reference() -> None:
    modalities, params, blocks, data = multimodal_model()
    resp, scores = row_scores(batch_from_arrays(data, modalities), params, modalities)
    ref_resp, ref_scores = reference_scores(data, params.weights, blocks)
    np.testing.assert_allclose(resp, ref_resp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-10, atol=1e-12)
    layout = fisher_layout(params, modalities)
    assert layout == [("weights", 3), ("img.means", 9), ("txt.means", 6),
                      ("txt.variances", 3), ("sen.means", 6), ("sen.variances", 6)]
    assert scores.shape[1] == sum(size for _, size in layout)


def reference_bag_vectors(keys: np.ndarray, scores: np.ndarray) -> dict:
    """Per bag: mean score, signed square root, L2 normalisation (written out here)."""
    out = {}
    for key in np.unique(keys):
        z = scores[keys == key].mean(axis=0)
        z = np.sign(z) * np.sqrt(np.abs(z))
        out[key] = z / np.linalg.norm(z)
    return out


def test_bag_sums_and_improved_vectors_equal_reference() -> None:
    modalities, params, blocks, data = multimodal_model()
    keys = np.array([f"bag{i % 6}" for i in range(40)], dtype=object)
    _, ref_scores = reference_scores(data, params.weights, blocks)
    _, scores = row_scores(batch_from_arrays(data, modalities), params, modalities)
    distinct, sums, counts = sum_by_key(keys, scores)
    vectors = improved_fisher_vectors(sums, counts)
    expected = reference_bag_vectors(keys, ref_scores)
    assert list(distinct) == sorted(expected)
    assert counts.tolist() == [int((keys == key).sum()) for key in distinct]
    for key, vector in zip(distinct, vectors, strict=True):
        np.testing.assert_allclose(vector, expected[key], rtol=1e-10, atol=1e-12)
        assert np.isclose(np.linalg.norm(vector), 1.0)


# ------------------------------------------------------------------ models: fitted fusion models
def test_fusion_model_features_use_its_preprocessing_and_late_is_refused() -> None:
    from mmgmm_spark.models.features import MixtureFeatures
    from mmgmm_spark.models.fusion import FusionConfig, FusionModel

    rng = np.random.default_rng(4)
    data = {"a": blobs(300, 3, seed=5) * 10 + 50, "b": rng.normal(size=(300, 2))}
    data["b"][::4] = np.nan
    modalities = [Modality("a", 3), Modality("b", 2)]
    config = FusionConfig(strategy="joint", n_components=(2,), covariance_types=("diag",),
                          projection=None, standardise=True, random_state=0)
    model = FusionModel(modalities, config).fit(data)
    batch = model.to_batch(data)
    resp, scores = MixtureFeatures.of(model).row_scores(batch)
    np.testing.assert_allclose(resp, model.responsibilities(batch), rtol=0, atol=1e-12)
    # reference: standardise with the fitted scaler written out, then the numpy reference
    mixture = model.mixtures_["joint"]
    standardised = {}
    for name, x in data.items():
        p = model.preprocessors_[name]
        standardised[name] = (x - p.mean) / p.scale
    blocks = {m.name: {"kind": m.covariance_type, "weight": m.weight,
                       "means": mixture.means_[m.name],
                       "cov": mixture.params.blocks[m.name].full_covariances(2)}
              for m in mixture.modalities}
    ref_resp, ref_scores = reference_scores(standardised, mixture.weights_, blocks)
    np.testing.assert_allclose(resp, ref_resp, atol=1e-10)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-8, atol=1e-10)
    late = FusionModel(modalities, FusionConfig(strategy="late", n_components=(2,),
                                                projection=None, standardise=False,
                                                random_state=0)).fit(data)
    with pytest.raises(ValueError, match="'late' fusion.*model.fusion joint"):
        MixtureFeatures.of(late)
