"""Data modules: Learn2Reg json data sets, paired fixed/moving folders, and the built-in phantom."""

from data_modules.base import RegistrationDataModule, enumerate_pairs
from data_modules.learn2reg import Learn2RegDataModule
from regframe.learn2reg import Learn2RegSpec, load_dataset_json, subject_id
from data_modules.paired import PairedDataModule
from data_modules.phantom import PhantomDataModule
from regframe.phantom import write_phantom_dataset

__all__ = [
    "Learn2RegDataModule",
    "Learn2RegSpec",
    "PairedDataModule",
    "PhantomDataModule",
    "RegistrationDataModule",
    "enumerate_pairs",
    "load_dataset_json",
    "subject_id",
    "write_phantom_dataset",
]
