# Databricks notebook source
# MAGIC %md
# MAGIC # 01 Explore the feature tables
# MAGIC Row counts, missing modalities, and per-modality dimensions and summary statistics of the
# MAGIC per-modality Delta tables named in the config (read with `pipeline.read_features`, the
# MAGIC same read as training and scoring).

# COMMAND ----------

import pandas as pd
from pyspark.sql import functions as F

from mmgmm_spark.app import pipeline
from mmgmm_spark.app.notebook_support import load_notebook_config, spark_for, widget

config_path = widget("config", "conf/local.yaml", "Config file (YAML)")
overrides = widget("overrides", "", "Overrides: key=value; key=value")
config = load_notebook_config(config_path, overrides)
if "spark" not in globals():  # predefined on Databricks
    spark = spark_for(config)

# COMMAND ----------

features = pipeline.read_features(spark, config)
names = [m.name for m in features.modalities]
counts = features.df.agg(F.count(F.lit(1)).alias("rows"),
                         *[F.count(F.col(name)).alias(name) for name in names]).first()
n_rows = int(counts["rows"])
overview = pd.DataFrame([
    {"modality": m.name, "table": spec.table, "version": features.versions[m.name],
     "dim": m.dim, "covariance": m.covariance_type, "observed": int(counts[m.name]),
     "missing": n_rows - int(counts[m.name])}
    for m, spec in zip(features.modalities, config.data.modalities, strict=True)])
print(f"{n_rows} entities (outer join on '{config.data.id_column}')")
print(overview.to_string(index=False))

# COMMAND ----------

# MAGIC %md Which combinations of modalities the entities observe.

# COMMAND ----------

patterns = (features.df
            .select(*[F.col(name).isNotNull().alias(name) for name in names])
            .groupBy(*names).count().orderBy(F.desc("count")).toPandas())
print(patterns.to_string(index=False))

# COMMAND ----------

# MAGIC %md Per-modality summary statistics, one row per feature dimension.

# COMMAND ----------

stats = {}
for name in names:
    stats[name] = (features.df.where(F.col(name).isNotNull())
                   .select(F.posexplode(name).alias("dimension", "value"))
                   .groupBy("dimension")
                   .agg(F.mean("value").alias("mean"), F.stddev("value").alias("std"),
                        F.min("value").alias("min"), F.max("value").alias("max"))
                   .orderBy("dimension").toPandas())
    print(f"--- {name} ---")
    print(stats[name].round(4).to_string(index=False))
