"""The weights of a converted model in the user's own architecture (what :func:`liptriton.save` writes).

:mod:`liptriton._absorb` gives every node of the converted graph its factor; here each
Linear / Conv absorbs the factors around it, folded BatchNorms become exact identities (their
bias holding the folded shift where the user's layer has no bias), every tensor of the user's
architecture gets its value, and the result is checked against the converted model.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_leaves

from liptriton._absorb import NotRepresentable, _get, solve
from liptriton._origin import FOLDED, ORIGIN, Origin, instantiate
from liptriton.nn.inserted import ConvexSum, Scaled, ScaledAdaptivePool

__all__ = ["first_input", "is_converted", "qualname", "to_user_architecture", "user_architecture"]

_BN = nn.modules.batchnorm._BatchNorm
_ALTERNATIVE = ("liptriton.save_program(model, 'model.pt2', example_input=x) writes the converted architecture as "
                "a torch.export program (no pickle) that torch.export.load reads without liptriton, with its "
                "certificate")


def _identity_bn(bn: _BN, prefix: str, bias: Tensor | None) -> dict[str, Tensor]:
    """State of ``bn`` that makes it ``x + bias`` in eval mode, exactly (``var + eps == 1`` in its dtype).

    The bias is the one of the layer it was folded into, when the user's layer has none.
    """
    dtype = bn.running_var.dtype if bn.running_var is not None else torch.float32
    var = torch.tensor(1.0 - bn.eps, dtype=dtype)
    for _ in range(8):
        total = var + torch.tensor(bn.eps, dtype=dtype)
        if total == 1:
            break
        var = torch.nextafter(var, torch.tensor(2.0 if total < 1 else 0.0, dtype=dtype))
    n = bn.num_features
    shift = torch.zeros(n, dtype=dtype) if bias is None else bias.to(dtype)
    out = {}
    if bn.weight is not None:
        out[f"{prefix}weight"], out[f"{prefix}bias"] = torch.ones(n, dtype=dtype), shift
    if bn.running_var is not None:
        out[f"{prefix}running_mean"] = torch.zeros(n, dtype=dtype) if bn.weight is not None else -shift
        out[f"{prefix}running_var"] = var.expand(n).clone()
        out[f"{prefix}num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _wrapped_key(key: str, converted: nn.Module) -> str | None:
    """The converted model's key for a user key whose module lipschitzify wrapped (Scaled, ScaledAdaptivePool)."""
    path, _, leaf = key.rpartition(".")
    mod = _get(converted, path) if path else None
    if isinstance(mod, Scaled):
        return f"{path}.module.{leaf}"
    if isinstance(mod, ScaledAdaptivePool):
        return f"{path}.pool.{leaf}"
    return None


def to_user_architecture(baked: fx.GraphModule, origin: Origin) -> tuple[dict[str, Tensor], dict[str, float]]:
    """The state dict of the user's architecture computing ``baked``'s function.

    Args:
        baked: the converted model with its constraints baked in (shapes in ``tensor_meta`` where
            a scaling depends on the input size).
        origin: the architecture lipschitzify was given.

    Returns:
        (state, factor absorbed by each Linear / Conv weight, ``c_in / c_out``).

    Raises:
        NotRepresentable: where the user's architecture cannot compute the function.
    """
    factors, affine, problems = solve(baked, origin.skeleton)
    expected = origin.skeleton.state_dict()
    found = baked.state_dict()
    folded = baked.meta.get(FOLDED, {})
    state: dict[str, Tensor] = {}
    absorbed: dict[str, float] = {}
    used: set[str] = set()
    bn_bias: dict[str, Tensor] = {}
    for target, calls in affine.items():
        mod = baked.get_submodule(target)
        c_in, c_out = factors[calls[0].args[0].name], factors[calls[0].name]
        absorbed[f"{target}.weight"] = c_in / c_out
        state[f"{target}.weight"] = (mod.weight.detach().double() * (c_in / c_out)).to(mod.weight.dtype)
        used.add(f"{target}.weight")
        if mod.bias is not None:
            used.add(f"{target}.bias")
            bias = (mod.bias.detach().double() / c_out).to(mod.bias.dtype)
            if f"{target}.bias" in expected:
                state[f"{target}.bias"] = bias
            elif target in folded:  # the folded BatchNorm's shift goes back into the BatchNorm
                bn_bias[folded[target]] = bias
            else:
                problems.append((target, "the converted layer has a bias that the user's layer lacks"))
    for path, mod in origin.skeleton.named_modules():
        if isinstance(mod, _BN) and not isinstance(_get(baked, path), _BN):
            state.update(_identity_bn(mod, f"{path}." if path else "", bn_bias.get(path)))
    for key in expected:
        if key in state:
            continue
        source = key if key in found else _wrapped_key(key, baked)
        if source is None or source not in found:
            problems.append((key, "no value for this tensor of the user's architecture in the converted model"))
        else:
            state[key] = found[source].detach().clone()
            used.add(source)
    for key in sorted(set(found) - used):
        path = key.rpartition(".")[0]
        inserted = callable(getattr(_get(baked, path), "convex_weights", None))  # ConvexSum, LipResidual
        if not (inserted and _get(origin.skeleton, path) is None):
            problems.append((key, "a tensor of the converted model with no place in the user's architecture"))
    for key, value in list(state.items()):
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            problems.append((key, f"shape {tuple(value.shape)} in the converted model, "
                                  f"{tuple(expected[key].shape)} in the user's architecture"))
    if problems:
        listing = "; ".join(f"{where}: {why}" for where, why in problems)
        raise NotRepresentable(f"the user's architecture ({origin.architecture}) cannot compute the converted "
                               f"model's function: {listing}", problems)
    return {k: state[k].contiguous() for k in expected}, absorbed


