"""nn.Modules: layers, containers, pooling, activations and losses."""

__all__: list[str] = []

from liptriton.nn.activations import FullSort, GroupSort, GroupSort2, HouseHolder, LPReLU, MaxMin  # noqa: E402

__all__ += ["MaxMin", "GroupSort", "GroupSort2", "FullSort", "LPReLU", "HouseHolder"]

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

_LOSSES = ["KRLoss", "NegKRLoss", "HingeMarginLoss", "HKRLoss", "KRMulticlassLoss", "HingeMulticlassLoss",
           "HKRMulticlassLoss", "SoftHKRMulticlassLoss", "LseHKRMulticlassLoss", "TauCrossEntropyLoss",
           "TauBCEWithLogitsLoss", "CategoricalHingeLoss"]
__all__ += _LOSSES

from liptriton.nn.containers import LipResidual, LipschitzModule, Sequential, vanilla_model  # noqa: E402
from liptriton.nn.layers import (  # noqa: E402
    FrobeniusConv2d,
    FrobeniusLinear,
    PadConv1d,
    PadConv2d,
    SpectralConv1d,
    SpectralConv2d,
    SpectralConvTranspose2d,
    SpectralLinear,
)
from liptriton.nn.normalization import (  # noqa: E402
    BatchCentering,
    BatchCentering2d,
    BatchLipNorm,
    LayerCentering,
    LayerCentering2d,
    ScaleBiasLayer,
)
from liptriton.nn.pooling import (  # noqa: E402
    InvertibleDownSampling,
    InvertibleUpSampling,
    ScaledAdaptativeL2NormPool2d,
    ScaledAdaptiveAvgPool2d,
    ScaledAvgPool2d,
    ScaledL2NormPool2d,
)

__all__ += [  # noqa: RUF022  (grouped by kind, as deel-torchlip's API reference)
            "LipschitzModule", "Sequential", "LipResidual", "vanilla_model", "SpectralLinear", "FrobeniusLinear",
            "SpectralConv1d", "SpectralConv2d", "FrobeniusConv2d", "SpectralConvTranspose2d", "PadConv1d",
            "PadConv2d", "ScaledAvgPool2d", "ScaledL2NormPool2d", "ScaledAdaptiveAvgPool2d",
            "ScaledAdaptativeL2NormPool2d", "InvertibleDownSampling", "InvertibleUpSampling", "LayerCentering",
            "LayerCentering2d", "BatchCentering", "BatchCentering2d", "BatchLipNorm", "ScaleBiasLayer"]

from liptriton.nn.scaling import ScaledLipschitzModule, SharedLipFactory  # noqa: E402

__all__ += ["ScaledLipschitzModule", "SharedLipFactory"]
