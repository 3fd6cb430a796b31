"""The jobs as library functions: train, score and evaluate from an :class:`AppConfig`.

The CLI, ``jobs/*.py`` and the notebooks are thin callers of these functions; each receives
the ``spark`` session built once by :func:`mmgmm_spark.spark.session.build_spark`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from itertools import product

import numpy as np
from mlflow.exceptions import MlflowException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mmgmm_spark.app.config import AppConfig, ConfigError
from mmgmm_spark.app.labels import read_labels
from mmgmm_spark.app.training_inputs import check_training_inputs, warm_start_params, with_weights
from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.evaluation import evaluate_by_kind, evaluate_scores, log_evaluation
from mmgmm_spark.models.fusion import (
    FUSION_PARAM,
    JOINT,
    PREPROCESSING_PREFIX,
    FusionConfig,
    Preprocessing,
    either,
    get_strategy,
    names_with,
    preprocessing_params,
)
from mmgmm_spark.models.mixture import MultimodalGaussianMixture
from mmgmm_spark.models.scores import (
    MODEL_NAME,
    MODEL_VERSION,
    SCORED_AT,
    SCORING_RUN_ID,
)
from mmgmm_spark.spark.arrow import batch_from_arrow
from mmgmm_spark.spark.data import CachedBlocks, join_modalities
from mmgmm_spark.spark.preprocess import fit_preprocessing_options
from mmgmm_spark.spark.score import ScoringResult
from mmgmm_spark.spark.session import build_spark
from mmgmm_spark.storage import StorageError, read_modality, read_table
from mmgmm_spark.storage.tables import SCHEMA_MISMATCH, SCHEMA_MISMATCH_HINT
from mmgmm_spark.tracking import (
    FitRun,
    TrackingConfig,
    load_detector,
    score_registered,
    select_model,
    tracked_fit,
)
from mmgmm_spark.tracking import tracking as tracking_context
from mmgmm_spark.tracking.fit import CHECKPOINT_DIR
from mmgmm_spark.tracking.late import tracked_late_fit
from mmgmm_spark.tracking.reliability import RetryPolicy
from mmgmm_spark.tracking.scoring import RegisteredDetector, load_registered
from mmgmm_spark.tracking.sweep import check_covariance_names

log = logging.getLogger(__name__)

HOLDOUT_BUCKETS = 20
"""Rows whose id hashes to bucket 0 of 20 (5%) are held out of training for the champion check."""
MAX_HOLDOUT_ROWS = 20_000
MAX_EVALUATION_ROWS = 5_000_000


def spark_session(config: AppConfig) -> SparkSession:
    """The session the ``spark`` section describes (classic or Spark Connect), with Delta
    Lake's connector when ``storage.engine`` is ``delta-spark``."""
    spark = config.spark
    return build_spark(spark.master, spark.app_name, spark.conf, spark.remote,
                       delta=config.storage.engine == "delta-spark")


def tracking_config(config: AppConfig) -> TrackingConfig:
    t = config.tracking
    return TrackingConfig(work_dir=config.work_dir, tracking_uri=config.tracking_uri(),
                          experiment=t.experiment, registered_model_name=t.registered_model,
                          alias=t.alias)


@dataclass(frozen=True)
class Features:
    """The joined modality rows of one read, and what was read."""

    df: DataFrame
    modalities: list[Modality]
    versions: dict[str, int]


def _infer_dim(df: DataFrame, column: str, name: str, table: str) -> int:
    """The width of the first non-null vector of ``column`` in modality ``name``'s table
    (reads until it finds one, usually a few rows of the first file)."""
    row = df.where(F.col(column).isNotNull()).select(F.size(column).alias("d")).first()
    if row is None:
        raise DataValidationError(f"Table {table!r} (modality '{name}') has no rows.")
    return int(row["d"])


@dataclass(frozen=True)
class ModalityReads:
    """Every modality table read at one version: {modality: (id, features) DataFrame},
    {modality: Delta version read}, and the modalities (widths inferred where the config
    gives none)."""

    frames: dict[str, DataFrame]
    versions: dict[str, int]
    modalities: list[Modality]


