"""The point baselines' experiment configs run one training step and one validation batch
(``fast_dev_run``) on the real LungCT_L2R clouds with their tiny overrides from ``tests/conf/``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from regframe.cli import RegframeCLI
from regframe.methods.points_metric_supervised import PointMetricSupervised
from regframe.methods.points_synthetic import PointSyntheticSupervised

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"lung_points_metric_supervised.yaml": PointMetricSupervised,
           "lung_points_synthetic_rigid.yaml": PointSyntheticSupervised,
           "lung_points_synthetic_field.yaml": PointSyntheticSupervised}


@pytest.mark.real_data
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_point_baseline_config_runs_one_step(config: str, shared_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # configs write under ./runs
    args = ["fit", "--config", str(REPO / "experiments" / config), "--config", str(REPO / "tests" / "conf" / config),
            f"--data.init_args.root={shared_data / 'LungCT_L2R'}", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.fast_dev_run=true"]
    cli = RegframeCLI(args=args)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert isinstance(cli.model, CONFIGS[config])
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert 0.0 < float(metrics["val/tre_mm"]) < 50.0  # mm; the pairs start at about 10 mm
    assert 0.0 < float(metrics["val/tre_keypoints_mm"]) < 50.0
