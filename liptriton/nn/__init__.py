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