def read_modalities(spark: SparkSession, config: AppConfig,
                    versions: dict[str, int] | None = None, check: bool = True) -> ModalityReads:
    """Read every modality table (at ``versions``, else the config's pins, else the latest);
    ``check``: validate the ids of every row (one aggregation per table), as full reads do."""
    frames, read_versions, modalities = {}, {}, []
    for m in config.data.modalities:
        version = (versions or {}).get(m.name, m.version)
        read = read_modality(spark, m.table, id_col=config.data.id_column,
                             features_col=m.features_column, version=version,
                             engine=config.storage.engine, check=check)
        frames[m.name], read_versions[m.name] = read.df, read.version
        dim = m.dim or _infer_dim(read.df, m.features_column, m.name, m.table)
        modalities.append(Modality(m.name, dim, m.covariance_type, m.weight))
    return ModalityReads(frames, read_versions, modalities)


def joined_rows(config: AppConfig, frames: dict[str, DataFrame]) -> DataFrame:
    """DataFrame(id, <modality>...): the modality rows full-outer-joined on the id."""
    return join_modalities(frames, config.data.id_column,
                           {m.name: m.features_column for m in config.data.modalities})


def read_features(spark: SparkSession, config: AppConfig) -> Features:
    """Read every modality table (pinned versions from config) and outer-join them on id."""
    reads = read_modalities(spark, config)
    return Features(joined_rows(config, reads.frames), reads.modalities, reads.versions)


def _holdout_bucket(config: AppConfig) -> F.Column:
    return F.pmod(F.xxhash64(F.col(config.data.id_column)), F.lit(HOLDOUT_BUCKETS)) == 0


def holdout_arrays(features: Features, config: AppConfig) -> dict[str, np.ndarray]:
    """At most MAX_HOLDOUT_ROWS held-out rows as {modality: (n, d)} arrays (NaN = missing)."""
    rows = features.df.where(_holdout_bucket(config)).limit(MAX_HOLDOUT_ROWS)
    source = "hold-out rows of " + ", ".join(f"{m.name}={m.table}"
                                             for m in config.data.modalities)
    batch = batch_from_arrow(rows.select(*[m.name for m in features.modalities]).toArrow(),
                             tuple(features.modalities), source)
    return {m.name: batch.blocks[m.name].dense() for m in features.modalities}


def _model_options(config: AppConfig) -> dict:
    m = config.model
    return {"tol": m.tol, "reg_covar": m.reg_covar, "reg_covar_mode": m.reg_covar_mode,
            "max_iter": m.max_iter,
            "n_init": m.n_init, "init_params": m.init_params, "random_state": m.seed,
            "allow_small_data": m.allow_small_data, "compute_dtype": m.compute_dtype}


def fusion_config(config: AppConfig) -> FusionConfig:
    """The saved description of a preprocessed or ``early``/``late`` model built from
    ``config``."""
    p, m = config.preprocessing, config.model
    return FusionConfig(
        strategy=m.fusion, n_components=(m.n_components,),
        covariance_types=tuple(sorted({x.covariance_type for x in config.data.modalities})),
        projection=p.projection, standardise=p.standardise, whiten=p.whiten,
        variance=p.variance, rows_per_dim=p.rows_per_dim, min_weight=0.0,
        reg_covar=m.reg_covar, reg_covar_mode=m.reg_covar_mode, max_iter=m.max_iter, tol=m.tol,
        n_init=m.n_init, init_params=m.init_params, random_state=m.seed)


def preprocessing_grid(config: AppConfig) -> list[tuple[bool, int | str | None]]:
    """(standardise, projection) settings to fit: the ``preprocessing`` section's, or every
    combination of ``model.sweep.standardise`` x ``model.sweep.projection`` values."""
    p, sweep = config.preprocessing, config.model.sweep
    standardise = sweep.standardise if sweep is not None and sweep.standardise else [p.standardise]
    projection = sweep.projection if sweep is not None and sweep.projection else [p.projection]
    return list(product(standardise, projection))


