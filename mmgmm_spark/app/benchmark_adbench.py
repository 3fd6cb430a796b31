"""Accuracy of the fusion strategies on ADBench-format data (``.npz`` files with X and y).

A file ``<name>.npz`` is a one-modality data set. Files ``<name>_<view>.npz`` in the same
directory with the same ``<name>`` and equal row counts are the modalities of one data set
(e.g. ``bottle_resnet18.npz`` + ``bottle_vit.npz``). Protocol (ADBench's unsupervised
setting): fit on all rows without labels, score the same rows; labels (y = 1: anomaly) are
used only to compute AUROC and average precision of the anomaly score. Data sets with more
than ``max_rows`` rows are fitted on a random subsample of ``max_rows`` rows and every row is
scored (recorded as ``fit_rows``).

For multi-view sets every strategy is reported with, as references, each view alone
(``single:<view>``, the ``joint`` configuration on that view). On one-modality sets the three
strategies are the same model (``late`` is a monotone transform of it), so it is fitted once.
The reference detectors of :mod:`mmgmm_spark.app.references` (IsolationForest over 5 seeds,
one standardised Gaussian, Ledoit-Wolf, PyOD's default GMM) run on the same fit rows, on the
concatenated views, in the same run. :func:`criteria` checks issue 18's goals against them:
the mean AUROC at least IForest's + 0.03, no set more than 0.05 below the best of {IForest,
one Gaussian}; on multi-view sets the ``joint`` mean at least every reference's and every
single view's, and no set more than 0.01 below its better single view.

Usage: ``python -m mmgmm_spark.app.benchmark_adbench --data-dir DIR --out results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mmgmm_spark.app.references import REFERENCES, reference_result
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.fusion import STRATEGIES, FusionConfig, FusionModel

log = logging.getLogger(__name__)

DAGMM_AUROC = {"thyroid": 0.798, "cardio": 0.750, "satellite": 0.623, "smtp": 0.713}
"""Published DAGMM AUROCs (ADBench, unsupervised) used as anchors in the report."""
DAGMM_MVTEC_MEAN = 0.665
IFOREST_MARGIN = 0.03
"""The model's mean AUROC must exceed IForest's by this much."""
WORST_SET_GAP = 0.05
"""No set more than this below the best of {IForest, one Gaussian}."""
SINGLE_VIEW_GAP = 0.01
"""No multi-view set more than this below its better single view."""


def discover(data_dir: str | Path) -> dict[str, dict[str, Path]]:
    """Data sets under ``data_dir`` (recursively): {set name: {view name: file}}.

    A one-modality set has the single view ``"x"``. Set names are ``<subdir>/<name>``.
    """
    root = Path(data_dir)
    out: dict[str, dict[str, Path]] = {}
    for directory in sorted({p.parent for p in root.rglob("*.npz")}):
        files = sorted(directory.glob("*.npz"))
        groups: dict[str, dict[str, Path]] = defaultdict(dict)
        for f in files:
            if "_" in f.stem:
                prefix, view = f.stem.rsplit("_", 1)
                groups[prefix][view] = f
        used: set[Path] = set()
        relative = directory.relative_to(root).as_posix()
        prefix_path = "" if relative == "." else f"{relative}/"
        for prefix, views in sorted(groups.items()):
            if len(views) >= 2 and len({_n_rows(p) for p in views.values()}) == 1:
                out[prefix_path + prefix] = dict(sorted(views.items()))
                used.update(views.values())
        for f in files:
            if f not in used:
                out[prefix_path + f.stem] = {"x": f}
    return out


def _n_rows(path: Path) -> int:
    with np.load(path, allow_pickle=False) as z:
        return int(z["y"].shape[0])


def load_set(views: dict[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({view: X (n, d_view) float64}, y (n,) int) of one data set; views must share y."""
    data, labels = {}, None
    for view, path in views.items():
        with np.load(path, allow_pickle=False) as z:
            data[view] = np.asarray(z["X"], dtype=np.float64)
            y = np.asarray(z["y"]).astype(int).ravel()
        if labels is not None and not np.array_equal(labels, y):
            raise ValueError(f"{path}: labels differ from the other views of the set.")
        labels = y
    return data, labels


