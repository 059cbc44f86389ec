"""lipschitzify: MLP, VGG-style, ResNet-style and 1D conv nets become k-Lipschitz, trained 10 steps
and certified; attention refused by name; compile; options and reports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import liptriton
from tests._tolerances import BOUND_SLACK

FAST = {"power_iters_init": 100}  # conv operator states: block steps at init and on switches to eval


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-bn-relu-conv-bn, ``out += identity``, strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, c: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.layer1, self.layer2 = BasicBlock(c, c), BasicBlock(c, 2 * c, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))


def vgg(c: int = 8):
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1),
        nn.BatchNorm2d(c), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * c * 4, 32), nn.ReLU(),
        nn.Dropout(0.2), nn.Linear(32, 4))


def conv1d():
    return nn.Sequential(nn.Conv1d(2, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 8, 3, stride=2, padding=1),
                         nn.SiLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4))


MODELS = {
    "mlp": (mlp, (16,), 1.0, {}),
    "vgg": (vgg, (3, 8, 8), 2.0, FAST),
    "resnet": (ResNet, (3, 8, 8), 1.0, FAST),
    "conv1d": (conv1d, (2, 32), 0.5, FAST),
}


def _train(model: nn.Module, x: torch.Tensor, steps: int = 10, lr: float = 1e-2) -> None:
    y = torch.arange(x.shape[0]) % 4
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", list(MODELS))
def test_lipschitzified_model_trains_and_certifies(name):
    make, shape, k, kwargs = MODELS[name]
    model, x = make(), torch.randn(8, *shape)
    lip = liptriton.lipschitzify(model, k=k, example_input=x, **kwargs)
    _train(lip, x)
    cert = liptriton.certify(lip, x, n_samples=2, power_iters=10, ascent_steps=2)
    assert 0 < cert.lower <= cert.upper <= k * (1 + BOUND_SLACK), str(cert)
    report = lip.lipschitz_report
    assert not report.blockers and report.planned_bound <= k * (1 + 1e-9)
    assert "bjorck" in str(report)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (1x1, strided 3x3, 1x1 x4), ``out += identity``."""

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride, bias=False), nn.BatchNorm2d(4 * width))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.downsample(x)
        return self.relu(out)