def uses_preprocessing(config: AppConfig) -> bool:
    """Whether the fit puts a :class:`Preprocessing` (and a fusion model) in front of the
    mixture: with standardisation or a projection to fit, or a fusion other than ``joint``."""
    return not get_strategy(config.model.fusion).plain_mixture or any(
        standardise or projection is not None
        for standardise, projection in preprocessing_grid(config))


"""Under ``work_dir``: a checkpoint per EM iteration of a running fit (removed when it ends)."""


def pinned_to_run(config: AppConfig, run_id: str) -> AppConfig:
    """``config`` with every modality table pinned to the Delta version run ``run_id`` read."""
    run = tracking_config(config).client().get_run(run_id)
    tables = json.loads(run.data.tags.get("mmgmm.delta_tables", "{}"))
    document = config.model_dump()
    for modality in document["data"]["modalities"]:
        logged = tables.get(modality["name"])
        if logged is None:
            raise ConfigError(f"Run {run_id} did not read modality '{modality['name']}'; it "
                              "cannot be resumed with this config.")
        if modality["version"] not in (None, logged["version"]):
            raise ConfigError(
                f"data.modalities '{modality['name']}' pins version {modality['version']} but "
                f"run {run_id} read version {logged['version']}; a resumed fit must read the "
                "same data.")
        modality["version"] = logged["version"]
    pinned = AppConfig.model_validate(document)
    used = {k: v for k, v in run.data.params.items()
            if k.startswith(PREPROCESSING_PREFIX) or k == FUSION_PARAM}
    if used and FUSION_PARAM not in used:     # logged before fusion strategies were params
        used[FUSION_PARAM] = JOINT
    wanted = ({FUSION_PARAM: pinned.model.fusion,
               **{k: str(v) for k, v in preprocessing_params(fusion_config(pinned)).items()}}
              if uses_preprocessing(pinned) else {})
    if used != wanted:
        raise ConfigError(f"Run {run_id} was trained with preprocessing {used or 'none'}, the "
                          f"config asks for {wanted or 'none'}; resume with the run's settings.")
    return pinned


def train(spark: SparkSession, config: AppConfig, resume_run_id: str | None = None,
          retry: RetryPolicy | None = None) -> FitRun:
    """Fit (or sweep and select by BIC), track in MLflow, register, move the alias if not worse.

    A single fit writes a checkpoint after every EM iteration (``<work_dir>/checkpoints`` and
    the run's ``checkpoint/`` artefacts). With ``resume_run_id`` it continues that MLflow run
    (same step numbering) from its last completed iteration, reading the modality tables at
    the Delta versions the run logged, and ends equal to an uninterrupted fit. Logging is
    retried per ``retry``; if it still fails the detector is saved under ``<work_dir>/unlogged``
    and :class:`mmgmm_spark.tracking.reliability.ModelNotLoggedError` says where. A sweep
    (``model.sweep``) runs without checkpoints and cannot be resumed. ``model.fusion`` early
    fits one mixture of the concatenated modalities; late one mixture per modality, each a
    nested run of one parent run (see :func:`mmgmm_spark.tracking.late.tracked_late_fit`).
    """
    _check_train_options(config, resume_run_id)
    if resume_run_id is not None:
        config = pinned_to_run(config, resume_run_id)
    features = read_features(spark, config)
    # sorted by id: the cached blocks, the initial sample and so the fit are the same on every
    # kind of session (classic, Spark Connect, cluster), whatever order the tables were read in
    training = features.df.where(~_holdout_bucket(config)).orderBy(config.data.id_column)
    spark_options = {"init_sample_rows": config.model.init_sample_rows,
                     "tree_depth": config.model.tree_depth,
                     "source": "training rows (hold-out excluded) of " + ", ".join(
                         f"{m.name}={m.table}" for m in config.data.modalities)}
    if config.model.weight_column is not None:
        training = with_weights(spark, config, training)
        spark_options["weight_column"] = config.model.weight_column
    if config.model.warm_start:
        spark_options["initial_model"] = warm_start_params(config, tracking_config(config),
                                                           features.modalities)
    common = {"contamination": config.scoring.contamination, "config": tracking_config(config),
              "table_versions": features.versions, "holdout": holdout_arrays(features, config),
              **spark_options}
    if not uses_preprocessing(config):
        return _fit(training, features.modalities, config, [], resume_run_id, retry, common)
    # preprocessing is fitted on the cached input rows; the fits cache the transformed rows
    data = CachedBlocks(training, tuple(features.modalities), spark_options["source"])
    try:
        options = _preprocessing_options(data, config, spark_options["source"])
        return _fit(data, features.modalities, config, options, resume_run_id, retry, common)
    finally:
        data.unpersist()


