"""deel-torchlip's training recipes run with only the import changed.

Each recipe is written once against a module named ``torchlip`` (the patterns of deel-torchlip's
documentation and tutorials: its layers, activations, losses, pooling, residual and
normalization layers, a few epochs on small synthetic data, ``evaluate_lip_const``, then
``vanilla_model`` / ``vanilla_export``) and run with ``from deel import torchlip`` and with
``import liptriton as torchlip``. liptriton's run must train, stay 1-Lipschitz and export a plain
model with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import liptriton

deel = pytest.importorskip("deel.torchlip")


def _blobs(n: int, dim: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g) * 2
    return centers[y] + 0.5 * torch.randn(n, dim, generator=g), y


def _images(n: int, classes: int, seed: int, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, size, size, generator=g) * 0.3
    for c in range(classes):
        r = 2 * c % (size - 2)
        x[y == c, :, r:r + 2, r:r + 2] += 0.7
    return x, y


def wasserstein_recipe(torchlip):
    """KR critic between two Gaussians: dense layers, FullSort, FrobeniusLinear output, KRLoss."""
    x, y = _blobs(64, 4, 2, 0)
    target = (y.float() * 2 - 1).view(-1, 1)
    model = torchlip.Sequential(torchlip.SpectralLinear(4, 16), torchlip.FullSort(),
                                torchlip.SpectralLinear(16, 16), torchlip.FullSort(),
                                torchlip.FrobeniusLinear(16, 1))
    loss_fn = torchlip.KRLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        for xb, tb in zip(x.split(16), target.split(16)):
            opt.zero_grad()
            loss = loss_fn(model(xb), tb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model, x, losses


def binary_hkr_recipe(torchlip):
    """Binary image classifier: conv layers, GroupSort2, L2-norm pooling, HKRLoss, hinge accuracy."""
    x, y = _images(48, 2, 1)
    target = (y.float() * 2 - 1).view(-1, 1)
    model = nn.Sequential(
        torchlip.SpectralConv2d(1, 8, (3, 3), padding=1), torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(kernel_size=(2, 2)),
        torchlip.SpectralConv2d(8, 8, (3, 3), padding=1, padding_mode="reflect"), torchlip.GroupSort2(),
        torchlip.ScaledAvgPool2d(kernel_size=(2, 2)), nn.Flatten(),
        torchlip.SpectralLinear(32, 16), torchlip.MaxMin(), torchlip.FrobeniusLinear(32, 1))
    loss_fn = torchlip.HKRLoss(alpha=0.9, min_margin=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(2):
        for xb, tb in zip(x.split(16), target.split(16)):
            opt.zero_grad()
            loss = loss_fn(model(xb), tb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    hinge = torchlip.HingeMarginLoss(min_margin=0.5)(model(x), target)
    assert torch.isfinite(hinge)
    return model, x, losses


def multiclass_recipe(torchlip):
    """Multiclass: InvertibleDownSampling, LPReLU, HouseHolder, adaptive pooling, disjoint-neuron
    output, HKR multiclass then soft-HKR then tau cross-entropy losses (one epoch each)."""
    x, y = _images(60, 3, 2)
    onehot = nn.functional.one_hot(y, 3).float()
    model = torchlip.Sequential(
        torchlip.SpectralConv2d(1, 4, 3, padding=1), torchlip.LPReLU(4),
        torchlip.InvertibleDownSampling(2), torchlip.SpectralConv2d(16, 8, 3, padding=1),
        torchlip.HouseHolder(8), torchlip.ScaledAdaptativeL2NormPool2d((1, 1)), nn.Flatten(),
        torchlip.SpectralLinear(8, 16), torchlip.GroupSort(4),
        torchlip.FrobeniusLinear(16, 3, disjoint_neurons=True))
    losses = []
    for loss_fn, labels in ((torchlip.HKRMulticlassLoss(alpha=0.95, min_margin=0.5), onehot),
                            (torchlip.SoftHKRMulticlassLoss(alpha=0.9, min_margin=0.5), onehot),
                            (torchlip.TauCrossEntropyLoss(tau=5.0), y)):
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for xb, tb in zip(x.split(20), labels.split(20)):
            opt.zero_grad()
            loss = loss_fn(model(xb), tb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model, x, losses


class _ResBlock(nn.Module):
    def __init__(self, torchlip, c: int) -> None:
        super().__init__()
        self.conv = torchlip.SpectralConv2d(c, c, 3, padding=1)
        self.act = torchlip.GroupSort2()
        self.merge = torchlip.LipResidual()

    def forward(self, x):
        return self.merge(x, self.act(self.conv(x)))


def residual_recipe(torchlip):
    """Residual network with centering normalizations, upsampling and a KR multiclass loss."""
    x, y = _images(40, 2, 3)
    onehot = nn.functional.one_hot(y, 2).float()
    model = nn.Sequential(
        torchlip.SpectralConv2d(1, 4, 3, padding=1), torchlip.BatchCentering(4), torchlip.GroupSort2(),
        _ResBlock(torchlip, 4), torchlip.LayerCentering(4), _ResBlock(torchlip, 4),
        torchlip.InvertibleUpSampling(2), torchlip.SpectralConv2d(1, 2, 3, stride=2, padding=1),
        torchlip.ScaledAdaptiveAvgPool2d((1, 1)), nn.Flatten(), torchlip.SpectralLinear(2, 2))
    loss_fn = torchlip.KRMulticlassLoss()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(2):
        for xb, tb in zip(x.split(20), onehot.split(20)):
            opt.zero_grad()
            loss = loss_fn(model(xb), tb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model, x, losses


RECIPES = {"wasserstein": wasserstein_recipe, "binary_hkr": binary_hkr_recipe,
           "multiclass": multiclass_recipe, "residual": residual_recipe}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_unchanged(name):
    recipe = RECIPES[name]
    recipe(deel)  # the recipe is deel-torchlip code (it runs there)
    torch.manual_seed(0)
    model, x, losses = recipe(liptriton)  # only the import changed
    assert all(torch.isfinite(torch.tensor(losses)))
    model.eval()
    lip = liptriton.utils.evaluate_lip_const(model, x[:8], evaluation_type="all", num_iterations=10, seed=0)
    assert 1e-3 < lip <= 1.0 + 1e-3
    with torch.no_grad():
        expected = model(x)
    plain = liptriton.vanilla_model(model, in_place=False)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), expected, rtol=1e-4, atol=1e-5)
