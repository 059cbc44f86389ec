"""Convolution layers with every padding mode deel-torchlip accepts: they construct, stay
k-Lipschitz on the real operator (padding included), and export to a plain layer with the same
outputs. The real operator is built here independently: numpy's padding of an index map (reflect,
symmetric, edge = replicate, wrap = circular), a gather, a valid float64 convolution; its adjoint
comes from autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import liptriton
from tests._measure import OperatorNorm
from tests._tolerances import BOUND_SLACK

MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]
_NUMPY = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap",
          "symmetric": "symmetric"}


def real_operator(layer: torch.nn.Module, spatial: tuple[int, ...]):
    """x -> conv(pad(x)) with the layer's eval weight, float64, no bias."""
    with torch.no_grad():
        weight = layer.eval().weight.detach().double()
    pads = [(p, p) for p in layer.padding]
    n = int(np.prod(spatial))
    index = np.pad(np.arange(n).reshape(spatial), pads, mode=_NUMPY[layer.padding_mode],
                   **({"constant_values": -1} if layer.padding_mode == "zeros" else {}))
    padded_shape = index.shape
    index = torch.from_numpy(index.reshape(-1))
    conv = F.conv1d if len(spatial) == 1 else F.conv2d

    def f(x):
        flat = torch.cat([x.flatten(2), x.new_zeros(*x.shape[:2], 1)], dim=2)  # index -1 -> zero
        xp = flat[..., index].reshape(*x.shape[:2], *padded_shape)
        return conv(xp, weight, None, layer.stride, 0, layer.dilation, layer.groups)

    return f


LAYERS = {
    "SpectralConv2d": lambda mode: liptriton.SpectralConv2d(3, 4, 3, padding=1, padding_mode=mode),
    "SpectralConv2d_pad2_stride2": lambda mode: liptriton.SpectralConv2d(2, 3, 3, stride=2, padding=2,
                                                                         padding_mode=mode),
    "SpectralConv1d": lambda mode: liptriton.SpectralConv1d(2, 3, 5, padding=2, padding_mode=mode),
    "FrobeniusConv2d": lambda mode: liptriton.FrobeniusConv2d(3, 4, 3, padding=1, padding_mode=mode),
    "FrobeniusConv2d_k1_pad1": lambda mode: liptriton.FrobeniusConv2d(2, 2, 1, padding=1, padding_mode=mode),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bound_holds_on_the_padded_operator_and_export_matches(name, mode):
    layer = LAYERS[name](mode)
    spatial = (9,) if "1d" in name else (7, 6)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(3):  # a few optimizer steps: the bound is a property of training too
        loss = -layer.train()(torch.randn(4, layer.in_channels, *spatial)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(2, layer.in_channels, *spatial)
    with torch.no_grad():
        expected = layer.eval()(x)
    norm = OperatorNorm((layer.in_channels, *spatial), first=300)(real_operator(layer, spatial))
    assert norm <= 1 + BOUND_SLACK, f"{name} {mode}: operator norm {norm}"
    if name.startswith("Spectral"):
        assert norm >= 0.98, f"{name} {mode}: the spectral layer should reach its bound, got {norm}"
    with torch.no_grad():  # the real operator plus bias is the layer
        bias = layer.bias.view(-1, *[1] * len(spatial))
        torch.testing.assert_close(real_operator(layer, spatial)(x.double()).float() + bias, expected,
                                   rtol=1e-4, atol=1e-5)
    plain = layer.vanilla_export()
    assert not torch.nn.utils.parametrize.is_parametrized(plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("channels", "length"), [(2, 1), (2, 2), (2, 3), (1, 7), (2, 5), (1, 8)])
def test_spectral_conv1d_on_short_inputs(channels, length):
    # fewer than 8 input entries (channels x length)
    layer = liptriton.SpectralConv1d(channels, 3, 3, padding=1)
    x = torch.randn(4, channels, length)
    out = layer(x)
    assert out.shape == (4, 3, length)
    norm = OperatorNorm((channels, length), first=300)(real_operator(layer, (length,)))
    assert norm <= 1 + BOUND_SLACK


@pytest.mark.parametrize("padding_mode", MODES)
def test_vanilla_export_of_pad_convs(padding_mode):
    for layer, spatial in ((liptriton.PadConv1d(2, 3, 3, padding=1, padding_mode=padding_mode), (8,)),
                           (liptriton.PadConv2d(2, 3, 3, padding=(1, 2), padding_mode=padding_mode), (6, 7))):
        x = torch.randn(2, 2, *spatial)
        with torch.no_grad():
            torch.testing.assert_close(liptriton.vanilla_model(layer, in_place=False)(x), layer(x))


def test_conv_transpose_export_and_refused_geometry():
    up = liptriton.SpectralConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(2, 3, 5, 5)
    up(x)  # the layer learns its input size (the operator norm depends on it), as in training
    with torch.no_grad():
        torch.testing.assert_close(up.vanilla_export()(x), up.eval()(x), rtol=1e-5, atol=1e-6)
    for kwargs in ({"stride": 2, "output_padding": 2}, {"stride": 1, "output_padding": 1}):
        with pytest.raises(ValueError, match="output_padding must be"):
            liptriton.SpectralConvTranspose2d(3, 2, 3, **kwargs)


INVALID = [("SpectralConv2d", {"stride": 0}), ("SpectralConv2d", {"dilation": 0}),
           ("SpectralConv2d", {"padding": -1}),
           ("SpectralConv1d", {"stride": -1}), ("SpectralConv1d", {"kernel_size": 0}),
           ("FrobeniusConv2d", {"stride": 0}), ("FrobeniusConv2d", {"padding": "same", "stride": 2}),
           ("PadConv2d", {"dilation": 0}), ("PadConv1d", {"padding": -2}),
           ("SpectralConvTranspose2d", {"padding": "same"}), ("SpectralConvTranspose2d", {"stride": 0}),
           ("SpectralConvTranspose2d", {"output_padding": 2, "stride": 2})]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors", "ignore:divide by zero")
@pytest.mark.parametrize(("name", "kwargs"), INVALID, ids=[f"{n}-{'-'.join(k)}" for n, k in INVALID])
def test_invalid_geometry_is_refused_at_construction(name, kwargs):
    deel = pytest.importorskip("deel.torchlip")
    args = (3, 4) if "kernel_size" in kwargs else (3, 4, 3)
    x = torch.randn(2, 3, 8) if name.endswith("1d") else torch.randn(2, 3, 8, 8)
    with pytest.raises(Exception):  # deel-torchlip (or torch, at its first forward) refuses it too  # noqa: B017
        getattr(deel.modules, name)(*args, **kwargs)(x)
    with pytest.raises(ValueError, match=name):
        getattr(liptriton, name)(*args, **kwargs)