def _check_train_options(config: AppConfig, resume_run_id: str | None) -> None:
    """Refuse the combinations :func:`train` cannot run, naming the settings, before any
    data is read."""
    sweep, fusion = config.model.sweep, get_strategy(config.model.fusion)
    if resume_run_id is not None and (sweep is not None or not fusion.resume):
        raise ConfigError(f"--resume works for a single {either(names_with('resume'))} fit, not "
                          f"with model.sweep or model.fusion {either(names_with('resume', False))}"
                          ": run the fit again without --resume.")
    if sweep is not None and not fusion.sweep:
        raise ConfigError("model.sweep selects one mixture by BIC: use it with model.fusion "
                          f"{either(names_with('sweep'))} ({fusion.name} {fusion.summary}).")
    if config.scoring.include_responsibilities and not fusion.responsibilities:
        raise ConfigError(_NO_RESPONSIBILITIES.format(what=f"model.fusion {fusion.name}"))
    if sweep is not None:
        names = fusion.block_names([m.name for m in config.data.modalities])
        check_covariance_names(sweep.covariance_types, names)
    check_training_inputs(config, sweep is None and not uses_preprocessing(config))


_NO_RESPONSIBILITIES = ("scoring.include_responsibilities: {what} has one mixture per "
                        "modality, so no single set of components to report; set it false.")


def _fit(data: DataFrame | CachedBlocks, modalities: list[Modality], config: AppConfig,
         options: list[Preprocessing], resume_run_id: str | None, retry: RetryPolicy | None,
         common: dict) -> FitRun:
    """The tracked fit, late fit or sweep the config asks for, on the training rows."""
    model_options, k = _model_options(config), config.model.n_components
    preprocessing = options[0] if options else None
    if get_strategy(config.model.fusion).per_modality:
        models = {m.name: MultimodalGaussianMixture(
            preprocessing.for_modality(m.name).mixture_modalities(), k, **model_options)
            for m in modalities}
        return tracked_late_fit(models, data, preprocessing, retry=retry,
                                run_name=f"late K={k}", **common)
    sweep = config.model.sweep
    if sweep is not None:
        return select_model(data, modalities, sweep.n_components or [k],
                            covariance_types=sweep.covariance_types or None,
                            model_options=model_options, preprocessing=options or None,
                            **common).best_fit
    mixture_modalities = (modalities if preprocessing is None
                          else preprocessing.mixture_modalities())
    return tracked_fit(MultimodalGaussianMixture(mixture_modalities, k, **model_options), data,
                       run_name=f"{config.model.fusion} K={k}", resume_run_id=resume_run_id,
                       retry=retry,
                       checkpoint_dir=os.path.join(config.work_dir, CHECKPOINT_DIR),
                       preprocessing=preprocessing, **common)


