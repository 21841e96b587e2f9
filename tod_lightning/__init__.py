"""tod_lightning: a PyTorch Lightning framework for tiny object detection."""

__version__ = "0.1.0"
