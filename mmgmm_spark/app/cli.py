"""The ``mmgmm`` command line: demo, ingest, train, score, evaluate, monitor, features,
benchmark.

Every subcommand takes ``--config FILE`` and any number of ``--set section.key=value``
overrides, exits 0 on success, and on bad input exits 2 with one paragraph naming what is
wrong (no Java stack trace as the only message); ``mmgmm monitor`` exits 3 when it finds
drift.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mmgmm_spark import __version__
from mmgmm_spark.app.config import AppConfig, ConfigError, default_config_path, load_config

log = logging.getLogger("mmgmm_spark")


def _spark(config: AppConfig):
    from mmgmm_spark.app.pipeline import spark_session

    spark = spark_session(config)
    if config.spark.remote is None:
        spark.sparkContext.setLogLevel("ERROR")
        _quiet_task_failures(spark)
    return spark


def _quiet_task_failures(spark) -> None:
    """A failed task (e.g. a row of bad data) ends the command with its own one-line error or
    traceback; the executor's and scheduler's log of the same failure would only repeat it as
    dozens of Java and Python stack lines before that."""
    jvm = spark.sparkContext._jvm
    fatal = jvm.org.apache.logging.log4j.Level.FATAL
    for logger in ("org.apache.spark.executor.Executor",
                   "org.apache.spark.scheduler.TaskSetManager"):
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(logger, fatal)


def _step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cmd_demo(args: argparse.Namespace, config: AppConfig) -> int:
    """Generate data, write Delta tables, train + track, score, evaluate, report."""
    import pandas as pd

    from mmgmm_spark.app import pipeline
    from mmgmm_spark.app.demo import demo_report, isolation_forest_scores, write_demo_tables

    labels_table = str(Path(config.work_dir) / "tables" / "labels")
    spark = _spark(config)
    _step(f"Generating {args.rows:,} entities (3 modalities, some missing, injected anomalies) "
          "and writing the Delta tables")
    tables = write_demo_tables(spark, config, labels_table, n_rows=args.rows, seed=args.seed)
    for name, write in tables.modalities.items():
        _step(f"  {name}: {write.table} (version {write.version})")
    _step(f"Training K={config.model.n_components} ({config.model.fusion} fusion) on Spark, "
          "tracked in MLflow")
    fit = pipeline.train(spark, config)
    _step(f"  run {fit.run_id}: model version {fit.model_version}, "
          f"{fit.decision.reason if fit.decision else 'not registered'}")
    _step(f"Scoring every entity with {config.model_uri()}")
    scored = pipeline.score(spark, config)
    _step(f"  wrote {scored.table} (version {scored.version})")
    _step("Evaluating against the injected anomalies")
    metrics = pipeline.evaluate(spark, config, labels_table)
    altered = pd.Series(tables.data.altered, index=tables.ids)
    _step("Fitting the reference: scikit-learn's IsolationForest on the concatenated features")
    reference = pd.Series(isolation_forest_scores(tables.data.features, args.seed),
                          index=tables.ids)
    report = demo_report(spark, config, labels_table, metrics, altered=altered,
                         reference=reference)
    print_demo_report(report, config, scored.table)
    return 0


def print_demo_report(report, config: AppConfig, scores_table: str) -> None:
    m = report.metrics
    print("\n=== mmgmm-spark demo report ===")
    print(f"AUROC {m['auroc']:.4f}   average precision {m['average_precision']:.4f}   "
          f"precision@threshold {m['precision_at_threshold']:.3f}   "
          f"recall@threshold {m['recall_at_threshold']:.3f}")
    if "all" in report.isolation_forest_auroc_by_kind:
        print("IsolationForest on the concatenated features: AUROC "
              f"{report.isolation_forest_auroc_by_kind['all']:.4f}")
    print(f"\nAUROC by anomaly kind     {config.model.fusion + ' multimodal model':>22s}   "
          "per-modality detector   IsolationForest (concatenated)")
    forest = report.isolation_forest_auroc_by_kind
    for kind, value in report.auroc_by_kind.items():
        print(f"  {kind:22s}  {value:22.4f}   "
              f"{report.per_modality_detector_auroc_by_kind[kind]:21.4f}"
              f"   {forest.get(kind, float('nan')):30.4f}")
    print("  (cross_modal rows are normal in every modality alone: a model of the modalities "
          "together (joint, early) sees them; IsolationForest: scikit-learn defaults, missing "
          "modalities mean-imputed)")
    print_pattern_comparison(report.by_pattern)
    print("\nTop anomalies (per-modality surprise = z-score of -log p(modality)):")
    print(report.top_anomalies.to_string(index=False))
    uri = config.tracking_uri()
    print(f"\nDelta tables: {Path(config.work_dir, 'tables').resolve()}  (scores: {scores_table})")
    print(f"MLflow store: {uri}")
    print(f"Open the MLflow UI:  mlflow ui --backend-store-uri {uri}")


def print_pattern_comparison(by_pattern: dict[str, dict[str, float]]) -> None:
    """KS distances to the complete rows and AUROC of complete / incomplete anomalies, of the
    raw and the calibrated score."""
    if not by_pattern:
        return
    patterns = sorted(k for k in next(iter(by_pattern.values())) if k.startswith("ks/"))
    print("\nScores across missing modalities   KS distance of normal rows to complete ones"
          "       AUROC of anomalies")
    print(f"  {'score':18s}" + "".join(f"{p[3:]:>13s}" for p in patterns)
          + f"{'complete':>12s}{'incomplete':>12s}{'(evidence)':>12s}")
    for column, values in by_pattern.items():
        print(f"  {column:18s}" + "".join(f"{values[p]:13.3f}" for p in patterns)
              + "".join(f"{values.get(k, float('nan')):12.4f}" for k in (
                  "auroc_complete", "auroc_incomplete", "auroc_incomplete_evidence")))
    print("  (evidence: incomplete anomalies whose altered modality is observed; the others "
          "show nothing anomalous)")


def parse_modality(item: str, tables: dict[str, str]):
    """``NAME=PATH[:COLUMNS]`` as a :class:`~mmgmm_spark.app.ingest.ModalitySource`."""
    from mmgmm_spark.app.ingest import ModalitySource

    name, sep, rest = item.partition("=")
    path, colon, columns = rest.rpartition(":")
    if not colon or columns.startswith("//"):      # no COLUMNS (s3://... is a path)
        path, columns = rest, ""
    if not sep or name not in tables:
        raise ConfigError(f"--modality {item!r}: expected NAME=PATH[:COLUMNS] with NAME one "
                          f"of the config's modalities {sorted(tables)}.")
    return ModalitySource(name, path, tables[name], columns or None)


def cmd_ingest(args: argparse.Namespace, config: AppConfig) -> int:
    from mmgmm_spark.app.ingest import ingest

    tables = {m.name: m.table for m in config.data.modalities}
    sources = [parse_modality(item, tables) for item in args.modality]
    written = ingest(_spark(config), sources, config.data.id_column, config.storage.engine,
                     id_type=args.id_type or config.data.id_type)
    for name, done in written.items():
        print(f"{name}: {done.source.path} ({done.columns}) -> Delta table {done.write.table} "
              f"version {done.write.version}: {done.n_rows} rows, dim {done.dim}")
    return 0


def cmd_train(args: argparse.Namespace, config: AppConfig) -> int:
    from mmgmm_spark.app import pipeline

    fit = pipeline.train(_spark(config), config, resume_run_id=args.resume)
    print(f"run {fit.run_id}: registered version {fit.model_version}; "
          f"{fit.decision.reason if fit.decision else 'not registered'}")
    return 0


def cmd_score(args: argparse.Namespace, config: AppConfig) -> int:
    from mmgmm_spark.app import pipeline

    if args.incremental or config.scoring.mode == "incremental":
        return _score_incremental(args, config)
    result = pipeline.score(_spark(config), config, args.scoring_run_id)
    print(f"wrote {result.table} version {result.version} (scoring run {result.scoring_run_id}, "
          f"model {result.model_name} v{result.model_version})")
    return 0


def _score_incremental(args: argparse.Namespace, config: AppConfig) -> int:
    from mmgmm_spark.app.incremental import score_incremental

    result = score_incremental(_spark(config), config, args.scoring_run_id)
    if result.mode == "full":
        print("no earlier scoring run of this model version: scored every entity")
    else:
        read = ", ".join(f"{name} ({method})" for name, method in result.methods.items())
        print(f"since scoring run {result.base_run_id}: {result.n_changed} entities changed"
              f" in {read or 'no table'}; {result.n_scored} scored, {result.n_deleted} "
              "deleted upstream (their last scores kept)")
    written = result.written
    if written is None:
        print("nothing to score: no rows added to the output table")
    else:
        print(f"wrote {written.table} version {written.version} (scoring run "
              f"{written.scoring_run_id}, model {written.model_name} v{written.model_version})")
    return 0


def cmd_evaluate(args: argparse.Namespace, config: AppConfig) -> int:
    from mmgmm_spark.app import pipeline

    metrics = pipeline.evaluate(_spark(config), config, args.labels, args.label_column,
                                args.scoring_run_id, kind_column=args.kind_column)
    for name, value in metrics.items():
        if "/" not in name:
            print(f"{name}: {value:.6g}")
    kinds = sorted({name.split("/", 1)[1] for name in metrics if "/" in name})
    if kinds:
        print(f"\nby {args.kind_column} (its anomalous rows against every normal row):")
        print(f"  {'kind':22s} {'rows':>8s} {'auroc':>8s} {'average_precision':>18s}")
    for kind in kinds:
        print(f"  {kind:22s} {metrics['n_rows/' + kind]:8.0f} {metrics['auroc/' + kind]:8.4f} "
              f"{metrics['average_precision/' + kind]:18.4f}")
    return 0


def cmd_features(args: argparse.Namespace, config: AppConfig) -> int:
    from mmgmm_spark.app.features import write_features

    result = write_features(_spark(config), config, args.output_table, args.bag_column)
    blocks = ", ".join(f"{name} {size}" for name, size in result.layout)
    print(f"wrote {result.table} version {result.version} (model {result.model_name} "
          f"v{result.model_version}): responsibilities K={result.n_components}, "
          f"fisher_vector D={result.width} ({blocks})")
    return 0


def cmd_monitor(args: argparse.Namespace, config: AppConfig) -> int:
    from mmgmm_spark.app.monitor import EXIT_DRIFT, SCORE, monitor

    result = monitor(_spark(config), config)
    m = result.metrics
    print(f"scoring run {result.scoring_run_id} (model {result.model}, "
          f"{m.get('n_rows', 0):.0f} entities): PSI of the score "
          f"{m.get('psi.anomaly_score', float('nan')):.3g}, KS "
          f"{m.get('ks.anomaly_score', float('nan')):.3g}; row appended to "
          f"{result.written.table} (version {result.written.version})")
    if not result.drifted:
        print("no drift: every threshold holds")
        return 0
    for subject, reasons in sorted(result.drifted.items()):
        what = "the score distribution" if subject == SCORE else f"modality '{subject}'"
        print(f"DRIFT: {what} drifted: {'; '.join(reasons)}")
    return EXIT_DRIFT


def cmd_benchmark(args: argparse.Namespace) -> int:
    from mmgmm_spark.app.benchmark_adbench import main as adbench_main

    return adbench_main(["--data-dir", args.data_dir, "--out", args.out])


def _with_config(run: Callable[[argparse.Namespace, AppConfig], int]):
    def wrapped(args: argparse.Namespace) -> int:
        overrides = [*args.set, *([f"work_dir={args.work_dir}"] if args.work_dir else [])]
        return run(args, load_config(args.config or default_config_path(), overrides))

    return wrapped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgmm", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run, help_text: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_text)
        p.add_argument("--config", default=None,
                       help="YAML (default: the embedded local config, conf/local.yaml in a clone)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. model.n_components=12")
        p.add_argument("--work-dir", default=None, metavar="DIR",
                       help="same as --set work_dir=DIR (where local tables and MLflow go)")
        p.set_defaults(run=_with_config(run))
        return p

    p = command("demo", cmd_demo, "end-to-end demo on generated data")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p = command("ingest", cmd_ingest, "Parquet/CSV/.npz files to per-modality Delta tables")
    p.add_argument("--modality", action="append", required=True, metavar="NAME=PATH[:COLUMNS]",
                   help="COLUMNS: an array column (embedding), named columns (a,b,c), a glob "
                        "(col_*) or a prefix of numbered columns (image_ for image_0, ...); "
                        "the table is the config's data.modalities[].table of NAME")
    p.add_argument("--id-type", choices=["string", "long"], default=None,
                   help="cast every file's ids to this type first (default: data.id_type, "
                        "else as read; CSV ids are read as text)")
    p = command("train", cmd_train, "fit (or sweep), track in MLflow, register")
    p.add_argument("--resume", metavar="RUN_ID", default=None,
                   help="continue an interrupted training run from its last checkpoint")
    p = command("score", cmd_score, "score the feature tables into the output Delta table")
    p.add_argument("--scoring-run-id", default=None, help="re-run (replace) this scoring run")
    p.add_argument("--incremental", action="store_true",
                   help="only entities changed since the last scoring run of the model "
                        "version (the same as --set scoring.mode=incremental)")
    p = command("evaluate", cmd_evaluate, "AUROC/AP/precision of the scores against labels")
    p.add_argument("--labels", required=True,
                   help="Delta table, Parquet or CSV file with the id and a label column")
    p.add_argument("--label-column", default="is_anomaly",
                   help="true/1 = anomaly, false/0 = normal (default: is_anomaly)")
    p.add_argument("--kind-column", default=None, metavar="KIND",
                   help="also report AUROC and average precision per anomaly kind")
    p.add_argument("--scoring-run-id", default=None)
    p = command("features", cmd_features,
                "per-entity posteriors and Fisher vectors of the model, to a Delta table")
    p.add_argument("--output-table", required=True, metavar="TABLE",
                   help="Delta table (path or catalog name) replaced by the features")
    p.add_argument("--bag-column", default=None, metavar="COLUMN",
                   help="rows are descriptors of the entity in COLUMN (in every modality "
                        "table): one Fisher vector per entity")
    command("monitor", cmd_monitor, "drift of the latest scoring run against the training "
            "reference (exit 3 on drift)")
    bench = commands.add_parser("benchmark", help="accuracy benchmarks")
    kinds = bench.add_subparsers(dest="kind", required=True)
    adbench = kinds.add_parser("adbench", help="ADBench-format .npz files")
    adbench.add_argument("--data-dir", required=True)
    adbench.add_argument("--out", required=True)
    adbench.set_defaults(run=cmd_benchmark)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    from mmgmm_spark import DataValidationError, DegenerateComponentError, ModelFormatError
    from mmgmm_spark.io.checkpoints import CheckpointError
    from mmgmm_spark.storage import StorageError
    from mmgmm_spark.tracking.reliability import ModelNotLoggedError

    return (ConfigError, DataValidationError, DegenerateComponentError, ModelFormatError,
            StorageError, MlflowException, FileNotFoundError, CheckpointError,
            ModelNotLoggedError)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("py4j", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    logging.captureWarnings(True)       # warnings (e.g. regularised features) go to the log
    try:
        return args.run(args)
    except _user_errors() as error:
        print(f"mmgmm {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        logging.captureWarnings(False)


if __name__ == "__main__":
    sys.exit(main())