def ranking_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUROC and average precision of anomaly ``score`` (n,) against labels y (n,)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"auroc": float(roc_auc_score(y, score)),
            "average_precision": float(average_precision_score(y, score))}


def _fit_score(data: dict[str, np.ndarray], config: FusionConfig,
               fit_rows: np.ndarray) -> tuple[np.ndarray, FusionModel]:
    modalities = [Modality(name, x.shape[1]) for name, x in data.items()]
    model = FusionModel(modalities, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit({name: x[fit_rows] for name, x in data.items()})
    return -model.score_samples(data), model


def _run_one(data: dict[str, np.ndarray], y: np.ndarray, config: FusionConfig,
             fit_rows: np.ndarray) -> dict[str, Any]:
    started = time.perf_counter()
    score, model = _fit_score(data, config, fit_rows)
    chosen = model.chosen
    ks = {key: c["n_components"] for key, c in chosen.items()}
    return {**ranking_metrics(y, score), "n_components": next(iter(ks.values())) if len(ks) == 1
            else ks, "chosen": chosen, "seconds": round(time.perf_counter() - started, 3)}


def run_set(data: dict[str, np.ndarray], y: np.ndarray, strategies: tuple[str, ...],
            config: FusionConfig, max_rows: int = 100_000, seed: int = 0,
            references: tuple[str, ...] = REFERENCES) -> dict[str, Any]:
    """Results of every strategy (+ single views and reference detectors) on one data set."""
    n = len(y)
    rng = np.random.RandomState(seed)
    fit_rows = (np.sort(rng.choice(n, max_rows, replace=False)) if n > max_rows
                else np.arange(n))
    results: dict[str, Any] = {}
    if len(data) == 1:
        first = _run_one(data, y, replace(config, strategy="joint"), fit_rows)
        for s in strategies:
            results[s] = first if s == "joint" else {**first, "same_as": "joint"}
    else:
        for s in strategies:
            results[s] = _run_one(data, y, replace(config, strategy=s), fit_rows)
        for view, x in data.items():
            results[f"single:{view}"] = _run_one({view: x}, y, replace(config, strategy="joint"),
                                                 fit_rows)
    x = np.hstack(list(data.values()))
    for name in references:
        started = time.perf_counter()
        results[name] = {**reference_result(name, x, y, fit_rows, ranking_metrics),
                         "seconds": round(time.perf_counter() - started, 3)}
    return {"n_rows": n, "fit_rows": int(len(fit_rows)), "anomaly_rate": float(y.mean()),
            "views": {view: int(x.shape[1]) for view, x in data.items()}, "results": results}


def run_adbench(data_dir: str | Path, strategies: tuple[str, ...] = tuple(STRATEGIES),
                config: FusionConfig | None = None, *, max_rows: int = 100_000, seed: int = 0,
                only: list[str] | None = None,
                references: tuple[str, ...] = REFERENCES) -> dict[str, Any]:
    """Fit and score every data set under ``data_dir``; return the JSON-able results.

    Args:
        data_dir: directory of ADBench-format ``.npz`` files (searched recursively).
        strategies: fusion strategies to compare.
        config: base :class:`FusionConfig` (its ``strategy`` is overridden).
        max_rows: larger sets are fitted on a random subsample of this many rows.
        seed: subsampling and EM seed.
        only: substrings; when given, only data sets whose name contains one are run.
        references: reference detectors to run (names in
            :data:`mmgmm_spark.app.references.DETECTORS`).

    Returns:
        {"config": ..., "strategies": [...], "datasets": {name: {"n_rows", "fit_rows",
        "anomaly_rate", "views", "results": {strategy: {"auroc", "average_precision",
        "n_components", "chosen", "seconds"}}}}, "summary": {group: {strategy: mean AUROC}},
        "criteria": see :func:`criteria`}
    """
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"Unknown strategies {bad}; choose from {tuple(STRATEGIES)}.")
    config = replace(config or FusionConfig(), random_state=seed)
    for strategy in strategies:         # refuse what a strategy cannot take before any fit
        try:
            replace(config, strategy=strategy)
        except ValueError as error:
            raise ValueError(f"strategy '{strategy}' (drop it from --strategies): "
                             f"{error}") from None
    selected = {name: views for name, views in discover(data_dir).items()
                if not only or any(o in name for o in only)}
    if not selected:
        raise FileNotFoundError(
            f"No ADBench data set (<name>.npz or <name>_<view>.npz) under {str(data_dir)!r}"
            + (f" whose name contains one of {only}" if only else "") + "; check --data-dir.")
    datasets = {}
    for name, views in selected.items():
        data, y = load_set(views)
        started = time.perf_counter()
        datasets[name] = run_set(data, y, tuple(strategies), config, max_rows, seed,
                                 tuple(references))
        log.info("%s: %s (%.1f s)", name, {k: round(v["auroc"], 3) for k, v in
                                           datasets[name]["results"].items()
                                           if v.get("auroc") is not None},
                 time.perf_counter() - started)
    return {"config": config.to_dict(), "strategies": list(strategies), "max_rows": max_rows,
            "seed": seed, "datasets": datasets, "summary": summarise(datasets),
            "criteria": criteria(datasets)}


