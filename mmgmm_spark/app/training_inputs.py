"""What the nightly fit takes besides the rows: row weights and the model to warm-start from.

``model.weight_column`` names a numeric column of ``model.weight_table`` (default: the first
modality's table), joined on the id. Every fit takes it (``joint``, ``early``, ``late``,
preprocessing, ``model.sweep``): a row of integer weight w counts as w copies of it in the
preprocessing moments, EM, BIC, the threshold, the calibration table and the drift reference;
a zero-weight row is absent. Every training row must have a weight: an id absent from the
weight table is an error naming the table and the number of rows (give such rows weight 0 to
leave them out, 1 to keep them). ``model.warm_start`` starts EM from the mixture registered
under ``tracking.alias``; with no model there yet (the first night) the fit initialises as
usual. It applies to a single ``joint`` fit without preprocessing: a sweep chooses K and the
covariance types, and preprocessing is refitted on each night's data, so a previous model's
parameters would not match.
"""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mmgmm_spark.app.config import AppConfig, ConfigError
from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import MixtureParams, check_initial_params
from mmgmm_spark.models.mixture import MultimodalGaussianMixture
from mmgmm_spark.storage import read_table
from mmgmm_spark.tracking import TrackingConfig, tracking
from mmgmm_spark.tracking.scoring import load_registered

log = logging.getLogger(__name__)


def check_training_inputs(config: AppConfig, plain_joint: bool) -> None:
    """Refuse a warm start where it does not apply and a weight column named like the id or
    a modality, naming the settings.

    ``plain_joint``: the fit is one ``joint`` mixture without preprocessing or sweep.
    """
    if config.model.warm_start and not plain_joint:
        raise ConfigError(
            "model.warm_start applies to a single model.fusion joint fit without "
            "preprocessing or model.sweep; unset it or those settings.")
    names = {m.name for m in config.data.modalities} | {config.data.id_column}
    if config.model.weight_column in names:
        raise ConfigError(f"model.weight_column '{config.model.weight_column}' is also the id "
                          "or a modality name; rename the weight column.")


def with_weights(spark: SparkSession, config: AppConfig, df: DataFrame) -> DataFrame:
    """The joined rows with the weight column; refuses rows whose id has no row in the weight
    table (naming the table, the column and the number of rows)."""
    column, id_column = config.model.weight_column, config.data.id_column
    table = config.model.weight_table or config.data.modalities[0].table
    weights = read_table(spark, table, engine=config.storage.engine).df
    missing = [c for c in (id_column, column) if c not in weights.columns]
    if missing:
        raise ConfigError(f"model.weight_table {table!r} has no column(s) {missing} "
                          f"(columns: {weights.columns}); set model.weight_column / "
                          "model.weight_table to a table of (id, weight).")
    marked = weights.select(id_column, F.col(column), F.lit(True).alias(_HAS_WEIGHT))
    joined = df.join(marked, on=id_column, how="left")
    absent = joined.agg(F.sum(F.col(_HAS_WEIGHT).isNull().cast("long"))).first()[0] or 0
    if absent:
        raise DataValidationError(
            f"model.weight_table {table!r}: {absent} training row(s) have no row there (no "
            f"weight in column '{column}'). Add their ids to the table (weight 0 leaves a row "
            "out, 1 keeps it), or unset model.weight_column.")
    return joined.drop(_HAS_WEIGHT)


_HAS_WEIGHT = "__mmgmm_has_weight"


def warm_start_params(config: AppConfig, tracking_config: TrackingConfig,
                      modalities: list[Modality]) -> MixtureParams | None:
    """The parameters of the mixture under the alias (checked against the config's
    modalities and K), or None when nothing is registered there yet."""
    uri = f"models:/{config.tracking.registered_model}@{config.tracking.alias}"
    try:
        with tracking(tracking_config):
            model = load_registered(tracking_config, uri).detector.model
    except MlflowException as error:
        log.info("model.warm_start: no model at %s (%s); initialising as usual", uri,
                 error.message)
        return None
    if not isinstance(model, MultimodalGaussianMixture):
        raise ConfigError(f"model.warm_start: {uri} is a {type(model).__name__}, not a joint "
                          "mixture without preprocessing; unset model.warm_start.")
    try:
        check_initial_params(model.params, tuple(modalities), config.model.n_components,
                             source=f"model.warm_start: the model at {uri}")
    except ValueError as error:
        raise ConfigError(f"{error} (or unset model.warm_start)") from None
    log.info("model.warm_start: EM starts from %s", uri)
    return model.params
