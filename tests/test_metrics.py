"""Certified-robustness metrics: formulas, and a PGD l2 attack that never beats a certified radius."""

from __future__ import annotations

import math

import pytest
import torch
from _tolerances import assert_close

import liptriton
from liptriton import metrics


def test_radius_formulas():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 1.0, 4.0]])
    labels = torch.tensor([0, 1, 0])
    r = metrics.certified_radius(logits, labels, lipschitz_constant=2.0)
    assert_close(r, torch.tensor([2.0, 0.5, -3.0]) / (math.sqrt(2) * 2.0))
    r_disjoint = metrics.certified_radius(logits, labels, lipschitz_constant=2.0, disjoint_neurons=True)
    assert_close(r_disjoint, torch.tensor([2.0, 0.5, -3.0]) / 4.0)
    # Without labels: the radius of the predicted class.
    assert_close(metrics.certified_radius(logits), torch.tensor([2.0, 0.5, 3.0]) / math.sqrt(2))
    # One-hot labels are class indices.
    assert_close(metrics.certified_radius(logits, torch.eye(3)[labels]),
                 metrics.certified_radius(logits, labels))
    # Binary: |f| / L, signed by the label ({0, 1} or {-1, 1}).
    f = torch.tensor([[1.5], [-0.5], [0.2]])
    assert_close(metrics.certified_radius(f, torch.tensor([1, 0, 0]), 0.5), torch.tensor([3.0, 1.0, -0.4]))
    assert_close(metrics.certified_radius(f.flatten(), torch.tensor([1, -1, -1]), 0.5),
                 torch.tensor([3.0, 1.0, -0.4]))
    assert_close(metrics.certified_radius(f), torch.tensor([1.5, 0.5, 0.2]))


def test_accuracy_and_acr():
    logits = torch.tensor([[3.0, 1.0], [0.0, 0.5], [1.0, 2.0], [2.0, 2.0]])
    labels = torch.tensor([0, 1, 0, 0])
    radii = torch.tensor([2.0, 0.5, -1.0, 0.0]) / math.sqrt(2)
    eps = [0.0, 0.3, 1.0, 2.0]
    expected = torch.tensor([(radii > e).float().mean().item() for e in eps])
    assert_close(metrics.certified_robust_accuracy(logits, labels, eps), expected)
    assert_close(metrics.certified_robust_accuracy(logits, labels, torch.tensor(eps)), expected)
    single = metrics.certified_robust_accuracy(logits, labels, 0.3)
    assert single.dim() == 0
    assert_close(single, expected[1])
    assert_close(metrics.average_certified_radius(logits, labels), radii.clamp_min(0).mean())


def test_bad_input():
    with pytest.raises(ValueError, match="certified_radius: lipschitz_constant must be > 0"):
        metrics.certified_radius(torch.randn(3, 2), lipschitz_constant=0.0)
    with pytest.raises(ValueError, match="certified_radius: logits must have shape"):
        metrics.certified_radius(torch.randn(0, 2))
    with pytest.raises(ValueError, match="certified_radius: labels must be class indices"):
        metrics.certified_radius(torch.randn(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="certified_robust_accuracy: eps"):
        metrics.certified_robust_accuracy(torch.randn(3, 2), torch.zeros(3, dtype=torch.long),
                                          torch.zeros(2, 2))


# ---------------------------------------------------------------- PGD on a trained Lipschitz model

def _lipschitz_linear(n_in: int, n_out: int) -> torch.nn.Module:
    # An exactly orthogonal weight (torch's parametrization; the certificate below uses the
    # measured spectral norms anyway, so any 1-Lipschitz parametrization would do).
    return torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(n_in, n_out))


class _GroupSort2(torch.nn.Module):
    def forward(self, x):
        return torch.sort(x.unflatten(-1, (-1, 2)), dim=-1).values.flatten(-2)


def _toy_data(n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    centers = torch.tensor([[0.0, 2.0], [1.8, -1.0], [-1.8, -1.0]])
    y = torch.arange(n) % 3
    return centers[y] + 0.6 * torch.randn(n, 2), y


def _pgd_l2(model, x, label, eps, steps=40):
    """Minimize the margin f_label - max_other within ||delta|| <= eps (per-sample eps)."""
    eps = eps.reshape(-1, 1)
    delta = torch.randn_like(x)
    delta = delta / delta.norm(dim=1, keepdim=True) * eps * 0.1
    step = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        own = logits.gather(1, label[:, None]).squeeze(1)
        other = logits.scatter(1, label[:, None], -math.inf).amax(dim=1)
        (grad,) = torch.autograd.grad((own - other).sum(), delta)
        with torch.no_grad():
            delta = delta - step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            norm = delta.norm(dim=1, keepdim=True)
            delta = delta * torch.clamp(eps / norm.clamp_min(1e-12), max=1.0)
    with torch.no_grad():
        return model(x + delta).argmax(dim=1)


@pytest.mark.slow
def test_pgd_never_flips_a_prediction_within_its_certified_radius():
    x, y = _toy_data()
    model = torch.nn.Sequential(_lipschitz_linear(2, 16), _GroupSort2(), _lipschitz_linear(16, 16),
                                _GroupSort2(), _lipschitz_linear(16, 3))
    loss_fn = liptriton.HKRMulticlassLoss(alpha=0.95, min_margin=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
        # The true Lipschitz bound of the trained model: product of the layers' spectral norms (SVD).
        lip = math.prod(float(torch.linalg.matrix_norm(m.weight, 2)) for m in model if hasattr(m, "weight"))
    assert lip <= 1.0 + 1e-3
    pred = logits.argmax(dim=1)
    assert (pred == y).float().mean() > 0.8, "the toy model did not train"
    radius = metrics.certified_radius(logits, lipschitz_constant=lip)
    assert (radius > 0.05).float().mean() > 0.5, "too few certified samples to make the test meaningful"
    with torch.nn.utils.parametrize.cached():
        attacked = _pgd_l2(model, x, pred, radius * 0.999)
        # The attack is not toothless: well beyond the radius it flips predictions.
        attacked_far = _pgd_l2(model, x, pred, radius * 3.0 + 0.5)
    assert torch.equal(attacked, pred), "PGD changed a prediction inside its certified radius"
    assert (attacked_far != pred).float().mean() > 0.2
    # The metrics agree with the radii.
    correct_radius = metrics.certified_radius(logits, y, lipschitz_constant=lip)
    assert_close(metrics.certified_robust_accuracy(logits, y, 0.0, lipschitz_constant=lip),
                 (pred == y).float().mean())
    assert_close(metrics.average_certified_radius(logits, y, lipschitz_constant=lip),
                 correct_radius.clamp_min(0).mean())
