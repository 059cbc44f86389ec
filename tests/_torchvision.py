"""torchvision's models on the CPU torch wheel of this suite, for the tests that need real architectures.

torchvision 0.28.0 registers fake (meta) kernels for its C++ operators when it is imported; with
the CPU-only torch 2.13.0 wheel those operators do not exist and the registration raises
(``operator torchvision::nms does not exist``). The models themselves need none of them, so
:func:`models` imports ``torchvision.models`` with ``torch.library.register_fake`` made a no-op
for the duration of the import (and restored after). This module imports neither liptriton nor
anything from the tests: subprocesses that must run without liptriton import it too.
"""

from __future__ import annotations

import types

import torch


def models() -> types.ModuleType:
    """Return ``torchvision.models``, imported with fake-kernel registration disabled.

    Returns:
        The ``torchvision.models`` module.

    Examples:
        >>> net = models().resnet18(num_classes=10)
    """
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
        import torchvision.models
    finally:
        torch.library.register_fake = register_fake
    return torchvision.models
