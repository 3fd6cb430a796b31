"""The ``mmgmm features`` job: the configured model's mixture features of every entity.

Kept beside :mod:`mmgmm_spark.app.pipeline` (whose readers and model loading it uses) as the
job of its own command. Per entity: ``responsibilities`` (K posteriors, missing modalities
marginalised) and ``fisher_vector`` (the improved Fisher vector, see
:mod:`mmgmm_spark.core.fisher`), written as one Delta transaction. With a bag column, every
modality row is a descriptor of the entity named in that column, and each entity gets one
Fisher vector of all its descriptors. :func:`write_fusion_demo` generates the data of the
features notebook (``notebooks/05_mixture_features.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mmgmm_spark.app.config import AppConfig, ConfigError
from mmgmm_spark.app.pipeline import Features, load_matching_model, read_features
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.features import MixtureFeatures
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.features import bag_features, entity_features, features_to_delta
from mmgmm_spark.storage import read_table, write_table


@dataclass(frozen=True)
class FeaturesResult:
    """One committed features table."""

    table: str
    version: int
    model_name: str
    model_version: str
    n_components: int
    layout: list[tuple[str, int]]

    @property
    def width(self) -> int:
        """D: the Fisher vector's length."""
        return sum(size for _, size in self.layout)


def write_features(spark: SparkSession, config: AppConfig, output_table: str,
                   bag_column: str | None = None) -> FeaturesResult:
    """Compute every entity's (or, with ``bag_column``, every bag's) features with the
    configured model and replace Delta ``output_table`` with them in one transaction."""
    features = read_features(spark, config)
    registered = load_matching_model(config, features)
    try:
        view = MixtureFeatures.of(registered.detector.model)
    except ValueError as error:
        raise ConfigError(f"Model {config.model_uri()}: {error}") from None
    source = ", ".join(f"{m.name}={m.table}" for m in config.data.modalities)
    if bag_column is None:
        frame = entity_features(features.df, view, id_column=config.data.id_column,
                                source=source)
    else:
        rows = with_bag_column(spark, config, features, bag_column)
        frame = bag_features(rows, view, bag_column=bag_column, source=source)
    written = features_to_delta(spark, frame, output_table, model_name=registered.name,
                                model_version=registered.version,
                                engine=config.storage.engine)
    return FeaturesResult(written.table, written.version, registered.name, registered.version,
                          view.n_components, view.layout())


def with_bag_column(spark: SparkSession, config: AppConfig, features: Features,
                    bag_column: str) -> DataFrame:
    """The joined rows with ``bag_column`` taken from the modality tables (at the versions
    read); every table must have it and a row id must name one bag in all of them."""
    id_column = config.data.id_column
    keys = []
    for m in config.data.modalities:
        df = read_table(spark, m.table, version=features.versions[m.name],
                        engine=config.storage.engine).df
        if bag_column not in df.columns:
            raise DataValidationError(
                f"Table {m.table!r} (modality '{m.name}') has no bag column '{bag_column}' "
                f"(columns: {df.columns}); every modality table needs it.")
        keys.append(df.select(id_column, bag_column))
    mapping = keys[0]
    for other in keys[1:]:
        mapping = mapping.unionByName(other)
    mapping = mapping.dropDuplicates([id_column, bag_column])
    conflicting = mapping.groupBy(id_column).count().where(F.col("count") > 1).count()
    if conflicting:
        raise DataValidationError(
            f"{conflicting} row id(s) of column '{id_column}' have different '{bag_column}' "
            "values in different modality tables; a row belongs to one bag.")
    return features.df.join(mapping, id_column, "left")


# ------------------------------------------------------------ generated data for the notebook
FUSION_DEMO_MODALITIES = (Modality("image", 16, "full"), Modality("text", 8, "full"))
"""Image and text features of the same objects (:func:`write_fusion_demo`)."""


@dataclass(frozen=True)
class FusionDemo:
    """Generated objects written as an image and a text table, with their true class.

    Attributes:
        config: the run's config with ``data.modalities`` at the generated tables (and its own
            registered model, output table and K).
        features_table: where :func:`write_features` should write.
        ids: (n,) object ids.
        group: (n,) the latent class of each object (never given to the mixture).
        raw: {modality: (n, d_m)} the generated features, NaN rows where missing.
    """

    config: AppConfig
    features_table: str
    ids: np.ndarray
    group: np.ndarray
    raw: dict[str, np.ndarray]


def write_fusion_demo(spark: SparkSession, config: AppConfig, n_rows: int = 20_000,
                      seed: int = 0, separation: float = 1.0,
                      missing_fraction: float = 0.3) -> FusionDemo:
    """Generate ``n_rows`` objects of 6 overlapping classes (no anomalies; a
    ``missing_fraction`` of them lacks one modality) and write them under
    ``<work_dir>/tables/fusion_demo``."""
    data = generate(n_rows, FUSION_DEMO_MODALITIES, n_clusters=6, anomaly_fraction=0.0,
                    missing_fraction=missing_fraction, separation=separation, seed=seed)
    root = f"{config.work_dir}/tables/fusion_demo"
    ids = np.array([f"object-{i:07d}" for i in range(n_rows)], dtype=object)
    id_column = config.data.id_column
    for m in FUSION_DEMO_MODALITIES:
        x = data.features[m.name]
        observed = ~np.isnan(x).all(axis=1)
        table = arrow_table({"features": x[observed]}, ids=ids[observed], id_column=id_column)
        write_table(spark, spark.createDataFrame(table), f"{root}/{m.name}", mode="overwrite",
                    engine=config.storage.engine)
    document = config.model_dump()
    document["data"]["modalities"] = [
        {"name": m.name, "table": f"{root}/{m.name}", "covariance_type": m.covariance_type}
        for m in FUSION_DEMO_MODALITIES]
    document["tracking"]["registered_model"] = f"{config.tracking.registered_model}-fusion"
    document["model"].update(n_components=6, sweep=None, fusion="joint")
    document["scoring"].update(output_table=f"{root}/scores", include_responsibilities=False)
    return FusionDemo(AppConfig.model_validate(document), f"{root}/features", ids, data.group,
                      data.features)
