"""Diagnostic figures logged with each run (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def convergence_curve(lower_bounds: Sequence[float]) -> Figure:
    """Mean log-likelihood (T,) against EM iteration 1..T."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(lower_bounds) + 1), lower_bounds, marker="o", markersize=3)
    ax.set(xlabel="EM iteration", ylabel="mean log-likelihood", title="Convergence")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def component_weights(weights: np.ndarray) -> Figure:
    """Bar chart of the (K,) mixing weights."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(np.arange(len(weights)), weights)
    ax.set(xlabel="component", ylabel="weight", title="Component weights")
    ax.set_xticks(np.arange(len(weights)))
    fig.tight_layout()
    return fig


def score_histogram(scores: np.ndarray, threshold: float | None) -> Figure:
    """Histogram of (n,) training anomaly scores with the threshold as a vertical line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=min(100, max(10, len(scores) // 20)), color="steelblue")
    if threshold is not None:
        ax.axvline(threshold, color="crimson", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.legend()
    ax.set(xlabel="anomaly score (negative log-likelihood)", ylabel="rows",
           title="Training anomaly scores")
    ax.set_yscale("log")
    fig.tight_layout()
    return fig


def modality_contributions(scores: np.ndarray, modality_log_likelihoods: Mapping[str, np.ndarray],
                           top: int = 20) -> Figure:
    """Per modality, how far below its median log-likelihood each of the ``top`` rows with the
    highest (n,) score lies (0 where the modality is missing); stacked horizontal bars."""
    order = np.argsort(scores)[::-1][:top]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(order) + 1)))
    left = np.zeros(len(order))
    for name, values in modality_log_likelihoods.items():
        median = np.nanmedian(values) if np.isfinite(values).any() else 0.0
        excess = np.nan_to_num(median - values[order], nan=0.0).clip(min=0.0)
        ax.barh(np.arange(len(order)), excess, left=left, label=name)
        left += excess
    ax.set_yticks(np.arange(len(order)), [f"#{i + 1} ({scores[r]:.1f})"
                                          for i, r in enumerate(order)])
    ax.invert_yaxis()
    ax.set(xlabel="modality log-likelihood below its median",
           title=f"Per-modality contribution, top {len(order)} anomalies")
    ax.legend()
    fig.tight_layout()
    return fig


def bic_curve(results: Sequence[tuple[int, str, float]], best: tuple[int, str]) -> Figure:
    """BIC against K, one line per covariance configuration; ``results``: (K, label, bic)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({r[1] for r in results}):
        points = sorted((k, bic) for k, lab, bic in results if lab == label)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    best_bic = [bic for k, lab, bic in results if (k, lab) == best]
    if best_bic:
        ax.scatter([best[0]], best_bic, s=150, facecolors="none", edgecolors="crimson",
                   label="selected")
    ax.set(xlabel="n_components K", ylabel="BIC (lower is better)", title="Model selection")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def quantiles_over_runs(labels: Sequence[str],
                        quantiles: Sequence[Mapping[str, Sequence[float]]],
                        probabilities: Sequence[float]) -> Figure:
    """One panel per monitored column: its quantiles (lines) over the checked runs.

    ``labels``: (R,) run labels in time order; ``quantiles``: (R,) {column: (Q,) values at
    ``probabilities``}.
    """
    columns = list(quantiles[-1]) if quantiles else []
    fig, axes = plt.subplots(len(columns), 1, figsize=(7, 2.4 * max(1, len(columns))),
                             squeeze=False, sharex=True)
    x = np.arange(len(labels))
    for ax, column in zip(axes[:, 0], columns, strict=True):
        values = np.array([[np.nan] * len(probabilities) if column not in q else q[column]
                           for q in quantiles], dtype=float)
        for j, p in enumerate(probabilities):
            ax.plot(x, values[:, j], marker="o", markersize=3, label=f"q{p:g}")
        ax.set(ylabel=column)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=len(probabilities))
    axes[-1, 0].set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    axes[0, 0].set_title("Quantiles of the scored population over the checked runs")
    fig.tight_layout()
    return fig
