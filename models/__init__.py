"""Networks, data, training and evaluation (PyTorch). Submodules import torch; this package itself does not."""
