"""Module rules: what liptriton knows about each module type, in one registry keyed by class.

certify (constants), lipschitzify (conversions), export and ``vanilla_model`` (plain forms),
torch.fx tracing (leaves) and export's scaling absorption (homogeneity) all read ``RULES``
through the functions below; see :mod:`liptriton.rules.registry` for the fields and for how to
add a rule (one entry in ``torch_rules.py`` or ``liptriton_rules.py``).

Examples:
    >>> import torch, liptriton
    >>> module_constant(torch.nn.Sigmoid(), None, nominal=False)
    (0.25, "max |f'|")
    >>> module_constant(liptriton.GroupSort2(k_coef_lip=2.0), None, nominal=False)
    (2.0, 'k_coef_lip')
"""

from liptriton.rules.liptriton_rules import LIPTRITON_RULES
from liptriton.rules.registry import (
    KEEP,
    OPTIONAL_RULES,
    RULES,
    ModuleRule,
    const,
    convert_module,
    find,
    is_constrained,
    is_homogeneous,
    is_leaf,
    module_constant,
    plain_form,
)
from liptriton.rules.torch_rules import OPTIONAL_TORCH_RULES, TORCH_RULES

RULES.update(TORCH_RULES)
RULES.update(LIPTRITON_RULES)
OPTIONAL_RULES.update(OPTIONAL_TORCH_RULES)

__all__ = ["KEEP", "OPTIONAL_RULES", "RULES", "ModuleRule", "const", "convert_module", "find", "is_constrained",
           "is_homogeneous", "is_leaf", "module_constant", "plain_form"]
