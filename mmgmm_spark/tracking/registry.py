"""Registry: the champion check that decides whether an alias moves to a new version."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.tracking.pyfunc import load_detector


@dataclass(frozen=True)
class ChampionDecision:
    """Outcome of :func:`promote_if_not_worse`.

    Attributes:
        promoted: the alias now points at the new version.
        reason: why (for tags and logs).
        candidate_score: held-out mean log-likelihood of the new model (None: no hold-out).
        champion_score: the same for the previous champion (None: there was none / no data).
        champion_version: version the alias pointed at before (None: unset).
    """

    promoted: bool
    reason: str
    candidate_score: float | None = None
    champion_score: float | None = None
    champion_version: str | None = None


def current_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """Version ``alias`` points at, or None when the model or alias does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote_if_not_worse(client: MlflowClient, name: str, version: str, alias: str,
                         candidate: AnomalyDetector,
                         holdout: Mapping[str, np.ndarray] | None) -> ChampionDecision:
    """Move ``alias`` to ``version`` if its held-out mean log-likelihood is not worse.

    The first model of a name always gets the alias. Otherwise the current champion is
    loaded from the registry and both are scored on ``holdout`` (dict of (n, d_m) arrays);
    without hold-out data, or when the champion has other modalities, the alias stays.
    The decision is also written as tags on the new model version.
    """
    previous = current_version(client, name, alias)
    if previous is None:
        decision = ChampionDecision(True, "first model under this alias")
    elif holdout is None:
        decision = ChampionDecision(False, "no hold-out data to compare with the champion",
                                    champion_version=previous)
    else:
        new_score = candidate.model.score(holdout)
        champion = load_detector(f"models:/{name}/{previous}")
        difference = _incomparable(champion, candidate)
        if difference:
            decision = ChampionDecision(False, f"champion has {difference}", new_score, None,
                                        previous)
        else:
            old_score = champion.model.score(holdout)
            better = bool(new_score >= old_score)
            decision = ChampionDecision(
                better, "held-out mean log-likelihood not worse than the champion's" if better
                else "held-out mean log-likelihood worse than the champion's",
                new_score, old_score, previous)
    if decision.promoted:
        client.set_registered_model_alias(name, alias, version)
    tags = {"champion_check": "passed" if decision.promoted else "failed",
            "champion_check_reason": decision.reason,
            "previous_champion_version": decision.champion_version or ""}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return decision


def _incomparable(champion: AnomalyDetector, candidate: AnomalyDetector) -> str | None:
    """Why the two detectors' held-out log-likelihoods cannot be compared, or None.

    They must read the same inputs (modality names and widths); covariance types, K,
    preprocessing and strategy may differ. Fusion weights scale a ``joint`` density, so
    differently weighted ``joint`` models are not compared (other strategies ignore them).
    """
    def inputs(detector: AnomalyDetector) -> list[tuple[str, int]]:
        return [(m.name, m.dim) for m in detector.modalities]

    def weights(detector: AnomalyDetector) -> list[float]:
        weighted = detector.fusion.fusion_weights
        return [m.weight if weighted else 1.0 for m in detector.modalities]

    if inputs(champion) != inputs(candidate):
        return f"different modalities ({inputs(champion)}, candidate {inputs(candidate)})"
    if weights(champion) != weights(candidate):
        return (f"different fusion weights ({weights(champion)}, candidate "
                f"{weights(candidate)}): their log-likelihoods are not comparable")
    return None


_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


def resolve_registered(client: MlflowClient, model_uri: str) -> tuple[str, str]:
    """(name, version) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    match = _ALIAS_URI.match(model_uri)
    if match:
        version = client.get_model_version_by_alias(match["name"], match["alias"]).version
        return match["name"], str(version)
    match = _VERSION_URI.match(model_uri)
    if match:
        return match["name"], match["version"]
    raise ValueError(f"{model_uri!r} is not a registered-model URI (models:/<name>@<alias> or "
                     "models:/<name>/<version>).")
