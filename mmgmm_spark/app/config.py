"""Typed, validated job configuration loaded from YAML, with command-line overrides.

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming
the field and the file instead of a silently ignored setting. Relative paths are resolved
against the current working directory (the repository root for ``make demo``).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mmgmm_spark.core.covariance import covariance_type
from mmgmm_spark.core.errors import ConfigError
from mmgmm_spark.core.init import INIT_METHODS
from mmgmm_spark.core.spec import DEFAULT_REG_COVAR
from mmgmm_spark.storage import ENGINE_NAMES


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkConfig(Section):
    master: str | None = "local[2]"
    app_name: str = "mmgmm-spark"
    remote: str | None = None
    conf: dict[str, str] = Field(default_factory=dict)


class StorageConfig(Section):
    engine: EngineName = "auto"


class TrackingSection(Section):
    uri: str | None = None
    experiment: str = "mmgmm-spark"
    registered_model: str = "mmgmm-spark"
    alias: str = "champion"


def _registered_covariance(value: str) -> str:
    covariance_type(value)  # a ValueError names the registered types
    return value


CovarianceName = Annotated[str, AfterValidator(_registered_covariance)]


def _registered_engine(value: str) -> str:
    if value not in ENGINE_NAMES:
        raise ValueError(f"must be one of {ENGINE_NAMES} (the storage engines' registry)")
    return value


EngineName = Annotated[str, AfterValidator(_registered_engine)]
"""A covariance type name of the registry (:mod:`mmgmm_spark.core.covariance`)."""


class ModalityConfig(Section):
    name: str
    table: str
    features_column: str = "features"
    covariance_type: CovarianceName = "full"
    weight: float = Field(1.0, gt=0)
    dim: int | None = Field(None, ge=1)
    version: int | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be a simple identifier (letters, digits, underscore)")
        return value


class DataConfig(Section):
    id_column: str = "id"
    id_type: Literal["string", "long"] | None = None
    """``mmgmm ingest`` casts every file's ids to this type (null: keep them as read)."""
    modalities: list[ModalityConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        return self


def _projection(value: Any) -> Any:
    """A projection setting: an int >= 1, "auto" or None (true is not 1)."""
    if value is None or value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"must be an integer >= 1, 'auto' or null, got {value!r}")


class SweepConfig(Section):
    """Candidates chosen among by BIC: every K x covariance configuration x preprocessing
    (``standardise`` x ``projection`` values). An empty list takes the single setting
    (``model.n_components``, the modalities' covariance types, the ``preprocessing``
    section's)."""

    n_components: list[int] = Field(default_factory=list)
    covariance_types: list[dict[str, CovarianceName]] = Field(
        default_factory=list)
    standardise: list[bool] = Field(default_factory=list)
    projection: list[int | str | None] = Field(default_factory=list)

    @field_validator("projection", mode="before")
    @classmethod
    def _projections(cls, value: Any) -> Any:
        return [_projection(v) for v in value] if isinstance(value, list) else value

    @field_validator("n_components", "covariance_types", "standardise", "projection")
    @classmethod
    def _distinct(cls, value: list) -> list:
        if any(value[i] in value[:i] for i in range(len(value))):
            raise ValueError(f"values must be distinct, got {value}")
        return value

    @field_validator("n_components")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"every K must be >= 1, got {value}")
        return value


class ModelConfig(Section):
    """``fusion``: ``joint`` (one mixture of per-modality blocks), ``early`` (the modalities
    concatenated into one block, fitted on the rows observing all of them) or ``late`` (one
    mixture per modality, standardised scores averaged); see :mod:`mmgmm_spark.models.fusion`."""

    fusion: Literal["joint", "early", "late"] = "joint"
    n_components: int = Field(8, ge=1)
    sweep: SweepConfig | None = None
    max_iter: int = Field(100, ge=1)
    tol: float = Field(1e-3, ge=0)
    reg_covar: float = Field(DEFAULT_REG_COVAR, ge=0)
    reg_covar_mode: Literal["absolute", "relative", "dequantise"] = "absolute"
    allow_small_data: bool = False
    init_params: str = "kmeans"
    n_init: int = Field(1, ge=1)
    seed: int = 0
    init_sample_rows: int = Field(100_000, ge=1)
    tree_depth: int = Field(2, ge=1)
    weight_column: str | None = None
    """Numeric row-weight column of ``weight_table`` (joined on the id); null: unweighted."""
    weight_table: str | None = None
    """Delta table (id, ``weight_column``); null: the first modality's table."""
    warm_start: bool = False
    """Start EM from the model registered under ``tracking.alias`` (when there is one)."""
    compute_dtype: Literal["float64", "float32"] = "float64"

    @field_validator("init_params")
    @classmethod
    def _init_method(cls, value: str) -> str:
        if value not in INIT_METHODS:
            raise ValueError(f"must be one of {INIT_METHODS}")
        return value


