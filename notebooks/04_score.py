# Databricks notebook source
# MAGIC %md
# MAGIC # 04 Score the feature tables
# MAGIC Scores every entity with the configured model (`pipeline.score`, the same as the hourly
# MAGIC job), writes the Delta output table and shows the top anomalies with each modality's
# MAGIC log-likelihood (low = that modality is unusual).

# COMMAND ----------

from pyspark.sql import functions as F

from mmgmm_spark.app import pipeline
from mmgmm_spark.app.notebook_support import (
    load_notebook_config,
    scoring_run_rows,
    spark_for,
    widget,
)

config_path = widget("config", "conf/local.yaml", "Config file (YAML)")
overrides = widget("overrides", "", "Overrides: key=value; key=value")
scoring_run_id = widget("scoring_run_id", "", "Re-run this scoring run (empty: a new run)")
top_n = int(widget("top_n", "20", "Top anomalies shown"))
config = load_notebook_config(config_path, overrides)
if "spark" not in globals():  # predefined on Databricks
    spark = spark_for(config)

# COMMAND ----------

result = pipeline.score(spark, config, scoring_run_id or None)
print(f"wrote {result.table} version {result.version} (scoring run {result.scoring_run_id}, "
      f"model {result.model_name} v{result.model_version})")

# COMMAND ----------

scores = scoring_run_rows(spark, config, result.table, result.scoring_run_id)
modality_columns = [f"{m.name}_log_likelihood" for m in config.data.modalities]
summary = scores.agg(F.count(F.lit(1)).alias("rows"),
                     F.sum(F.col("is_anomaly").cast("int")).alias("anomalies")).first()
print(f"{summary['rows']} rows scored, {summary['anomalies']} flagged as anomalies")
top = (scores.orderBy(F.desc("anomaly_score"))
       .select(config.data.id_column, "anomaly_score", "is_anomaly", "cluster",
               *modality_columns)
       .limit(top_n).toPandas())
print(top.round(3).to_string(index=False))
