"""MLflow tracking and registry: tracked fits, model selection, the pyfunc model, scoring runs.

Every fit is one run (parameters, Delta versions read, per-iteration and final metrics,
plots, the detector as a pyfunc model); a registered alias (``champion``) moves only when a
new version is not worse on hold-out data. See :class:`TrackingConfig` for where runs go.
"""

from mmgmm_spark.tracking.config import TrackingConfig, tracking
from mmgmm_spark.tracking.fit import FitRun, MetricLogger, tracked_fit
from mmgmm_spark.tracking.pyfunc import (
    AnomalyDetectorPyfunc,
    frame_to_batch,
    load_detector,
    score_udf,
)
from mmgmm_spark.tracking.registry import ChampionDecision, promote_if_not_worse
from mmgmm_spark.tracking.scoring import score_registered
from mmgmm_spark.tracking.sweep import Candidate, SweepResult, select_model

__all__ = [
    "AnomalyDetectorPyfunc",
    "Candidate",
    "ChampionDecision",
    "FitRun",
    "MetricLogger",
    "SweepResult",
    "TrackingConfig",
    "frame_to_batch",
    "load_detector",
    "promote_if_not_worse",
    "score_registered",
    "score_udf",
    "select_model",
    "tracked_fit",
    "tracking",
]