def _preprocessing_options(data: CachedBlocks, config: AppConfig,
                           source: str) -> list[Preprocessing]:
    """The preprocessing of every :func:`preprocessing_grid` setting, fitted on ``data`` in
    one pass (the identity when nothing is to be fitted)."""
    base = fusion_config(config)
    grid = preprocessing_grid(config)
    if grid == [(False, None)]:
        return [Preprocessing.identity(list(data.modalities), base)]
    options = fit_preprocessing_options(
        data, [dataclasses.replace(base, standardise=s, projection=q) for s, q in grid], source,
        config.model.tree_depth)
    distinct = {}
    for preprocessing in options:
        widths = ", ".join(f"'{m.name}' {m.dim} -> {preprocessing.preprocessors[m.name].output_dim}"
                           for m in preprocessing.modalities)
        log.info("Preprocessing %s: %s", preprocessing.label(), widths)
        same = tuple((p.components is None, p.output_dim)
                     for p in preprocessing.preprocessors.values())
        distinct.setdefault((preprocessing.config.standardise, same), preprocessing)
    if len(distinct) < len(options):
        log.info("Preprocessing options with equal results are fitted once: %s",
                 ", ".join(p.label() for p in distinct.values()))
    return list(distinct.values())


def _describe_modalities(dims: dict[str, int]) -> str:
    return ", ".join(f"'{name}' (dim {dim})" for name, dim in dims.items())


def load_matching_model(config: AppConfig, features: Features) -> RegisteredDetector:
    """Load the configured model; fail before scoring when its modalities (names, dims)
    differ from the data's."""
    uri = config.model_uri()
    tracking = tracking_config(config)
    with tracking_context(tracking):
        try:
            registered = load_registered(tracking, uri)
        except ValueError as error:  # not a models:/ URI
            raise ConfigError(f"scoring.model_uri: {error}") from None
        except MlflowException as error:  # no such model, version or alias
            raise ConfigError(
                f"Model {uri} cannot be loaded from the registry at {tracking.resolved_uri()}: "
                f"{error.message.rstrip('.')}. Train and register a model first (mmgmm train), "
                "or point scoring.model_uri / tracking.registered_model / tracking.alias at an "
                "existing one.") from None
    expected = {m.name: m.dim for m in registered.detector.modalities}
    found = {m.name: m.dim for m in features.modalities}
    if expected != found:
        raise DataValidationError(
            f"Model {uri} ({registered.name} version {registered.version}) was trained on "
            f"modalities {_describe_modalities(expected)}, but the config's feature tables give "
            f"{_describe_modalities(found)}. Score with a config whose data.modalities match "
            "the model (names and feature widths), or train a model on these tables.")
    return registered


def score(spark: SparkSession, config: AppConfig, scoring_run_id: str | None = None
          ) -> ScoringResult:
    """Score every entity with the configured model URI and write the Delta output table."""
    features = read_features(spark, config)
    registered = load_matching_model(config, features)
    return score_checked(spark, config, features, registered, scoring_run_id, features.df)


def score_checked(spark: SparkSession, config: AppConfig, features: Features,
                  registered: RegisteredDetector, scoring_run_id: str | None,
                  rows: DataFrame | None, **run_options) -> ScoringResult | None:
    """Score ``rows`` (some rows of ``features.df``; None: none, the run is only recorded)
    with ``registered`` as one scoring run; errors name the tables. ``run_options``:
    ``extra_params`` / ``extra_metrics`` of :func:`score_registered`."""
    fusion = registered.detector.fusion
    if config.scoring.include_responsibilities and not fusion.responsibilities:
        raise ConfigError(_NO_RESPONSIBILITIES.format(
            what=f"model {config.model_uri()} uses {fusion.name} fusion: it"))
    try:
        return score_registered(
            spark, rows, config.scoring.output_table, config.model_uri(),
            config=tracking_config(config), scoring_run_id=scoring_run_id,
            table_versions=features.versions, registered=registered,
            id_column=config.data.id_column,
            responsibilities=config.scoring.include_responsibilities,
            engine=config.storage.engine, **run_options)
    except DataValidationError as error:  # raised in the scoring tasks: name the tables
        tables = ", ".join(f"{m.name}={m.table}" for m in config.data.modalities)
        raise DataValidationError(f"Scoring {tables}: {error}") from None
    except StorageError as error:
        if not str(error).startswith(SCHEMA_MISMATCH):
            raise
        raise StorageError(
            f"{str(error).removesuffix(SCHEMA_MISMATCH_HINT)} The output table was written "
            "with other columns (e.g. scores of other modalities, or another "
            "scoring.include_responsibilities): set another scoring.output_table, or remove "
            "the old table.") from None


