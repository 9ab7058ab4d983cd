"""sdmae: self-supervised pre-training (MAE, SD-MAE) of Vision Transformers on histopathology images."""
__version__ = "0.1.0"
