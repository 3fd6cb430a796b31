"""MLflow "model from code" entry point: MLflow copies this file into the model directory."""

import mlflow

from mmgmm_spark.tracking.pyfunc import AnomalyDetectorPyfunc

mlflow.models.set_model(AnomalyDetectorPyfunc())
