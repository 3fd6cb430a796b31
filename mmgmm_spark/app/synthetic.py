"""Seeded synthetic multimodal data with injected anomalies, for the demo and tests.

Entities belong to one of ``n_clusters`` latent groups; every modality of an entity is drawn
from that group's Gaussian for the modality, so the modalities are dependent through the
group. Three anomaly kinds are injected:

- ``outlier``: one modality far from every group (found by a per-modality detector too);
- ``cross_modal``: every modality normal on its own, but taken from *different* groups (only a
  model of the joint distribution finds it);
- ``scaled``: one modality with inflated spread around its group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmgmm_spark.core.modality import Modality

ANOMALY_KINDS = ("normal", "outlier", "cross_modal", "scaled")


@dataclass(frozen=True)
class SyntheticData:
    """Generated rows.

    Attributes:
        features: {modality: (n, d_m)} with NaN rows where the modality is missing.
        is_anomaly: (n,) bool ground truth.
        kind: (n,) str, one of ``ANOMALY_KINDS``.
        group: (n,) latent group of each row (the first group's for cross-modal rows).
        altered: (n,) str, the modality an ``outlier`` or ``scaled`` row altered ("" for the
            other rows); when that modality is missing, nothing observed shows the anomaly.
    """

    features: dict[str, np.ndarray]
    is_anomaly: np.ndarray
    kind: np.ndarray
    group: np.ndarray
    altered: np.ndarray


DEMO_MODALITIES = (Modality("image", 16, "full"), Modality("text", 8, "full"),
                   Modality("sensor", 4, "diag"))


def _group_parameters(rng: np.random.Generator, n_clusters: int, dim: int,
                      separation: float) -> tuple[np.ndarray, np.ndarray]:
    """Means (G, d) and lower Cholesky factors of covariances (G, d, d)."""
    means = rng.normal(scale=separation, size=(n_clusters, dim))
    factors = []
    for _ in range(n_clusters):
        a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
        factors.append(np.linalg.cholesky(a @ a.T + 0.5 * np.eye(dim)))
    return means, np.stack(factors)


def generate(n_rows: int = 200_000, modalities: tuple[Modality, ...] = DEMO_MODALITIES,
             n_clusters: int = 6, anomaly_fraction: float = 0.02, missing_fraction: float = 0.1,
             separation: float = 3.0, seed: int = 0) -> SyntheticData:
    """Draw ``n_rows`` entities; a fraction miss one modality, a fraction are anomalies."""
    rng = np.random.default_rng(seed)
    group = rng.integers(n_clusters, size=n_rows)
    kind = np.full(n_rows, "normal", dtype=object)
    anomalous = rng.random(n_rows) < anomaly_fraction
    kind[anomalous] = rng.choice(ANOMALY_KINDS[1:], size=int(anomalous.sum()))
    other_group = (group + rng.integers(1, n_clusters, size=n_rows)) % n_clusters
    target = rng.integers(len(modalities), size=n_rows)     # modality an anomaly affects
    features = {}
    for index, m in enumerate(modalities):
        means, factors = _group_parameters(rng, n_clusters, m.dim, separation)
        source = np.where((kind == "cross_modal") & (index % 2 == 1), other_group, group)
        noise = rng.standard_normal((n_rows, m.dim))
        x = means[source] + np.einsum("nij,nj->ni", factors[source], noise)
        hit = target == index
        outlier = (kind == "outlier") & hit
        x[outlier] += rng.normal(scale=4 * separation, size=(int(outlier.sum()), m.dim))
        scaled = (kind == "scaled") & hit
        x[scaled] = means[source[scaled]] + 6.0 * (x[scaled] - means[source[scaled]])
        features[m.name] = x
    missing = rng.random(n_rows) < missing_fraction
    dropped = rng.integers(len(modalities), size=n_rows)
    for index, m in enumerate(modalities):
        # cross-modal anomalies keep all modalities, so the inconsistency stays visible
        features[m.name][missing & (dropped == index) & (kind != "cross_modal")] = np.nan
    names = np.array([m.name for m in modalities])
    altered = np.where(np.isin(kind, ["outlier", "scaled"]), names[target], "")
    return SyntheticData(features, kind != "normal", kind.astype(str), group, altered)
