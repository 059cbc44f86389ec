"""liptriton: make any PyTorch model k-Lipschitz, train it fast, prove the bound, ship it.

Examples:
    >>> import torch, liptriton
    >>> layer = liptriton.bjorck(torch.nn.Linear(16, 8))
    >>> bool(torch.linalg.matrix_norm(layer.weight.detach(), 2) <= 1.001)
    True
"""

from liptriton import config, ops, parametrizations
from liptriton._version import __version__
from liptriton.parametrizations import aol, bjorck, frobenius, householder, spectral

__all__ = ["config", "ops", "parametrizations", "aol", "bjorck", "frobenius", "householder", "spectral",
           "__version__"]

from liptriton.nn.activations import FullSort, GroupSort, GroupSort2, HouseHolder, LPReLU, MaxMin  # noqa: E402

__all__ += ["MaxMin", "GroupSort", "GroupSort2", "FullSort", "LPReLU", "HouseHolder"]

from liptriton import distributed, metrics  # noqa: E402
from liptriton.functional.losses import process_labels_for_multi_gpu  # noqa: E402
from liptriton.nn.losses import (  # noqa: E402
    HingeMarginLoss,
    HingeMulticlassLoss,
    HKRLoss,
    HKRMulticlassLoss,
    KRLoss,
    KRMulticlassLoss,
    NegKRLoss,
)
from liptriton.nn.losses_multiclass import (  # noqa: E402
    CategoricalHingeLoss,
    LseHKRMulticlassLoss,
    SoftHKRMulticlassLoss,
    TauBCEWithLogitsLoss,
    TauCrossEntropyLoss,
)

__all__ += ["distributed", "metrics", "process_labels_for_multi_gpu", "KRLoss", "NegKRLoss", "HingeMarginLoss",
            "HKRLoss", "KRMulticlassLoss", "HingeMulticlassLoss", "HKRMulticlassLoss", "SoftHKRMulticlassLoss",
            "LseHKRMulticlassLoss", "TauCrossEntropyLoss", "TauBCEWithLogitsLoss", "CategoricalHingeLoss"]

from liptriton import nn  # noqa: E402
from liptriton.nn import (  # noqa: E402
    BatchCentering,
    BatchCentering2d,
    BatchLipNorm,
    FrobeniusConv2d,
    FrobeniusLinear,
    InvertibleDownSampling,
    InvertibleUpSampling,
    LayerCentering,
    LayerCentering2d,
    LipResidual,
    LipschitzModule,
    PadConv1d,
    PadConv2d,
    ScaleBiasLayer,
    ScaledAdaptativeL2NormPool2d,
    ScaledAdaptiveAvgPool2d,
    ScaledAvgPool2d,
    ScaledL2NormPool2d,
    Sequential,
    SpectralConv1d,
    SpectralConv2d,
    SpectralConvTranspose2d,
    SpectralLinear,
    vanilla_model,
)

__all__ += [  # noqa: RUF022  (grouped by kind, as deel-torchlip's API reference)
            "nn", "LipschitzModule", "Sequential", "LipResidual", "vanilla_model", "SpectralLinear", "FrobeniusLinear",
            "SpectralConv1d", "SpectralConv2d", "FrobeniusConv2d", "SpectralConvTranspose2d",
            "PadConv1d", "PadConv2d", "ScaledAvgPool2d", "ScaledL2NormPool2d", "ScaledAdaptiveAvgPool2d",
            "ScaledAdaptativeL2NormPool2d", "InvertibleDownSampling", "InvertibleUpSampling", "LayerCentering",
            "LayerCentering2d", "BatchCentering", "BatchCentering2d", "BatchLipNorm", "ScaleBiasLayer"]

from liptriton.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from liptriton.export import bake, load, load_metadata, save  # noqa: E402
from liptriton.program import save_program  # noqa: E402

__all__ += ["bake", "save", "save_program", "load", "load_metadata", "save_checkpoint", "load_checkpoint"]

from liptriton.certify import Certificate, CertificateError, certify  # noqa: E402
from liptriton.convert import ConversionReport, lipschitzify  # noqa: E402

__all__ += ["lipschitzify", "ConversionReport", "certify", "Certificate", "CertificateError"]

from liptriton import utils  # noqa: E402

__all__ += ["utils"]

from liptriton import init, normalizers  # noqa: E402
from liptriton.nn.scaling import ScaledLipschitzModule, SharedLipFactory  # noqa: E402

__all__ += ["init", "normalizers", "ScaledLipschitzModule", "SharedLipFactory"]
