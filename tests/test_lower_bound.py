"""certify's measured lower bound (liptriton._lower) is a true lower bound and reaches the top
singular value of the Jacobian at its starting points, on both of its paths (the exact top pair
from one pullback per output, power iteration for wide outputs) and through its fallbacks (no
forward-mode AD, no double backward). References: float64 SVD of the weight, of the Jacobian
from torch.autograd.functional.jacobian, and certify's proven upper bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import liptriton
from liptriton._lower import jacobian_lower_bound


def _jacobian_norm(net: nn.Module, z: torch.Tensor) -> float:
    """||J(z)||_2 of one sample (float64 SVD of the dense Jacobian)."""
    jac = torch.autograd.functional.jacobian(lambda s: net(s.unsqueeze(0)).flatten(), z)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, z.numel()), 2))


def _check_found(net: nn.Module, lower: float, found: dict) -> None:
    """The reported value is ||J(z) v|| (dense float64 Jacobian) or the secant at the point found."""
    z, v = found["z"], found["v"]
    assert float(v.norm()) == pytest.approx(1.0, rel=1e-12)
    jac = torch.autograd.functional.jacobian(lambda s: net(s.unsqueeze(0)).flatten(), z)
    jv = float((jac.reshape(-1, z.numel()) @ v.flatten()).norm())
    h = 1e-3 * (float(z.norm()) + 1.0)
    with torch.no_grad():
        secant = float((net((z + h * v).unsqueeze(0)) - net(z.unsqueeze(0))).norm()) / h
    assert min(abs(lower - jv), abs(lower - secant)) <= 1e-9 * lower


@pytest.mark.parametrize("shape", [(6, 9), (100, 5), (3, 40)], ids=["exact-path", "power-path", "wide-input"])
def test_linear_model_reaches_its_spectral_norm_from_below(shape):
    out_f, in_f = shape
    lin = nn.Linear(in_f, out_f).double().eval()
    x = torch.randn(3, in_f, dtype=torch.float64)
    found: dict = {}
    lower, note = jacobian_lower_bound(lin, x, power_iters=20, found=found)
    exact = float(torch.linalg.matrix_norm(lin.weight.detach(), 2))
    assert lower <= exact * (1 + 1e-12)
    assert lower >= exact * (1 - 1e-3)
    assert "sample" in note
    _check_found(lin, lower, found)


def test_float32_search_reports_float64_values_below_the_norm():
    """The search in float32, the reported value recomputed in float64: never above the exact norm."""
    lin = nn.Linear(30, 8).double().eval()
    fast = nn.Linear(30, 8).eval()
    fast.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    lower, _ = jacobian_lower_bound(fast, torch.randn(4, 30), exact_model=lin)
    exact = float(torch.linalg.matrix_norm(lin.weight.detach(), 2))
    assert exact * (1 - 1e-6) <= lower <= exact * (1 + 1e-12)


def _relu_net() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 6))


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
def test_mlp_reaches_the_jacobian_norm_at_its_starting_points(act):
    """At least the largest ||J(x_i)|| over the starting points (what any number of power steps
    from them can reach), at most the product of the layers' norms (a Lipschitz constant)."""
    net = nn.Sequential(nn.Linear(12, 40), act(), nn.Linear(40, 40), act(), nn.Linear(40, 6)).double().eval()
    x = torch.randn(4, 12, dtype=torch.float64)
    found: dict = {}
    lower, _ = jacobian_lower_bound(net, x, n_samples=3, found=found)
    at_points = max(_jacobian_norm(net, x[i]) for i in range(3))
    product = 1.0
    for layer in net[::2]:
        product *= float(torch.linalg.matrix_norm(layer.weight.detach(), 2))
    assert at_points * (1 - 1e-9) <= lower <= product
    _check_found(net, lower, found)


def test_wide_output_power_path_reaches_the_jacobian_norm():
    """Outputs above 4 x power_iters: power iteration (jvp and pullback), converged on a small input."""
    net = nn.Sequential(nn.Linear(5, 30), nn.ReLU(), nn.Linear(30, 120)).double().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    lower, _ = jacobian_lower_bound(net, x, n_samples=2, power_iters=25, ascent_steps=0)
    at_points = max(_jacobian_norm(net, x[i]) for i in range(2))
    assert at_points * (1 - 1e-6) <= lower <= at_points * (1 + 1e-12)


