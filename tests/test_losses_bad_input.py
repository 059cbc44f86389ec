"""Losses on bad input: class indices out of range and NaN labels are errors that name the loss
and say what was expected; NaN / inf logits give a non-finite loss (documented: GradScaler
relies on it) and leave the soft-HKR running mean usable; a one-class KR batch gives
deel-torchlip's documented value."""

from __future__ import annotations

import math

import pytest
import torch
from deel import torchlip

import liptriton
import liptriton.functional as LF

C = 10
MULTICLASS = {
    "KRMulticlassLoss": lambda: liptriton.KRMulticlassLoss(),
    "HingeMulticlassLoss": lambda: liptriton.HingeMulticlassLoss(),
    "HKRMulticlassLoss": lambda: liptriton.HKRMulticlassLoss(alpha=0.9),
    "SoftHKRMulticlassLoss": lambda: liptriton.SoftHKRMulticlassLoss(),
    "LseHKRMulticlassLoss": lambda: liptriton.LseHKRMulticlassLoss(alpha=0.5),
    "CategoricalHingeLoss": lambda: liptriton.CategoricalHingeLoss(),
}
BINARY = {
    "KRLoss": lambda: liptriton.KRLoss(),
    "HingeMarginLoss": lambda: liptriton.HingeMarginLoss(),
    "HKRLoss": lambda: liptriton.HKRLoss(alpha=0.5),
}


@pytest.mark.parametrize("name", list(MULTICLASS))
@pytest.mark.parametrize("bad", [C + 3, -1])
def test_class_index_out_of_range_is_an_error(name, bad):
    x = torch.randn(4, C)
    labels = torch.tensor([1, 2, bad, 4])
    with pytest.raises(ValueError, match=rf"class index {bad}, outside \[0, {C}\).*expected integer class indices"):
        MULTICLASS[name]()(x, labels)
    MULTICLASS[name]()(x, torch.tensor([0, 2, C - 1, 4]))  # the edges are fine


def test_functional_names_itself():
    with pytest.raises(ValueError, match="^hkr_multiclass_loss: target holds class index 13"):
        LF.hkr_multiclass_loss(torch.randn(3, C), torch.tensor([0, 13, 2]), alpha=0.5)


@pytest.mark.parametrize("name", list(MULTICLASS) + list(BINARY))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_labels_are_an_error(name, value):
    if name in BINARY:
        x, t = torch.randn(6, 1), (torch.rand(6, 1) > 0.5).float()
        make = BINARY[name]
    else:
        x, t = torch.randn(6, C), torch.nn.functional.one_hot(torch.arange(6), C).float()
        make = MULTICLASS[name]
    t[2, 0] = value
    with pytest.raises(ValueError, match="1 NaN / inf labels; expected finite labels"):
        make()(x, t)


@pytest.mark.parametrize("name", list(MULTICLASS) + list(BINARY))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_give_a_non_finite_loss(name, value):
    """Documented: not an error (GradScaler needs to see it). NaN in, NaN out; inf in, a
    non-finite loss or the finite limit."""
    if name in BINARY:
        x, t, make = torch.randn(6, 1), (torch.arange(6) % 2).reshape(6, 1).float(), BINARY[name]
    else:
        x, t, make = torch.randn(6, C), torch.arange(6), MULTICLASS[name]
    loss_fn = make()
    assert torch.isfinite(loss_fn(x, t))
    x[1, 0] = value
    out = loss_fn(x, t)
    if math.isnan(value):
        assert torch.isnan(out), out
    elif torch.isfinite(out):  # the loss does not grow with that logit (a hinge it satisfies): the limit
        x[1, 0] = 1e30 if value > 0 else -1e30
        torch.testing.assert_close(out, make()(x, t))


def test_soft_hkr_running_mean_survives_a_nan_batch():
    loss_fn = liptriton.SoftHKRMulticlassLoss()
    labels = torch.arange(6)
    loss_fn(torch.randn(6, C), labels)
    before = loss_fn.current_mean.clone()
    bad = torch.randn(6, C)
    bad[0, 0] = float("nan")
    assert not torch.isfinite(loss_fn(bad, labels))
    assert torch.equal(loss_fn.current_mean, before)
    assert torch.isfinite(loss_fn(torch.randn(6, C), labels))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_one_class_batch_gives_deel_torchlips_value(alpha):
    x = torch.randn(8, 1)
    for labels in (torch.ones(8, 1), torch.zeros(8, 1)):
        ours = liptriton.HKRLoss(alpha=alpha)(x, labels)
        theirs = torchlip.HKRLoss(alpha=alpha)(x, labels)
        torch.testing.assert_close(ours, theirs)
        assert torch.isfinite(ours)
