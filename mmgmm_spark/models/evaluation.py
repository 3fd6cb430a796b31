"""Evaluation against labels, where they exist: ranking quality and the threshold's hits.

The anomaly score ranks rows (higher = more anomalous); the flag is ``score > threshold``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

from mmgmm_spark.core.batch import DataValidationError


def evaluate_scores(is_anomaly: np.ndarray, anomaly_score: np.ndarray,
                    threshold: float) -> dict[str, float]:
    """AUROC, average precision, and precision/recall/F1 of ``score > threshold``.

    Args:
        is_anomaly: (n,) true labels, bool or 0/1 (both classes must occur).
        anomaly_score: (n,) scores, higher = more anomalous.
        threshold: the detector's threshold.

    Returns:
        {"auroc", "average_precision", "precision_at_threshold", "recall_at_threshold",
        "f1_at_threshold", "flagged_fraction", "anomaly_fraction", "n_rows"}.
    """
    labels = np.asarray(is_anomaly).astype(bool)
    scores = np.asarray(anomaly_score, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be (n,).")
    if labels.all() or not labels.any():
        raise DataValidationError(
            f"Evaluation needs both anomalous and normal rows among the labels; all "
            f"{labels.size} matched rows are {'anomalous' if labels.all() else 'normal'}.")
    flagged = scores > threshold
    precision = float(precision_score(labels, flagged, zero_division=0))
    recall = float(recall_score(labels, flagged, zero_division=0))
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"auroc": float(roc_auc_score(labels, scores)),
            "average_precision": float(average_precision_score(labels, scores)),
            "precision_at_threshold": precision, "recall_at_threshold": recall,
            "f1_at_threshold": f1, "flagged_fraction": float(flagged.mean()),
            "anomaly_fraction": float(labels.mean()), "n_rows": float(len(labels))}


def log_evaluation(metrics: dict[str, float], *, run_id: str | None = None,
                   prefix: str = "eval_", client: Any = None) -> None:
    """Log :func:`evaluate_scores` output to ``run_id`` (or the active run) as ``<prefix>name``.

    ``client``: an ``MlflowClient`` (needed with ``run_id`` for a non-default store).
    """
    import mlflow

    named = {prefix + key: value for key, value in metrics.items()}
    if run_id is None:
        mlflow.log_metrics(named)
        return
    from mlflow.entities import Metric

    client = client or mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in named.items()])



def evaluate_by_kind(is_anomaly: np.ndarray, anomaly_score: np.ndarray,
                     kind: np.ndarray) -> dict[str, float]:
    """Per anomaly kind k: AUROC and average precision of the anomalous rows of kind k
    against every normal row (as the demo reports), and their count.

    Returns:
        {"auroc/<k>", "average_precision/<k>", "n_rows/<k>"} for every kind of an anomalous
        row (normal rows' kind values are ignored; characters MLflow refuses in a metric
        name become ``_`` in ``<k>``).
    """
    labels = np.asarray(is_anomaly).astype(bool)
    scores = np.asarray(anomaly_score, dtype=np.float64)
    kinds = np.asarray(kind).astype(str)
    out = {}
    for name in sorted(set(kinds[labels])):
        rows = ~labels | (kinds == name)
        positive = labels[rows]
        if positive.all():
            continue  # no normal rows to rank against
        name = re.sub(r"[^\w\-. :]", "_", name)
        out[f"auroc/{name}"] = float(roc_auc_score(positive, scores[rows]))
        out[f"average_precision/{name}"] = float(average_precision_score(positive, scores[rows]))
        out[f"n_rows/{name}"] = float(positive.sum())
    return out


def evaluate_by_pattern(is_anomaly: np.ndarray, anomaly_score: np.ndarray,
                        complete: np.ndarray, pattern: np.ndarray,
                        evidence: np.ndarray | None = None) -> dict[str, float]:
    """Whether a score means the same whatever modalities a row has.

    Args:
        is_anomaly: (n,) true labels.
        anomaly_score: (n,) scores, higher = more anomalous.
        complete: (n,) bool, rows observing every modality.
        pattern: (n,) str, a name of each row's set of observed modalities.
        evidence: (n,) bool, anomalous rows whose anomaly lies in an observed modality
            (optional: adds "auroc_incomplete_evidence", those incomplete anomalous rows).

    Returns:
        {"ks/<pattern>"}: Kolmogorov-Smirnov distance between the scores of complete normal
        rows and of the normal rows of each incomplete pattern; {"auroc_complete",
        "auroc_incomplete"}: AUROC of the complete (incomplete) anomalous rows against every
        normal row; "ks_max" the largest distance.
    """
    from scipy.stats import ks_2samp

    labels = np.asarray(is_anomaly).astype(bool)
    scores = np.asarray(anomaly_score, dtype=np.float64)
    complete, pattern = np.asarray(complete, dtype=bool), np.asarray(pattern).astype(str)
    reference = scores[~labels & complete]
    out = {f"ks/{name}": float(ks_2samp(reference, scores[~labels & (pattern == name)]).statistic)
           for name in sorted(set(pattern[~complete & ~labels]))}
    out["ks_max"] = max(out.values(), default=0.0)
    groups = [("auroc_complete", complete), ("auroc_incomplete", ~complete)]
    if evidence is not None:
        groups.append(("auroc_incomplete_evidence", ~complete & np.asarray(evidence, bool)))
    for name, rows in groups:
        chosen = ~labels | (labels & rows)
        if labels[chosen].any():
            out[name] = float(roc_auc_score(labels[chosen], scores[chosen]))
    return out
