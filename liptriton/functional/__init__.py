"""Activations and losses as functions: compile-friendly, compiled on first use where it pays.

See :func:`liptriton.config.compile_functionals` for the switch.
"""

__all__: list[str] = []

from liptriton.functional.activations import (  # noqa: E402
    full_sort,
    group_sort,
    group_sort_2,
    householder_activation,
    lipschitz_prelu,
    max_min,
)

__all__ += ["max_min", "group_sort", "group_sort_2", "full_sort", "lipschitz_prelu", "householder_activation"]

from liptriton.functional.losses import (  # noqa: E402
    apply_reduction,
    hinge_margin_loss,
    hkr_loss,
    kr_loss,
    kr_loss_multi_gpu,
    kr_loss_standard,
    neg_kr_loss,
    process_labels_for_multi_gpu,
)
from liptriton.functional.losses_multiclass import (  # noqa: E402
    categorical_hinge_loss,
    hinge_multiclass_loss,
    hkr_multiclass_loss,
    lse_hkr_multiclass_loss,
    soft_hkr_multiclass_loss,
)

__all__ += ["apply_reduction", "kr_loss", "kr_loss_standard", "kr_loss_multi_gpu", "neg_kr_loss", "hinge_margin_loss", "hkr_loss",
            "process_labels_for_multi_gpu", "hinge_multiclass_loss", "hkr_multiclass_loss",
            "categorical_hinge_loss", "lse_hkr_multiclass_loss", "soft_hkr_multiclass_loss"]

from liptriton.functional.padding import SymmetricPad, symmetric_pad  # noqa: E402

__all__ += ["SymmetricPad", "symmetric_pad"]
