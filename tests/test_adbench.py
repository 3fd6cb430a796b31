"""The ADBench runner: JSON schema on generated data, and accuracy on the real benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmgmm_spark.app.benchmark_adbench import DAGMM_AUROC, discover, main, run_adbench


def _write_sets(root: Path) -> None:
    """One single-view set (solo.npz) and one two-view set (pair_left.npz + pair_right.npz)."""
    rng = np.random.RandomState(0)
    n = 160
    y = (np.arange(n) >= 150).astype(int)
    solo = rng.randn(n, 4)
    solo[y == 1] += 5
    np.savez(root / "solo.npz", X=solo, y=y)
    latent = rng.randn(n, 2)
    for view, width in (("left", 30), ("right", 12)):
        x = latent @ rng.randn(2, width) + 0.3 * rng.randn(n, width)
        x[y == 1] += 3
        np.savez(root / f"pair_{view}.npz", X=x, y=y)


def test_discover_groups_views_of_one_set(tmp_path: Path) -> None:
    _write_sets(tmp_path)
    sets = discover(tmp_path)
    assert set(sets) == {"solo", "pair"}
    assert list(sets["pair"]) == ["left", "right"] and list(sets["solo"]) == ["x"]


def test_runner_writes_the_json_schema(tmp_path: Path, capsys) -> None:
    _write_sets(tmp_path)
    out = tmp_path / "out" / "results.json"
    assert main(["--data-dir", str(tmp_path), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["strategies"] == ["joint", "early", "late"]
    pair = results["datasets"]["pair"]
    assert pair["views"] == {"left": 30, "right": 12} and pair["n_rows"] == 160
    assert set(pair["results"]) == {"joint", "early", "late", "single:left", "single:right",
                                    "iforest", "gaussian", "ledoit_wolf", "pyod_gmm"}
    for entry in results["datasets"].values():
        for strategy in ("joint", "early", "late"):
            r = entry["results"][strategy]
            assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["average_precision"] <= 1.0
            assert r["seconds"] >= 0 and "n_components" in r and "chosen" in r
    assert results["datasets"]["solo"]["results"]["joint"]["auroc"] > 0.9
    assert "single:best" in results["summary"]["."]
    assert (tmp_path / "out" / "results.md").read_text().startswith("### .")
    assert "| pair |" in capsys.readouterr().out


def test_runner_refuses_a_directory_without_data_sets(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.json"
    assert main(["--data-dir", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "No ADBench data set" in capsys.readouterr().err and not out.exists()


def test_real_classical_sets_beat_published_dagmm(adbench_dir: Path) -> None:
    results = run_adbench(adbench_dir / "classical", ("joint",), only=["thyroid", "cardio"],
                          references=())
    names = {name.split("_", 1)[-1]: entry for name, entry in results["datasets"].items()}
    assert set(names) == {"thyroid", "cardio", "annthyroid"}
    for short in ("thyroid", "cardio"):
        assert names[short]["results"]["joint"]["auroc"] > DAGMM_AUROC[short], short


def test_real_mvtec_fusion_beats_published_dagmm(adbench_dir: Path) -> None:
    results = run_adbench(adbench_dir / "mvtec_two_view", ("joint", "early"),
                          only=["bottle", "cable"], references=())
    for name, entry in results["datasets"].items():
        for strategy in ("joint", "early"):
            assert entry["results"][strategy]["auroc"] > 0.8, (name, strategy)
    assert results["summary"]["."]["joint"] > 0.665 + 0.1


def test_options_override_the_default_config() -> None:
    from mmgmm_spark.app.benchmark_adbench import config_with

    config = config_with(["ensemble=true", 'covariance_types=["diag"]'])
    assert config.ensemble and config.covariance_types == ("diag",)
    with pytest.raises(ValueError, match="unknown FusionConfig field 'nope'"):
        config_with(["nope=1"])
