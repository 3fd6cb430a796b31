# Databricks notebook source
# MAGIC %md
# MAGIC # 03 Inspect the champion model
# MAGIC Loads the registered model at the configured alias (`load_champion`) and plots
# MAGIC the component weights, the per-modality component means and the anomaly-score histogram
# MAGIC of a sample of the feature rows.

# COMMAND ----------

import matplotlib.pyplot as plt

from mmgmm_spark.app.notebook_support import (
    component_weights,
    load_champion,
    load_notebook_config,
    sample_scores,
    score_histogram,
    spark_for,
    widget,
)

config_path = widget("config", "conf/local.yaml", "Config file (YAML)")
overrides = widget("overrides", "", "Overrides: key=value; key=value")
sample_rows = int(widget("sample_rows", "20000", "Rows scored for the histogram"))
config = load_notebook_config(config_path, overrides)
if "spark" not in globals():  # predefined on Databricks
    spark = spark_for(config)

# COMMAND ----------

champion = load_champion(config)
model_name, model_version, detector = champion.name, champion.version, champion.detector
# a model trained with `preprocessing:` or `model.fusion` early/late is a FusionModel around
# its mixture(s): "joint", "early", or one per modality for late
mixtures = champion.mixtures
print(f"{champion.uri} -> {model_name} version {model_version}: "
      f"threshold {detector.threshold:.3f}, contamination {detector.contamination}")
for key, model in mixtures.items():
    print(f"mixture '{key}': K={len(model.weights_)}")
    for m in model.modalities:
        print(f"  {m.name}: dim {m.dim}, {m.covariance_type} covariance, weight {m.weight}")

# COMMAND ----------

for key, model in mixtures.items():
    weights_figure = component_weights(model.weights_)
    weights_figure.suptitle(f"mixture '{key}'")
    plt.show()

# COMMAND ----------

means = {name: values for model in mixtures.values() for name, values in model.means_.items()}
figure, axes = plt.subplots(1, len(means), figsize=(4 * len(means), 3), squeeze=False)
for axis, (name, values) in zip(axes[0], means.items(), strict=True):
    image = axis.imshow(values, aspect="auto", cmap="coolwarm")
    axis.set_title(f"{name} means")
    axis.set_xlabel("feature")
    axis.set_ylabel("component")
    figure.colorbar(image, ax=axis)
figure.tight_layout()
plt.show()

# COMMAND ----------

scores = sample_scores(spark, config, detector, sample_rows)
histogram_figure = score_histogram(scores["anomaly_score"], detector.threshold)
print(f"{len(scores['anomaly_score'])} rows scored, "
      f"{int(scores['is_anomaly'].sum())} above the threshold")
plt.show()
