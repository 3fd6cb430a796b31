"""Score a registered model through ``mlflow.pyfunc.spark_udf`` on a Spark Connect session.

Usage: python score_udf_connect.py URL WORK_DIR OUT.parquet
WORK_DIR is a demo-config work directory (``tables/<modality>``, ``mlflow.db`` with the model
``mmgmm-demo@champion``); OUT.parquet receives the id and the UDF's score columns.
"""

from __future__ import annotations

import sys

import pyarrow.parquet as pq

from mmgmm_spark.spark.score import read_and_join
from mmgmm_spark.spark.session import build_spark
from mmgmm_spark.tracking import TrackingConfig
from mmgmm_spark.tracking import tracking as tracking_context
from mmgmm_spark.tracking.pyfunc import score_udf

MODALITIES = ["image", "text", "sensor"]


def main() -> None:
    url, work_dir, out = sys.argv[1:]
    spark = build_spark(remote=url)
    joined, _ = read_and_join(spark, {m: f"{work_dir}/tables/{m}" for m in MODALITIES},
                              engine="delta-rs")
    tracking = TrackingConfig(work_dir=work_dir, tracking_uri=f"sqlite:///{work_dir}/mlflow.db")
    with tracking_context(tracking):
        scores = score_udf(spark, "models:/mmgmm-demo@champion", MODALITIES)
        table = joined.select("id", scores.alias("s")).select("id", "s.*").toArrow()
    pq.write_table(table, out)


if __name__ == "__main__":
    main()