class PreprocessingConfig(Section):
    """Per-modality preprocessing fitted on the training rows and stored in the model.

    ``standardise``: centre and scale every feature. ``projection``: PCA to q dimensions per
    modality (an int, capped at the modality's width; "auto": all principal components when
    there are at least ``rows_per_dim`` rows per dimension, else the fewest explaining
    ``variance``); null: none. The discarded directions always stay in the density as
    isotropic noise, so reconstruction error counts in the anomaly score and log-likelihoods
    (hence the champion check) stay comparable across settings.
    """

    standardise: bool = False
    projection: int | str | None = None
    whiten: bool = True
    variance: float = Field(0.95, gt=0, le=1)
    rows_per_dim: int = Field(10, ge=1)

    @field_validator("projection", mode="before")
    @classmethod
    def _projection(cls, value: Any) -> Any:
        return _projection(value)


class ScoringConfig(Section):
    """``mode``: ``full`` scores every entity; ``incremental`` only those whose rows changed
    in any modality table since the last scoring run of the same model version (see
    :mod:`mmgmm_spark.app.incremental`)."""

    contamination: float = Field(0.01, gt=0, lt=0.5)
    model_uri: str | None = None
    output_table: str = "work/tables/scores"
    include_responsibilities: bool = False
    mode: Literal["full", "incremental"] = "full"


class MonitoringConfig(Section):
    """``mmgmm monitor``: where checked runs go and the drift thresholds (a value above one
    flags drift): population stability index and Kolmogorov-Smirnov statistic of the score
    and of each modality's log-likelihood against the training reference, and the change
    of the share of rows missing a modality."""

    table: str = "work/tables/monitoring"
    psi_threshold: float = Field(0.25, gt=0)
    ks_threshold: float = Field(0.1, gt=0, le=1)
    missing_share_threshold: float = Field(0.05, gt=0, le=1)


class AppConfig(Section):
    work_dir: str = "work"
    spark: SparkConfig = Field(default_factory=SparkConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    def tracking_uri(self) -> str:
        """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else a sqlite file in ``work_dir``."""
        if self.tracking.uri:
            return self.tracking.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{Path(self.work_dir).resolve() / 'mlflow.db'}"

    def model_uri(self) -> str:
        """``scoring.model_uri``, else the registered model at the configured alias."""
        return self.scoring.model_uri or (
            f"models:/{self.tracking.registered_model}@{self.tracking.alias}")




def _set_path(document: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node: Any = document
    for key in keys[:-1]:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            raise ConfigError(f"{source}: cannot set '{dotted}': '{key}' is not a section.")
    last = keys[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{source}: cannot set '{dotted}'.")


def apply_overrides(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML: 12, 1e-3, true, [4, 8])."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.n_components=12.")
        _set_path(document, key.strip(), yaml.safe_load(raw), f"--set {item}")
    return document


def _describe(error: ValidationError, source: str, overridden: set[str]) -> str:
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key (not a setting of this section; check the spelling)"
        lines.append(f"{field}: {message}{' (from --set)' if field in overridden else ''}")
    return f"{source}: invalid configuration: " + "; ".join(lines)


WORK_DIR_PLACEHOLDER = "{work_dir}"


def _with_work_dir(value: Any, work_dir: str | None = None) -> Any:
    """``value`` (the whole document first) with "{work_dir}" in strings replaced."""
    if work_dir is None and isinstance(value, dict):
        work_dir = str(value.get("work_dir", AppConfig.model_fields["work_dir"].default))
    if isinstance(value, dict):
        return {key: _with_work_dir(item, work_dir) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_work_dir(item, work_dir) for item in value]
    if isinstance(value, str) and WORK_DIR_PLACEHOLDER in value:
        return value.replace(WORK_DIR_PLACEHOLDER, work_dir)
    return value


def default_config_path() -> str:
    """The embedded default configuration shipped inside the package."""
    return str(resources.files("mmgmm_spark.app") / "defaults" / "local.yaml")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> AppConfig:
    """Read, override and validate a YAML config; errors name the field and the file."""
    source = str(path)
    try:
        with open(path) as f:
            document = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"Config file {source} does not exist (relative paths start at "
                          f"{os.getcwd()}). Pass --config FILE, or leave --config out for the "
                          "embedded default.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections.")
    apply_overrides(document, overrides or [])
    try:
        return AppConfig.model_validate(_with_work_dir(document))
    except ValidationError as e:
        overridden = {item.partition("=")[0].strip() for item in overrides or []}
        raise ConfigError(_describe(e, source, overridden)) from None