def _group(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else "."


def summarise(datasets: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per group (sub-directory) and column: mean AUROC over its data sets.

    ``single:best`` is the best single view's mean AUROC (views named alike across sets).
    """
    columns: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, entry in datasets.items():
        for column, result in entry["results"].items():
            if result.get("auroc") is not None:
                columns[_group(name)][column].append(result["auroc"])
    summary = {}
    for group, values in columns.items():
        means = {column: float(np.mean(v)) for column, v in values.items()}
        singles = [v for k, v in means.items() if k.startswith("single:")]
        if singles:
            means["single:best"] = max(singles)
        summary[group] = means
    return summary


def _auroc(entry: dict[str, Any], column: str) -> float | None:
    return entry["results"].get(column, {}).get("auroc")


def criteria(datasets: dict[str, Any], model: str = "joint") -> dict[str, dict[str, Any]]:
    """Per group: issue 18's goals for column ``model`` against the references of the run.

    Returns {group: {"mean_minus_iforest": mean(model) - mean(iforest), "worst_gap":
    min over sets of model - max(iforest, gaussian), "worst_set", and over the group's
    multi-view sets "mean_minus_best_reference" (min of model's mean minus each single view's
    and each reference's mean) and "worst_single_view_gap" (min over sets of model - better
    single view); "passed": whether every goal holds}.
    """
    groups: dict[str, dict[str, Any]] = defaultdict(dict)
    for name, entry in datasets.items():
        groups[_group(name)][name] = entry
    out = {}
    for group, entries in groups.items():
        result = _set_goals(entries, model)
        passed = (result["mean_minus_iforest"] >= IFOREST_MARGIN
                  and result["worst_gap"] >= -WORST_SET_GAP)
        multi = [e for e in entries.values() if any(c.startswith("single:")
                                                     for c in e["results"])]
        if multi:
            result.update(_view_goals(multi, model))
            passed = (result["mean_minus_best_reference"] >= 0
                      and result["worst_single_view_gap"] >= -SINGLE_VIEW_GAP)
        out[group] = {**result, "passed": bool(passed)}
    return out


def _set_goals(entries: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    """Mean gain over IForest and the worst set's gap to the best of {IForest, Gaussian}."""
    ours = np.array([_auroc(e, model) for e in entries.values()], dtype=float)
    iforest = np.array([_auroc(e, "iforest") for e in entries.values()], dtype=float)
    best = np.array([max(_auroc(e, "iforest") or 0.0, _auroc(e, "gaussian") or 0.0)
                     for e in entries.values()])
    gaps = ours - best
    return {"mean_minus_iforest": float(ours.mean() - np.nanmean(iforest)),
            "worst_gap": float(gaps.min()), "worst_set": list(entries)[int(gaps.argmin())]}


def _view_goals(entries: list[dict[str, Any]], model: str) -> dict[str, float]:
    """Multi-view goals: mean vs every single view and reference, worst single-view gap."""
    ours = np.array([_auroc(e, model) for e in entries], dtype=float)
    singles = [c for c in entries[0]["results"] if c.startswith("single:")]
    others = [*singles, *[c for c in REFERENCES if c in entries[0]["results"]]]
    means = [np.mean([_auroc(e, c) or 0.0 for e in entries]) for c in others]
    better_view = np.array([max(_auroc(e, c) for c in singles) for e in entries])
    return {"mean_minus_best_reference": float(ours.mean() - max(means)),
            "worst_single_view_gap": float((ours - better_view).min())}


def _anchor(name: str) -> str:
    short = name.rsplit("/", 1)[-1].split("_", 1)[-1]
    return f"{DAGMM_AUROC[short]:.3f}" if short in DAGMM_AUROC else ""


def markdown(results: dict[str, Any]) -> str:
    """Tables of AUROC (average precision in brackets) per data set and column, with means."""
    lines = []
    by_group: dict[str, list[str]] = defaultdict(list)
    for name in results["datasets"]:
        by_group[_group(name)].append(name)
    for group, names in by_group.items():
        columns: list[str] = []
        for name in names:
            columns += [c for c in results["datasets"][name]["results"] if c not in columns]
        header = ["data set", "rows", "K (joint)", *columns, "DAGMM"]
        lines += [f"### {group}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        for name in names:
            entry = results["datasets"][name]
            cells = [name.rsplit("/", 1)[-1], str(entry["n_rows"]),
                     str(entry["results"].get("joint", {}).get("n_components", ""))]
            for column in columns:
                r = entry["results"].get(column, {})
                cells.append("" if r.get("auroc") is None else
                             f"{r['auroc']:.3f} ({r['average_precision']:.2f})")
            cells.append(_anchor(name))
            lines.append("| " + " | ".join(cells) + " |")
        means = results["summary"].get(group, {})
        anchor = f"{DAGMM_MVTEC_MEAN:.3f}" if "mvtec" in group else ""
        lines.append("| **mean AUROC** | | | " + " | ".join(
            f"**{means[c]:.3f}**" if c in means else "" for c in columns) + f" | {anchor} |")
        if "single:best" in means:
            lines.append(f"\nBest single view mean AUROC: {means['single:best']:.3f}")
        goals = results.get("criteria", {}).get(group)
        if goals:
            lines.append("\nGoals (joint): " + ", ".join(
                f"{key} {value:+.3f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in goals.items()))
        lines.append("")
    return "\n".join(lines)


def config_with(options: list[str]) -> FusionConfig:
    """The default :class:`FusionConfig` with ``KEY=JSON`` overrides (lists become tuples)."""
    fields = FusionConfig().to_dict()
    for option in options:
        key, _, value = option.partition("=")
        if key not in fields:
            raise ValueError(f"--option {option!r}: unknown FusionConfig field {key!r}; "
                             f"choose from {sorted(fields)}.")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--option {option!r}: the value must be JSON "
                             f"(true, 3, \"diag\", [1, 2]).") from None
    return FusionConfig.from_dict(fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmgmm_spark.app.benchmark_adbench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True, help="results JSON path (+ .md next to it)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--max-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated name substrings")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                        help="a FusionConfig field, e.g. --option ensemble=true "
                             "--option 'covariance_types=[\"diag\"]' (repeatable)")
    parser.add_argument("--references", default=",".join(REFERENCES),
                        help="comma-separated reference detectors ('' for none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = config_with(args.option)
        results = run_adbench(args.data_dir, tuple(s for s in args.strategies.split(",") if s),
                              config,
                              max_rows=args.max_rows, seed=args.seed,
                              only=[o for o in args.only.split(",") if o] or None,
                              references=tuple(r for r in args.references.split(",") if r))
    except (FileNotFoundError, ValueError) as error:
        print(f"benchmark adbench: error: {error}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    table = markdown(results)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
