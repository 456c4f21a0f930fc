"""Data modules: ACDC cardiac ED/ES pairs, Learn2Reg json data sets, paired fixed/moving folders, the built-in phantom, 2D
slices of any of them, and Learn2Reg lung keypoint clouds (the json reader and phantom generator live in :mod:`regframe`)."""

from data_modules.acdc import ACDCDataModule
from data_modules.base import RegistrationDataModule, enumerate_pairs
from data_modules.learn2reg import Learn2RegDataModule
from data_modules.paired import PairedDataModule
from data_modules.phantom import PhantomDataModule
from data_modules.points import PointCloudDataModule
from data_modules.slices import SliceDataModule

__all__ = [
    "ACDCDataModule",
    "Learn2RegDataModule",
    "PairedDataModule",
    "PhantomDataModule",
    "PointCloudDataModule",
    "RegistrationDataModule",
    "SliceDataModule",
    "enumerate_pairs",
]
