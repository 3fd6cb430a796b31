"""Score into a Delta table, but kill the process once the Parquet files are staged.

Usage: score_then_die.py <model_dir> <table_dir> <output_table> <scoring_run_id>
"""

import os
import sys

from deltalake import DeltaTable

from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.spark.score import read_and_join, score_to_delta
from mmgmm_spark.spark.session import build_spark


def die(*args, **kwargs):
    os._exit(17)   # as if the driver were killed right before the commit


model_dir, tables, output, run_id = sys.argv[1:5]
spark = build_spark("local[1]", app_name="score-then-die")
detector = AnomalyDetector.load(model_dir)
joined, _ = read_and_join(spark, {m.name: os.path.join(tables, m.name)
                                  for m in detector.modalities})
DeltaTable.create_write_transaction = die
score_to_delta(spark, joined, output, detector, model_name="m", model_version="1",
               scoring_run_id=run_id)