class _NoForwardAD(torch.autograd.Function):
    """sinh with no forward-mode rule and a backward that refuses to be differentiated."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sinh(x)

    @staticmethod
    def backward(ctx, g):
        if torch.is_grad_enabled():  # create_graph=True: a double backward
            raise NotImplementedError("_NoForwardAD: no double backward")
        (x,) = ctx.saved_tensors
        return g * torch.cosh(x)


class _Opaque(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, out)

    def forward(self, x):
        return self.b(_NoForwardAD.apply(0.1 * self.a(x)))


@pytest.mark.parametrize("out", [3, 90], ids=["exact-path", "power-path-secants"])
def test_fallbacks_still_give_a_true_lower_bound(out):
    """No forward-mode AD (secants) and no double backward (no ascent): still below ||J||'s max
    over a ball that holds every point visited, and the note says the ascent was skipped."""
    net = _Opaque(out).double().eval()
    x = 0.1 * torch.randn(2, 4, dtype=torch.float64)
    lower, note = jacobian_lower_bound(net, x, n_samples=2, power_iters=8)
    # |sinh'| = cosh <= cosh(0.1 * ||a||_2 * |x| + 0.1 |bias|) on the points visited (no ascent:
    # the starting points and secant steps h = 1e-3 (|x| + 1) around them)
    a, b = (float(torch.linalg.matrix_norm(m.weight.detach(), 2)) for m in (net.a, net.b))
    reach = float(x.norm(dim=1).max()) * 1.01 + 2e-3
    pre = 0.1 * (a * reach + float(net.a.bias.detach().abs().max()) * 8 ** 0.5)
    assert 0 < lower <= 0.1 * a * b * float(torch.cosh(torch.tensor(pre)))
    assert "no gradient ascent" in note
    assert lower >= 0.9 * max(_jacobian_norm(net, x[i]) for i in range(2))


def test_conv_net_lower_bound_below_certified_upper_and_above_the_jacobian_at_the_data():
    """A small lipschitzified conv net through certify: lower <= upper, and lower >= the exact
    ||J(x_i)|| at the starting points (float64 dense Jacobian)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    lip = liptriton.lipschitzify(net).eval()
    x = torch.randn(3, 3, 8, 8)
    cert = liptriton.certify(lip, x, n_samples=2)
    plain = liptriton.vanilla_model(lip, in_place=False).double().eval()
    at_points = max(_jacobian_norm(plain, x[i].double()) for i in range(2))
    assert at_points * (1 - 1e-6) <= cert.lower <= cert.upper


class _Raise(torch.autograd.Function):
    """g * cosh(x) with no backward: the derivative of _SinhOnce's backward."""

    @staticmethod
    def forward(ctx, g, x):
        return g * torch.cosh(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("_Raise: no second derivative")


class _SinhOnce(torch.autograd.Function):
    """sinh with a forward-mode rule and a backward that has no backward itself."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return torch.sinh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _Raise.apply(g, x)

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * torch.cosh(x)


def test_model_without_double_backward_under_no_grad_keeps_its_estimate():
    """A backward that cannot be differentiated (an error only once reached) stops the ascent, not
    the search; called under torch.no_grad, the search still measures (it enables grad itself)."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3)).double().eval()
    net[1].forward = _SinhOnce.apply
    x = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        lower, note = jacobian_lower_bound(net, x, n_samples=2, power_iters=8)
    assert "no gradient ascent" in note
    at_points = max(_jacobian_norm(net, x[i]) for i in range(2))
    # the secant may pass ||J(x_i)|| (cosh grows), never the constant on the ball it spans
    a, b = (float(torch.linalg.matrix_norm(m.weight.detach(), 2)) for m in (net[0], net[2]))
    reach = float(x.norm(dim=1).max()) * 1.01 + 2e-3
    pre = a * reach + float(net[0].bias.detach().norm())
    assert at_points * (1 - 1e-9) <= lower <= a * b * float(torch.cosh(torch.tensor(pre)))
