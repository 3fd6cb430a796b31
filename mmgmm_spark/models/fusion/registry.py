"""The fusion strategies by name: the one place a new strategy is registered."""

from __future__ import annotations

from mmgmm_spark.models.fusion.base import FusionStrategy
from mmgmm_spark.models.fusion.early import EARLY_FUSION
from mmgmm_spark.models.fusion.joint import JOINT_FUSION
from mmgmm_spark.models.fusion.late import LATE_FUSION

STRATEGIES: dict[str, FusionStrategy] = {s.name: s for s in (JOINT_FUSION, EARLY_FUSION,
                                                             LATE_FUSION)}
"""{name: strategy}, in the order messages list them."""


def get_strategy(name: str) -> FusionStrategy:
    """The strategy called ``name``; an unknown name is an error naming the known ones."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {name!r}.") from None


def names_with(capability: str, value: bool = True) -> list[str]:
    """Names of the strategies whose ``capability`` (e.g. ``"resume"``) is ``value``."""
    return [name for name, s in STRATEGIES.items() if getattr(s, capability) is value]


def either(names: list[str]) -> str:
    """``joint or early`` (for messages)."""
    return " or ".join(names)