def qualname(obj: object) -> str:
    """``module.Class`` of ``obj``'s class (e.g. ``torchvision.models.resnet.ResNet``)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def first_input(example_input) -> Tensor | None:
    """The tensor of a one-input ``example_input`` (a tensor or a 1-tuple), else None."""
    if isinstance(example_input, (tuple, list)):
        return example_input[0] if len(example_input) == 1 else None
    return example_input


def user_architecture(model: nn.Module, baked: nn.Module, layers: list[dict], example_input
                      ) -> tuple[nn.Module, dict[str, Tensor], dict]:
    """What :func:`liptriton.save` writes: the weights in the architecture lipschitzify was given.

    Args:
        model: the model given to save (a converted ``GraphModule`` carries its origin).
        baked: its baked copy.
        layers: the per-layer metadata of the bake (updated: bounds of the written weights).
        example_input: the input given to save (or None).

    Returns:
        (the written model, its state dict, the ``architecture`` metadata). A model without a
        recorded origin is written as it is (its own class and keys).

    Raises:
        ValueError: the user's architecture cannot compute the converted function (names the nodes).
        RuntimeError: the written model computes another function on ``example_input`` (a bug).
    """
    origin = model.meta.get(ORIGIN) if isinstance(model, fx.GraphModule) else None
    if origin is None:
        needs = sorted({qualname(m) for m in baked.modules() if not type(m).__module__.startswith("torch.")}
                       - {qualname(baked)})
        return baked, baked.state_dict(), {
            "class": qualname(baked), "written_for": "the model given to save, its liptriton layers as their "
            "torch layers", "needs": needs}
    if origin.skeleton is None:
        raise ValueError(f"liptriton.save: lipschitzify kept no copy of the architecture of {origin.architecture} "
                         f"({origin.problem}), so the weights cannot be written for it. {_ALTERNATIVE}")
    x = first_input(example_input)
    if x is not None:
        ShapeProp(baked).propagate(x[:1].to(next(iter(baked.parameters()), x).dtype))
    try:
        state, absorbed = to_user_architecture(baked, origin)
    except NotRepresentable as err:
        raise ValueError(f"liptriton.save: {err}. {_ALTERNATIVE}") from None
    plain = instantiate(origin, state)
    if x is not None:
        with torch.no_grad():
            want = tree_leaves(baked(x))
            got = tree_leaves(plain(x.to(next(iter(plain.parameters()), x).dtype)))
        gap = max((float((g - w).abs().max() / w.abs().max().clamp_min(1e-30)) for g, w in zip(got, want)
                   if isinstance(w, Tensor) and w.numel()), default=0.0)
        if len(got) != len(want) or not gap <= 1e-5:
            raise RuntimeError(f"liptriton.save: the user's architecture computes another function than the "
                               f"converted model (relative gap {gap:.3g}): a liptriton bug, please report it")
    for entry in layers:
        factor = absorbed.get(entry["name"], 1.0)
        if factor != 1.0:  # the file's weight is the constrained one times the factor it absorbed
            entry["absorbed_factor"], entry["constraint_bound"] = factor, entry["bound"]
            entry["bound"] *= factor
            if "measured_norm" in entry:
                entry["measured_norm"] *= factor
    bn = [p for p, m in origin.skeleton.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return plain, state, {"class": origin.architecture, "from": "lipschitzify", "written_for": "the model given to lipschitzify, in "
                          "eval mode (its BatchNorms are identities: the conversion folded them)",
                          "batchnorm_identity": bn, "input_shape": None if x is None else list(x.shape[1:])}


def is_converted(model: nn.Module) -> bool:
    """True for a model that lipschitzify converted (or its bake): not the user's own architecture.

    Examples:
        >>> import torch
        >>> is_converted(torch.nn.Linear(2, 2))
        False
    """
    if isinstance(model, fx.GraphModule) and ORIGIN in model.meta:
        return True
    return any(isinstance(m, (ConvexSum, Scaled, ScaledAdaptivePool)) for m in model.modules())
