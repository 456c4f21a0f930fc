"""regframe: a PyTorch Lightning framework for learning-based 3D medical image registration."""

__version__ = "0.1.0"
