"""Tiny in-memory pieces for the CST stage / pseudo-label tests: a data module of 4 random 16³
subjects (6 unordered training pairs) and a CST module with a narrow CNN."""

from __future__ import annotations

import pytest
import torch

from data_modules.base import RegistrationDataModule, enumerate_pairs
from regframe.estimators.feature_convex import FeatureConvexEstimator
from regframe.estimators.cst_pipeline import cst_pipeline
from regframe.features.cnn import CSTFeatureNet
from regframe.methods.cyclical import CyclicalSelfTraining
from regframe.optim.instance import InstanceOptimisation


class RandomSubjects(RegistrationDataModule):
    """``count`` random ``(1, 16, 16, 16)`` images, all pairs for training, none for validation."""

    def __init__(self, count: int = 4, batch_size: int = 2) -> None:
        super().__init__(batch_size=batch_size)
        self.count = count

    def load(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.train_subjects = [{"image": torch.rand(1, 16, 16, 16, generator=generator), "spacing": torch.ones(3),
                                "id": f"s{i}"} for i in range(self.count)]
        self.train_pairs = enumerate_pairs(self.count, "unordered")


@pytest.fixture()
def random_subjects() -> RandomSubjects:
    data = RandomSubjects()
    data.setup("fit")
    return data


@pytest.fixture()
def tiny_cst(tmp_path) -> CyclicalSelfTraining:
    """CST with 3 stages of 2 epochs, labels at half resolution, a store under ``tmp_path/pl``."""
    torch.manual_seed(0)
    net = CSTFeatureNet(channels=(4, 8, 8, 8, 8, 8), out_channels=4, io_channels=4)
    estimator = cst_pipeline(FeatureConvexEstimator(net, radius=1), warps=2, ice_iterations=2,
                             io=InstanceOptimisation(iterations=2))
    return CyclicalSelfTraining(estimator, stages=3, epochs_per_stage=2, loss_crop=1, compute_hd95=False,
                                pseudo_label_dir=str(tmp_path / "pl"), pseudo_label_batch=2)
