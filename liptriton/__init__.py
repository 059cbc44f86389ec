"""liptriton: make any PyTorch model k-Lipschitz, train it fast, prove the bound, ship it.

Example:
    >>> import torch, liptriton
    >>> layer = liptriton.bjorck(torch.nn.Linear(16, 8))
    >>> bool(torch.linalg.matrix_norm(layer.weight.detach(), 2) <= 1.001)
    True
"""

from liptriton import config, ops

__version__ = "0.1.0"

__all__ = ["config", "ops", "__version__"]

from liptriton.nn.activations import FullSort, GroupSort, GroupSort2, HouseHolder, LPReLU, MaxMin  # noqa: E402

__all__ += ["MaxMin", "GroupSort", "GroupSort2", "FullSort", "LPReLU", "HouseHolder"]
