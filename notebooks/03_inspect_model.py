# Databricks notebook source
# MAGIC %md
# MAGIC # 03 Inspect the champion model
# MAGIC Loads the registered model at the configured alias (`tracking.load_detector`) and plots
# MAGIC the component weights, the per-modality component means and the anomaly-score histogram
# MAGIC of a sample of the feature rows.

# COMMAND ----------

import matplotlib.pyplot as plt

from mmgmm_spark.app import pipeline
from mmgmm_spark.app.notebook_support import load_notebook_config, spark_for, widget
from mmgmm_spark.spark.arrow import batch_from_arrow
from mmgmm_spark.tracking import load_detector, plots, tracking
from mmgmm_spark.tracking.registry import resolve_registered

config_path = widget("config", "conf/local.yaml", "Config file (YAML)")
overrides = widget("overrides", "", "Overrides: key=value; key=value")
sample_rows = int(widget("sample_rows", "20000", "Rows scored for the histogram"))
config = load_notebook_config(config_path, overrides)
if "spark" not in globals():  # predefined on Databricks
    spark = spark_for(config)

# COMMAND ----------

settings = pipeline.tracking_config(config)
with tracking(settings):
    model_name, model_version = resolve_registered(settings.client(), config.model_uri())
    detector = load_detector(f"models:/{model_name}/{model_version}")
# a model trained with `preprocessing:` or `model.fusion` early/late is a FusionModel around
# its mixture(s): "joint", "early", or one per modality for late
mixtures = getattr(detector.model, "mixtures_", {"joint": detector.model})
print(f"{config.model_uri()} -> {model_name} version {model_version}: "
      f"threshold {detector.threshold:.3f}, contamination {detector.contamination}")
for key, model in mixtures.items():
    print(f"mixture '{key}': K={len(model.weights_)}")
    for m in model.modalities:
        print(f"  {m.name}: dim {m.dim}, {m.covariance_type} covariance, weight {m.weight}")

# COMMAND ----------

for key, model in mixtures.items():
    weights_figure = plots.component_weights(model.weights_)
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

features = pipeline.read_features(spark, config)
names = [m.name for m in detector.modalities]
rows = features.df.select(*names).limit(sample_rows).toArrow()
scores = detector.score_batch(batch_from_arrow(rows, tuple(detector.modalities), "sample"))
histogram_figure = plots.score_histogram(scores["anomaly_score"], detector.threshold)
print(f"{len(scores['anomaly_score'])} rows scored, "
      f"{int(scores['is_anomaly'].sum())} above the threshold")
plt.show()