class TorchvisionStyleResNet(nn.Module):
    """torchvision's ResNet layout: 7x7/2 stem, overlapping max pool 3/2/1, bottlenecks, global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(Bottleneck(8, 2), Bottleneck(8, 4, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer1(x))
        return self.fc(torch.flatten(x, 1))


def test_torchvision_style_resnet_converts_with_defaults():
    x = torch.randn(2, 3, 16, 16)
    lip = liptriton.lipschitzify(TorchvisionStyleResNet(), example_input=x)
    text = str(lip.lipschitz_report)
    assert "maxpool" in text and "scaled by 1/2" in text and text.count("LipResidual") == 2
    cert = liptriton.certify(lip, x, n_samples=1, power_iters=5, ascent_steps=0)
    assert cert.lower <= cert.upper <= 1 + BOUND_SLACK


def test_inplace_functional_activations_and_differences():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

        def forward(self, x):
            h = F.gelu(self.a(x))
            return torch.cat([h - self.b(h), F.silu(h)], dim=1)

    net = Net()
    lip = liptriton.lipschitzify(net, inplace=True, strict=False)
    assert hasattr(net.a, "parametrizations") and lip.a is net.a  # the model's own layers
    text = str(lip.lipschitz_report)
    assert "gelu" in text and "silu" in text and "ConvexSum" in text
    cert = liptriton.certify(lip, torch.randn(4, 6), n_samples=1, power_iters=5, ascent_steps=0)
    assert cert.lower <= cert.upper <= 1 + BOUND_SLACK


def test_bjorck_mlp_lower_bound_is_tight():
    x = torch.randn(8, 16)
    lip = liptriton.lipschitzify(nn.Sequential(nn.Linear(16, 32), liptriton.GroupSort2(), nn.Linear(32, 32),
                                               liptriton.GroupSort2(), nn.Linear(32, 4)))
    _train(lip, x)
    cert = liptriton.certify(lip, x, n_samples=2, power_iters=20, ascent_steps=2)
    assert 0.5 * cert.upper <= cert.lower <= cert.upper <= 1 + BOUND_SLACK


def test_resnet_conversion_report_and_input_untouched():
    model = ResNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lip = liptriton.lipschitzify(model, **FAST)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    text = str(lip.lipschitz_report)
    assert text.count("LipResidual") == 2 and text.count("folded into") == 6
    assert "layer2.downsample.0" in text and "ScaledAdaptiveAvgPool2d" in text
    assert lip.lipschitz_report.layer_k == 1.0


def test_k_is_distributed_over_depth_and_output_scaled_when_needed():
    lip = liptriton.lipschitzify(mlp(), k=8.0)
    assert lip.lipschitz_report.layer_k == pytest.approx(2.0) and lip.lipschitz_report.output_scale == 1.0
    # k < 1 with a residual: the identity path keeps more than k ** (d / D); the output is rescaled
    res = liptriton.lipschitzify(ResNet(), k=0.5, **FAST)
    rep = res.lipschitz_report
    assert rep.output_scale < 1.0 and rep.planned_bound * rep.output_scale == pytest.approx(0.5)
    cert = liptriton.certify(res, torch.randn(2, 3, 8, 8), n_samples=1, power_iters=5, ascent_steps=0)
    assert cert.upper <= 0.5 * (1 + BOUND_SLACK)


def _attention_model():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            h = self.proj(x)
            return self.fc(self.attn(h, h, h)[0])

    return Attn()


def test_multihead_attention_strict_raises_non_strict_warns():
    with pytest.raises(ValueError, match="attn: MultiheadAttention"):
        liptriton.lipschitzify(_attention_model())
    with pytest.warns(UserWarning, match="attn"):
        lip = liptriton.lipschitzify(_attention_model(), strict=False)
    assert hasattr(lip.proj, "parametrizations")
    cert = liptriton.certify(lip, torch.randn(2, 5, 8), n_samples=1, power_iters=3, ascent_steps=0)
    assert math.isinf(cert.upper) and [n for n, _ in cert.unbounded] == ["attn"]


def test_untraceable_model_is_converted_module_by_module_and_reported():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) + x if x.sum() > 0 else x

    with pytest.raises(ValueError, match="could not trace"):
        liptriton.lipschitzify(Branchy())
    with pytest.warns(UserWarning, match="not covered"):
        lip = liptriton.lipschitzify(Branchy(), strict=False)
    assert hasattr(lip.fc, "parametrizations")


@pytest.mark.parametrize("method", ["spectral", "frobenius", "householder", "aol"])
def test_other_methods(method):
    lip = liptriton.lipschitzify(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)), method=method)
    cert = liptriton.certify(lip, torch.randn(4, 8), n_samples=1, power_iters=5, ascent_steps=0)
    assert cert.upper <= 1 + BOUND_SLACK


def test_options():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU(), nn.AvgPool2d(3, 1, 1),
                        nn.MaxPool2d(3, 1, 1), nn.Dropout(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(2, 2, 6, 6)
    for opts in ({}, {"pooling": "l2", "activations": "groupsort", "dropout": "remove"},
                 {"pooling": "keep", "activations": "keep", "maxpool": "keep", "batchnorm": "remove"}):
        lip = liptriton.lipschitzify(net, example_input=x, **opts, **FAST)
        cert = liptriton.certify(lip, x, n_samples=1, power_iters=5, ascent_steps=0)
        assert cert.lower <= cert.upper <= 1 + BOUND_SLACK, (opts, str(cert))
    with pytest.raises(ValueError, match="BatchNorm2d"):
        liptriton.lipschitzify(net, batchnorm="error")
    with pytest.raises(ValueError, match="pooling must be one of"):
        liptriton.lipschitzify(net, pooling="max")
    with pytest.raises(ValueError, match="k must be"):
        liptriton.lipschitzify(net, k=0.0)


@pytest.mark.parametrize("backend", [
    # Dynamo + AOT autograd with fullgraph (what graph breaks depend on); Inductor's CPU codegen
    # of this network takes minutes on a loaded 2-core machine, so it runs on GPU only.
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.gpu),
])
def test_compiled_resnet_trains_without_graph_breaks(backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    device = "cuda" if backend == "inductor" else "cpu"
    x = torch.randn(4, 3, 8, 8, device=device)
    lip = liptriton.lipschitzify(ResNet(c=4).to(device), example_input=x, **FAST)
    compiled = torch.compile(lip, fullgraph=True, backend=backend)
    opt = torch.optim.SGD(lip.parameters(), 1e-2)
    y = torch.arange(4, device=device) % 4
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lip.parameters() if p.requires_grad)
