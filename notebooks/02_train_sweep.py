# Databricks notebook source
# MAGIC %md
# MAGIC # 02 Train with a sweep over the number of components
# MAGIC Fits one model per K (config override `model.sweep.n_components`), keeps the lowest BIC,
# MAGIC tracks every candidate in MLflow and registers the winner (`pipeline.train`).

# COMMAND ----------

import matplotlib.pyplot as plt
import pandas as pd

from mmgmm_spark.app import pipeline
from mmgmm_spark.app.notebook_support import load_notebook_config, spark_for, widget

config_path = widget("config", "conf/local.yaml", "Config file (YAML)")
overrides = widget("overrides", "", "Overrides: key=value; key=value")
k_values = widget("k_values", "2,4,6,8", "n_components to try (comma-separated)")
ks = [int(k) for k in k_values.split(",") if k.strip()]
config = load_notebook_config(config_path, f"{overrides}; model.sweep.n_components={ks}")
if "spark" not in globals():  # predefined on Databricks
    spark = spark_for(config)

# COMMAND ----------

fit = pipeline.train(spark, config)
print(f"sweep run {fit.run_id}: registered version {fit.model_version}; "
      f"{fit.decision.reason if fit.decision else 'not registered'}")

# COMMAND ----------

client = pipeline.tracking_config(config).client()
sweep_run = client.get_run(fit.run_id)      # the parent run: the model is logged there
chosen_k = int(sweep_run.data.params["best_n_components"])
bic = pd.DataFrame([
    {"n_components": int(key.split("/")[1][1:]), "covariances": "/".join(key.split("/")[2:]),
     "bic": value}
    for key, value in sweep_run.data.metrics.items() if key.startswith("bic/")
]).sort_values(["covariances", "n_components"])
print(f"chosen K = {chosen_k} (lowest BIC {sweep_run.data.metrics['best_bic']:.1f})")
print(bic.to_string(index=False))

figure, axis = plt.subplots(figsize=(6, 3.5))
for label, group in bic.groupby("covariances"):
    axis.plot(group["n_components"], group["bic"], marker="o", label=label)
axis.axvline(chosen_k, color="grey", linestyle="--")
axis.set_xlabel("n_components (K)")
axis.set_ylabel("BIC (lower is better)")
axis.legend(fontsize="small")
plt.show()