def scores_with_labels(spark: SparkSession, config: AppConfig, labels_table: str,
                       label_column: str = "is_anomaly", scoring_run_id: str | None = None,
                       kind_column: str | None = None) -> DataFrame:
    """The output table's rows (of one scoring run: default the latest) joined to the labels
    (a Delta table, Parquet or CSV file; see :func:`read_labels`)."""
    scores = read_table(spark, config.scoring.output_table, engine=config.storage.engine).df
    if scoring_run_id is None:
        latest = scores.orderBy(F.col(SCORED_AT).desc()).select(SCORING_RUN_ID).first()
        if latest is None:
            raise DataValidationError(
                f"Output table {config.scoring.output_table!r} is empty: run `mmgmm score`.")
        scoring_run_id = latest[0]
    id_column = config.data.id_column
    labels = read_labels(spark, config, labels_table, scores.schema[id_column].dataType,
                         label_column, kind_column)
    return scores.where(F.col(SCORING_RUN_ID) == scoring_run_id).join(labels, id_column)


def _no_labelled_rows(spark: SparkSession, config: AppConfig, labels_table: str,
                     scoring_run_id: str | None) -> str:
    output = config.scoring.output_table
    if scoring_run_id is not None:
        scores = read_table(spark, output, engine=config.storage.engine).df
        if scores.where(F.col(SCORING_RUN_ID) == scoring_run_id).isEmpty():
            return (f"Output table {output!r} has no rows of scoring run {scoring_run_id!r}; "
                    "check --scoring-run-id (omit it to evaluate the latest run).")
    return (f"No id of labels table {labels_table!r} matches the scored ids of {output!r} on "
            f"column {config.data.id_column!r}: check data.id_column and the labels' ids.")


def evaluate(spark: SparkSession, config: AppConfig, labels_table: str,
             label_column: str = "is_anomaly", scoring_run_id: str | None = None,
             kind_column: str | None = None) -> dict[str, float]:
    """AUROC, average precision, precision/recall at the threshold (and, with
    ``kind_column``, AUROC and average precision per anomaly kind: ``auroc/<kind>``...) of the
    model's ranking column (``calibrated_score``; ``anomaly_score`` for a model without a
    calibration table); logged to the scoring run."""
    joined = scores_with_labels(spark, config, labels_table, label_column, scoring_run_id,
                                kind_column)
    n_rows = joined.count()
    if n_rows == 0:
        raise DataValidationError(_no_labelled_rows(spark, config, labels_table,
                                                    scoring_run_id))
    if n_rows > MAX_EVALUATION_ROWS:
        raise DataValidationError(
            f"{n_rows} labelled rows: evaluation collects (score, label) pairs and is limited "
            f"to {MAX_EVALUATION_ROWS}; evaluate on a sample of the labels table.")
    first = joined.select(SCORING_RUN_ID, MODEL_NAME, MODEL_VERSION).first()
    tracking = tracking_config(config)
    with tracking_context(tracking):
        detector = load_detector(f"models:/{first[MODEL_NAME]}/{first[MODEL_VERSION]}")
    score_column, threshold = detector.ranking()
    table = joined.select(score_column, "label", *(["kind"] if kind_column else [])).toArrow()
    labels = table.column("label").to_numpy(zero_copy_only=False)
    scores = table.column(score_column).to_numpy()
    metrics = evaluate_scores(labels, scores, threshold)
    if kind_column:
        metrics |= evaluate_by_kind(labels, scores, table.column("kind").to_numpy(
            zero_copy_only=False))
    log_evaluation(metrics, run_id=first[SCORING_RUN_ID], client=tracking.client())
    return metrics
