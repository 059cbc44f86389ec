"""Lipschitz layers of deel-torchlip, drop-in (dense in :mod:`liptriton.nn.linear`, convolutions in
:mod:`liptriton.nn.conv`)."""

from liptriton.nn.conv import (
    FrobeniusConv2d,
    PadConv1d,
    PadConv2d,
    SpectralConv1d,
    SpectralConv2d,
    SpectralConvTranspose2d,
)
from liptriton.nn.linear import FrobeniusLinear, SpectralLinear

__all__ = [
    "FrobeniusConv2d",
    "FrobeniusLinear",
    "PadConv1d",
    "PadConv2d",
    "SpectralConv1d",
    "SpectralConv2d",
    "SpectralConvTranspose2d",
    "SpectralLinear",
]
