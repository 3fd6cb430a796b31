"""Modalities: named blocks of features, each with its own covariance type and fusion weight."""

from __future__ import annotations

from dataclasses import dataclass

from mmgmm_spark.core.covariance import COVARIANCE_TYPES as REGISTRY

COVARIANCE_TYPES = tuple(REGISTRY)
"""The names of the registered covariance types (:mod:`mmgmm_spark.core.covariance`)."""


@dataclass(frozen=True)
class Modality:
    """One feature set of an entity (e.g. an image embedding).

    Attributes:
        name: column / dict key that holds the block, e.g. ``"image"``.
        dim: number of features d_m of the block.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        weight: fusion weight w_m; the block's log-density is multiplied by it.
    """

    name: str
    dim: int
    covariance_type: str = "full"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Modality name must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(
                f"Modality {self.name!r}: dim must be a positive integer, got {self.dim!r}.")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"Modality {self.name!r}: covariance_type must be one of {COVARIANCE_TYPES}, "
                f"got {self.covariance_type!r}."
            )
        if not self.weight > 0:
            raise ValueError(f"Modality {self.name!r}: weight must be > 0, got {self.weight!r}.")

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim,
                "covariance_type": self.covariance_type, "weight": self.weight}

    @classmethod
    def from_dict(cls, d: dict) -> Modality:
        return cls(name=str(d["name"]), dim=int(d["dim"]),
                   covariance_type=str(d["covariance_type"]), weight=float(d["weight"]))


def check_modalities(modalities: list[Modality]) -> tuple[Modality, ...]:
    """The modalities as a tuple, after checking there is one at least and names are unique."""
    modalities = tuple(modalities)
    if not modalities:
        raise ValueError("At least one Modality is required.")
    if not all(isinstance(m, Modality) for m in modalities):
        raise TypeError("modalities must be Modality objects, e.g. Modality('image', dim=16).")
    names = [m.name for m in modalities]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"Modality names must be unique; repeated: {duplicated}.")
    return modalities
