"""Empirical Lipschitz constant of a model at sample points (deel-torchlip's ``evaluate_lip_const``).

Three estimates, each a lower bound of the true constant (they look at finitely many points):
"jacobian_norm" (largest spectral norm of the Jacobian at the samples), "noise_norm" (largest
ratio ``||f(x + e) - f(x)|| / ||e||`` over random perturbations) and "attack" (the same ratio
after sign-gradient ascent on the perturbation). For a proven upper bound use
:func:`liptriton.certify`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["evaluate_lip_const"]


def _jacobian_norm(model: nn.Module, x: Tensor, disjoint_neurons: bool = False, **kwargs) -> float:
    """Largest spectral norm of the Jacobian at the samples (per output neuron if ``disjoint_neurons``).

    The model is in eval mode, where samples do not interact: one forward of the batch, then one
    backward per output entry gives that row of every sample's Jacobian (deel-torchlip uses
    ``vmap(jacrev)``, which refuses layers that update buffers in eval, e.g. BatchCentering).
    """
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    n, xdim, out_shape = x.shape[0], x[0].numel(), y.shape[1:]
    flat = y.reshape(n, -1)
    rows = [torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])[0].reshape(n, xdim)
            for i in range(flat.shape[1])]
    jac = torch.stack(rows, dim=1).reshape(n, *out_shape, xdim)  # (N, *out, xdim)
    if disjoint_neurons:  # deel-torchlip's grouping: the output neurons along the last output axis
        jac = jac.movedim(len(out_shape), 0).reshape(out_shape[-1] * n, -1, xdim)
    else:
        jac = jac.reshape(n, -1, xdim)
    return float(torch.linalg.matrix_norm(jac.detach(), ord=2).max())


def _ratio(ref: Tensor, pred: Tensor, noise: Tensor, disjoint_neurons: bool, per_neuron_dim: int) -> Tensor:
    diff = ref - pred
    if not disjoint_neurons:
        num = torch.linalg.vector_norm(diff.reshape(diff.shape[0], -1), dim=1)
    elif per_neuron_dim == -1:  # noise_norm's grouping (deel-torchlip's): neurons along the last axis
        num = torch.linalg.vector_norm(diff.reshape(diff.shape[0], -1, diff.shape[-1]), dim=1).amax(dim=-1)
    else:  # attack's grouping: neurons along axis 1
        num = torch.linalg.vector_norm(diff.reshape(diff.shape[0], diff.shape[1], -1), dim=-1).amax(dim=1)
    return num / torch.linalg.vector_norm(noise.reshape(ref.shape[0], -1), dim=1)


def _noise_norm(model: nn.Module, x: Tensor, disjoint_neurons: bool = False, num_noisy_samples: int = 10,
                epsilon_noise: float = 1.0, **kwargs) -> float:
    """Largest output/input change ratio over ``num_noisy_samples`` Gaussian perturbations per sample."""
    with torch.no_grad():
        pred = model(x)
        ratios = []
        for _ in range(num_noisy_samples):
            noise = epsilon_noise * torch.randn_like(x) * torch.rand(1).to(x.device)
            ratios.append(_ratio(pred, model(x + noise), noise, disjoint_neurons, -1))
        return float(torch.cat(ratios).max())


def _attack_once(model: nn.Module, x: Tensor, disjoint_neurons: bool, step_size: float,
                 num_iterations: int) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        ref = model(x).detach()
    noise = (torch.randn_like(x) * torch.rand(1).to(x.device)).detach()
    for _ in range(num_iterations):
        noise = noise.requires_grad_(True)
        loss = _ratio(ref, model(x + noise), noise, disjoint_neurons, 1).mean()
        (grad,) = torch.autograd.grad(loss, noise)
        noise = (noise + step_size * grad.sign()).detach()
    with torch.no_grad():
        return noise, _ratio(ref, model(x + noise), noise, disjoint_neurons, 1)


def _attack(model: nn.Module, x: Tensor, disjoint_neurons: bool = False, num_iterations: int = 100,
            step_size: float = 1e-2, double_attack: bool = False, **kwargs) -> float:
    """Largest ratio after ``num_iterations`` sign-gradient steps on the perturbation (twice if
    ``double_attack``, the second from the first's end point)."""
    noise, ratio = _attack_once(model, x, disjoint_neurons, step_size, num_iterations)
    if double_attack:
        _, ratio2 = _attack_once(model, x + noise, disjoint_neurons, step_size, num_iterations)
        ratio = torch.cat([ratio, ratio2])
    return float(ratio.max())


_METHODS = {"jacobian_norm": _jacobian_norm, "noise_norm": _noise_norm, "attack": _attack}


def evaluate_lip_const(model: nn.Module, x: Tensor | None = None,
                       evaluation_type: str | list[str] = "jacobian_norm", disjoint_neurons: bool = False,
                       input_shape: tuple[int, ...] | None = None, expected_value: float | None = None,
                       **kwargs) -> float:
    """Estimate ``model``'s l2 Lipschitz constant around the samples ``x`` (a lower bound).

    As deel-torchlip 1.0.5's ``utils.evaluate_lip_const``: same methods, arguments and results.
    The model is evaluated in eval mode (its mode is restored afterwards).

    Args:
        model: the model.
        x: a batch of inputs; None: ``torch.randn(input_shape)``.
        evaluation_type: "jacobian_norm", "noise_norm", "attack", "all" (the three) or a list of
            them; with several, the largest estimate.
        disjoint_neurons: treat each output neuron as a separate function (the largest of their
            constants, as for a margin certificate with disjoint neurons).
        input_shape: the batch shape drawn when ``x`` is None.
        expected_value: if given, an AssertionError is raised when an estimate exceeds it.
        **kwargs: ``num_noisy_samples`` (10) and ``epsilon_noise`` (1.0) for "noise_norm";
            ``num_iterations`` (100), ``step_size`` (1e-2) and ``double_attack`` (False) for
            "attack"; ``seed``: draw the random inputs and perturbations from a generator seeded
            with it (the global generator's state is left as it was); other keywords are ignored,
            as deel-torchlip does.

    Returns:
        The estimate (a float).

    Raises:
        ValueError: an unknown ``evaluation_type``, or neither ``x`` nor ``input_shape``.
        AssertionError: the estimate is above ``expected_value``.

    Examples:
        >>> import liptriton
        >>> net = liptriton.bjorck(torch.nn.Linear(6, 6))
        >>> round(evaluate_lip_const(net, torch.randn(2, 6), "all", seed=0), 3)
        1.0
    """
    seed = kwargs.pop("seed", None)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return evaluate_lip_const(model, x, evaluation_type, disjoint_neurons, input_shape,
                                      expected_value, **kwargs)
    if evaluation_type == "all":
        evaluation_type = list(_METHODS)
    if isinstance(evaluation_type, (list, tuple)):
        values = [evaluate_lip_const(model, x, t, disjoint_neurons, input_shape, expected_value, **kwargs)
                  for t in evaluation_type]
        return float(torch.tensor(values).max())  # float32, as deel-torchlip
    if evaluation_type not in _METHODS:
        raise ValueError(f"evaluate_lip_const: evaluation_type must be one of {list(_METHODS)}, 'all' or a "
                         f"list of them, got {evaluation_type!r}")
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    if x is None:
        if input_shape is None:
            raise ValueError("evaluate_lip_const: x is None, so input_shape is needed to draw random inputs; "
                             "got neither")
        x = torch.randn(input_shape)
    x = x.to(device)
    was_training = model.training
    model.eval()
    try:
        value = _METHODS[evaluation_type](model, x, disjoint_neurons, **kwargs)
    finally:
        model.train(was_training)
    if expected_value is not None:
        assert value <= expected_value, (f"Empirical lipschitz constant {value} is higher than expected "
                                         f"value {expected_value}")
    return value
