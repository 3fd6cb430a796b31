# Databricks notebook source
# MAGIC %md
# MAGIC # 05 Mixture features for a downstream classifier
# MAGIC Generates objects of 6 overlapping classes, each with an image and a text embedding (30%
# MAGIC lack one of them), fits the joint mixture on all objects without their classes, writes
# MAGIC every object's posteriors and improved Fisher vector (`mmgmm features`), then trains a
# MAGIC logistic regression on a few labelled objects: on the raw concatenated features (a
# MAGIC missing modality imputed by the labelled rows' means) and on the mixture's features,
# MAGIC which fuse the two modalities through the posteriors and marginalise a missing one.

# COMMAND ----------

import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from mmgmm_spark.app import pipeline
from mmgmm_spark.app.features import write_features, write_fusion_demo
from mmgmm_spark.app.notebook_support import (
    feature_arrays,
    load_notebook_config,
    spark_for,
    widget,
)

config_path = widget("config", "conf/local.yaml", "Config file (YAML)")
overrides = widget("overrides", "", "Overrides: key=value; key=value")
n_rows = int(widget("rows", "20000", "Objects generated"))
n_labelled = int(widget("labelled", "300", "Objects with a known class for the classifier"))
seed = int(widget("seed", "0", "Seed of the generated data and of the labelled sample"))
config = load_notebook_config(config_path, overrides)
if "spark" not in globals():  # predefined on Databricks
    spark = spark_for(config)

# COMMAND ----------

demo = write_fusion_demo(spark, config, n_rows, seed)
fit = pipeline.train(spark, demo.config)
result = write_features(spark, demo.config, demo.features_table)
print(f"model {result.model_name} v{result.model_version}: wrote {result.table} version "
      f"{result.version}, K={result.n_components}, Fisher vector D={result.width}")

# COMMAND ----------

mixture = feature_arrays(spark, demo.config, result.table, demo.ids)
raw = pd.concat([pd.DataFrame(demo.raw[name]).add_prefix(f"{name}_") for name in demo.raw],
                axis=1).to_numpy()
candidates = {"raw concatenated": raw, "responsibilities": mixture["responsibilities"],
              "fisher_vector": mixture["fisher_vector"]}
order = pd.Series(range(n_rows)).sample(frac=1.0, random_state=seed).to_numpy()
train, test = order[:n_labelled], order[n_rows // 2:]
accuracy = {}
for name, x in candidates.items():
    classifier = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=2000))
    classifier.fit(x[train], demo.group[train])
    accuracy[name] = classifier.score(x[test], demo.group[test])
comparison = pd.DataFrame({"features": list(accuracy), "width": [x.shape[1] for x in
                                                                 candidates.values()],
                           "test accuracy": list(accuracy.values())})
print(f"{n_labelled} labelled objects, {len(test)} test objects")
print(comparison.round(4).to_string(index=False))
