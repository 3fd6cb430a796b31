"""A pyspark.ml Pipeline with the mixture stage: fit, transform, save, load, transform.

Usage: python ml_pipeline.py (--master MASTER | --remote URL) DATA.npz WORK_DIR OUT.npz
The tests import :func:`run` for a classic session and run this file for Spark Connect (a
Connect client switches pyspark.ml to its remote mode for the whole process).
DATA.npz holds ``image`` (n, 3) (NaN rows = missing) and ``text`` (n, 2); OUT.npz receives
what :func:`run` returns.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from mmgmm_spark.ml import MultimodalGaussianMixture, MultimodalGaussianMixtureModel
from mmgmm_spark.spark.arrow import list_column
from mmgmm_spark.spark.session import build_spark

SCORES = ["logLikelihood", "anomalyScore", "calibratedScore", "isAnomaly", "prediction",
          "imageLogLikelihood", "textLogLikelihood"]


def frame(spark, arrays):
    """Rows (id, image array<double> or null, t0, t1 doubles)."""
    import pyarrow as pa

    text = arrays["text"]
    table = pa.table({"id": pa.array(np.arange(len(text))), "image": list_column(arrays["image"]),
                      "t0": pa.array(text[:, 0]), "t1": pa.array(text[:, 1])})
    return spark.createDataFrame(table).repartition(3)


def pipeline() -> Pipeline:
    """SQLTransformer -> VectorAssembler (text vector) -> the mixture."""
    return Pipeline(stages=[
        SQLTransformer(statement="SELECT *, t0 * 1.0 AS u0 FROM __THIS__"),
        VectorAssembler(inputCols=["u0", "t1"], outputCol="text"),
        MultimodalGaussianMixture(featuresCols=["image", "text"], k=3,
                                  covarianceTypes=["full", "diag"], maxIter=12, tol=1e-6,
                                  seed=3, contamination=0.05)])


def scores(df) -> dict[str, np.ndarray]:
    """The output columns, ordered by id (probability as (n, K))."""
    rows = df.select("id", *SCORES, vector_to_array(F.col("probability")).alias("p")) \
        .orderBy("id").toPandas()
    out = {name: rows[name].to_numpy() for name in SCORES}
    out["probability"] = np.stack(rows["p"].to_numpy())
    return out


def run(spark, arrays, work_dir: str) -> dict[str, np.ndarray]:
    """Fit, transform, save, load (from ``work_dir/pipeline``), transform again."""
    df = frame(spark, arrays)
    model = pipeline().fit(df)
    before = scores(model.transform(df))
    path = os.path.join(work_dir, "pipeline")
    model.write().overwrite().save(path)
    after = scores(PipelineModel.load(path).transform(df))
    stage = model.stages[-1]
    for _ in range(2):  # the stage alone, saved over itself
        stage.write().overwrite().save(os.path.join(work_dir, "stage"))
    loaded = MultimodalGaussianMixtureModel.load(os.path.join(work_dir, "stage"))
    assert loaded.weights == stage.weights and loaded.uid == stage.uid
    out = {f"before_{k}": v for k, v in before.items()}
    out.update({f"after_{k}": v for k, v in after.items()})
    out.update(weights=np.array(stage.weights), threshold=np.array(stage.threshold),
               n_iter=np.array(stage.summary.numIter),
               cluster_sizes=np.array(stage.summary.clusterSizes))
    for name in ("image", "text"):
        out[f"means_{name}"] = stage.means[name]
        out[f"covariances_{name}"] = stage.covariances[name]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--master")
    parser.add_argument("--remote")
    parser.add_argument("data")
    parser.add_argument("work_dir")
    parser.add_argument("out")
    args = parser.parse_args()
    spark = build_spark(master=args.master, remote=args.remote, app_name="mmgmm-test-ml")
    arrays = dict(np.load(args.data, allow_pickle=False))
    np.savez(args.out, **run(spark, arrays, args.work_dir))
    spark.stop()


if __name__ == "__main__":
    main()
