"""Losses: values vs deel-torchlip and vs independent float64 formulas, gradients, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _tolerances import assert_close

import liptriton
import liptriton.functional as LF

torchlip = pytest.importorskip("deel.torchlip")

N, C = 12, 5
REDUCTIONS = ["none", "mean", "sum", "auto"]


# ---------------------------------------------------------------- independent float64 formulas (numpy)

def _np_reduce(per_sample: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def np_kr(x, y):
    """Per-sample KR: each column's positives weigh N/n_pos, negatives -N/n_neg; mean over columns."""
    n, c = x.shape
    out = np.zeros(n)
    for j in range(c):
        pos = y[:, j] > 0
        for i in range(n):
            if pos[i]:
                out[i] += x[i, j] * n / pos.sum()
            else:
                out[i] -= x[i, j] * n / (~pos).sum()
    return out / c


def np_hinge(x, y, m, multiclass=False):
    s = np.where(y > 0, 1.0, -1.0)
    h = np.maximum(0.0, m / 2 - s * x)
    if multiclass:
        h = np.where(y > 0, h * (x.shape[1] - 1), h)
    return h.mean(axis=1)


def np_lse(x, y, alpha, temperature, penalty, m):
    z = x * temperature
    out = []
    for zi, yi in zip(z, y):
        pos = zi[yi > 0].sum()
        neg = zi[yi <= 0]
        t = math.log(len(neg)) / (m * penalty / 2)
        lse = np.log(np.exp(t * neg).sum()) / t
        kr = lse - pos
        hinge = max(0.0, m / 2 - pos) + max(0.0, m / 2 + lse)
        out.append((1 - alpha) * kr + alpha * hinge)
    return np.array(out)


def np_categorical(x, y, m):
    out = []
    for xi, yi in zip(x, y):
        pos = xi[yi > 0].sum()
        neg = max(np.max(xi[yi > 0] - m), np.max(xi[yi <= 0]))
        out.append(max(0.0, m - (pos - neg)))
    return np.array(out)


def np_soft_hkr(x, y, alpha, m, alpha_mean, temperature, mean0):
    new_mean = alpha_mean * mean0 + (1 - alpha_mean) * np.abs(x).mean()
    temp = np.clip(temperature * m / np.clip(new_mean, m, 20000), 0.005, 250)
    out = []
    for xi, yi in zip(x, y):
        neg = yi <= 0
        e = np.exp(temp * (xi[neg] - xi[neg].max()))
        w = np.ones_like(xi)
        w[neg] = e / e.sum()
        s = np.where(yi > 0, xi, -xi)
        out.append((w * ((1 - alpha) * -s + alpha * np.maximum(0, m / 2 - s))).sum())
    return np.array(out)


def np_tau_ce(x, y, tau):
    z = tau * x
    log_softmax = z - z.max(axis=1, keepdims=True)
    log_softmax = log_softmax - np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
    return -(y * log_softmax).sum(axis=1) / tau


def np_tau_bce(x, y, tau):
    z, t = tau * x, (y > 0).astype(np.float64)
    return (np.logaddexp(0.0, z) - z * t) / tau  # elementwise, as torch's BCEWithLogitsLoss


# ---------------------------------------------------------------- data

def _binary_labels(encoding: str, shape=(N, 1)) -> torch.Tensor:
    y = (torch.arange(shape[0]).reshape(-1, 1).expand(shape) * 7 + torch.arange(shape[1])) % 3 == 0
    y = y.float()
    return 2 * y - 1 if encoding == "pm1" else y


def _multiclass_labels(encoding: str, n=N, c=C) -> torch.Tensor:
    idx = torch.randint(0, c, (n,))
    idx[:c] = torch.arange(c)  # every class present
    onehot = torch.nn.functional.one_hot(idx, c).float()
    return {"onehot": onehot, "pm1": 2 * onehot - 1, "indices": idx}[encoding]


def _onehot(y: torch.Tensor, c: int = C) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, c).float() if y.dim() == 1 else y


# (id, liptriton factory, torchlip factory, float64 formula or None, kind)
BINARY = [
    ("KRLoss", lambda r: liptriton.KRLoss(reduction=r), lambda r: torchlip.KRLoss(reduction=r),
     lambda x, y: np_kr(x, y)),
    ("NegKRLoss", lambda r: liptriton.NegKRLoss(reduction=r), lambda r: torchlip.NegKRLoss(reduction=r),
     lambda x, y: -np_kr(x, y)),
    ("HingeMarginLoss", lambda r: liptriton.HingeMarginLoss(0.7, reduction=r),
     lambda r: torchlip.HingeMarginLoss(0.7, reduction=r), lambda x, y: np_hinge(x, y, 0.7)),
    ("HKRLoss", lambda r: liptriton.HKRLoss(0.8, 1.3, reduction=r),
     lambda r: torchlip.HKRLoss(0.8, 1.3, reduction=r),
     lambda x, y: 0.8 * np_hinge(x, y, 1.3) - 0.2 * np_kr(x, y)),
    ("HKRLoss-a0", lambda r: liptriton.HKRLoss(0.0, reduction=r),
     lambda r: torchlip.HKRLoss(0.0, reduction=r),
     lambda x, y: -np_kr(x, y)),
    ("HKRLoss-a1", lambda r: liptriton.HKRLoss(1.0, reduction=r),
     lambda r: torchlip.HKRLoss(1.0, reduction=r),
     lambda x, y: np_hinge(x, y, 1.0)),
    ("TauBCEWithLogitsLoss", lambda r: liptriton.TauBCEWithLogitsLoss(3.0, reduction=r),
     lambda r: torchlip.TauBCEWithLogitsLoss(3.0, reduction=r), lambda x, y: np_tau_bce(x, y, 3.0)),
]

MULTICLASS = [
    ("KRMulticlassLoss", lambda r: liptriton.KRMulticlassLoss(reduction=r),
     lambda r: torchlip.KRMulticlassLoss(reduction=r), lambda x, y: np_kr(x, y)),
    ("HingeMulticlassLoss", lambda r: liptriton.HingeMulticlassLoss(0.6, reduction=r),
     lambda r: torchlip.HingeMulticlassLoss(0.6, reduction=r), lambda x, y: np_hinge(x, y, 0.6, True)),
    ("HKRMulticlassLoss", lambda r: liptriton.HKRMulticlassLoss(0.9, 0.6, reduction=r),
     lambda r: torchlip.HKRMulticlassLoss(0.9, 0.6, reduction=r),
     lambda x, y: 0.9 * np_hinge(x, y, 0.6, True) - 0.1 * np_kr(x, y)),
    ("LseHKRMulticlassLoss", lambda r: liptriton.LseHKRMulticlassLoss(0.7, 2.0, 1.5, 0.8, reduction=r),
     lambda r: torchlip.LseHKRMulticlassLoss(0.7, 2.0, 1.5, 0.8, reduction=r),
     lambda x, y: np_lse(x, y, 0.7, 2.0, 1.5, 0.8)),
    ("SoftHKRMulticlassLoss", lambda r: liptriton.SoftHKRMulticlassLoss(0.8, 0.5, 0.9, 2.0, reduction=r),
     lambda r: torchlip.SoftHKRMulticlassLoss(0.8, 0.5, 0.9, 2.0, reduction=r),
     lambda x, y: np_soft_hkr(x, y, 0.8, 0.5, 0.9, 2.0, 0.5)),
    ("CategoricalHingeLoss", lambda r: liptriton.CategoricalHingeLoss(0.9, reduction=r),
     lambda r: torchlip.CategoricalHingeLoss(0.9, reduction=r), lambda x, y: np_categorical(x, y, 0.9)),
    ("TauCrossEntropyLoss", lambda r: liptriton.TauCrossEntropyLoss(4.0, reduction=r),
     lambda r: torchlip.TauCrossEntropyLoss(4.0, reduction=r), lambda x, y: np_tau_ce(x, y, 4.0)),
]


def _ids(cases):
    return [c[0] for c in cases]


def _theirs_reduction(name: str, reduction: str) -> str:
    # deel-torchlip's Tau losses are torch's, which do not know 'auto'.
    return "mean" if reduction == "auto" and name.startswith("Tau") else reduction


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("encoding", ["01", "pm1"])
@pytest.mark.parametrize("shape", [(N, 1), (N, 3)], ids=["binary", "multilabel"])
@pytest.mark.parametrize("case", BINARY, ids=_ids(BINARY))
def test_binary_losses_match_torchlip_and_formula(case, shape, encoding, reduction):
    name, ours, theirs, formula = case
    x = torch.randn(shape)
    y = _binary_labels(encoding, shape)
    ref = theirs(_theirs_reduction(name, reduction))(x, y)
    assert_close(ours(reduction)(x, y), ref.to(torch.float32))
    if formula is not None:
        x64 = x.double()
        expected = torch.as_tensor(_np_reduce(formula(x64.numpy(), y.double().numpy()), reduction))
        assert_close(ours(reduction)(x64, y), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("encoding", ["onehot", "pm1", "indices"])
@pytest.mark.parametrize("case", MULTICLASS, ids=_ids(MULTICLASS))
def test_multiclass_losses_match_torchlip_and_formula(case, encoding, reduction):
    name, ours, theirs, formula = case
    x = torch.randn(N, C)
    y = _multiclass_labels(encoding)
    y_theirs = y if (encoding != "indices" or name == "TauCrossEntropyLoss") else _onehot(y)
    mod, ref_mod = ours(reduction), theirs(_theirs_reduction(name, reduction))
    for step in range(2):  # twice: SoftHKR's running mean moves
        xs = x * (1 + step)
        assert_close(mod(xs, y), ref_mod(xs, y_theirs).to(torch.float32), msg=f"step {step}")
    if formula is not None:
        x64 = x.double()
        expected = torch.as_tensor(_np_reduce(formula(x64.numpy(), _onehot(y).double().numpy()), reduction))
        assert_close(ours(reduction)(x64, y), expected)


@pytest.mark.parametrize("multiclass", [False, True], ids=["binary", "multiclass"])
def test_multi_gpu_labels_match_torchlip(multiclass):
    x = torch.randn(N, C if multiclass else 1)
    y = _multiclass_labels("onehot") if multiclass else _binary_labels("01")
    processed = liptriton.process_labels_for_multi_gpu(y)
    assert_close(processed, torchlip.functional.process_labels_for_multi_gpu(y))
    for ours, theirs in [(liptriton.KRLoss(multi_gpu=True), torchlip.KRLoss(multi_gpu=True)),
                         (liptriton.HKRLoss(0.5, multi_gpu=True), torchlip.HKRLoss(0.5, multi_gpu=True)),
                         (liptriton.HKRMulticlassLoss(0.5, multi_gpu=True),
                          torchlip.HKRMulticlassLoss(0.5, multi_gpu=True))]:
        assert_close(ours(x, processed), theirs(x, processed))
    # On one process the multi-GPU recipe equals the plain loss.
    assert_close(liptriton.HKRLoss(0.5, multi_gpu=True)(x, processed), liptriton.HKRLoss(0.5)(x, y))


def test_functionals_are_per_sample_and_match_torchlip():
    x, y = torch.randn(N, C), _multiclass_labels("onehot")
    pairs = [(LF.kr_loss(x, y), torchlip.functional.kr_loss(x, y)),
             (LF.neg_kr_loss(x, y), torchlip.functional.neg_kr_loss(x, y)),
             (LF.hinge_margin_loss(x, y, 0.5), torchlip.functional.hinge_margin_loss(x, y, 0.5)),
             (LF.hkr_loss(x, y, 0.3), torchlip.functional.hkr_loss(x, y, 0.3)),
             (LF.hinge_multiclass_loss(x, y), torchlip.functional.hinge_multiclass_loss(x, y)),
             (LF.hkr_multiclass_loss(x, y, 0.9, 2.0),
              torchlip.functional.hkr_multiclass_loss(x, y, 0.9, 2.0))]
    for ours, theirs in pairs:
        assert ours.shape == (N,)
        assert_close(ours, theirs)
    assert_close(LF.hkr_loss(x, y, 0.3, reduction="mean"), torchlip.functional.hkr_loss(x, y, 0.3).mean())


GRAD_CASES = [
    ("kr", lambda x, y: LF.kr_loss(x, y, reduction="sum")),
    ("hinge", lambda x, y: LF.hinge_margin_loss(x, y, 1.0)),
    ("hkr", lambda x, y: LF.hkr_loss(x, y, 0.6, 0.8)),
    ("hinge_mc", lambda x, y: LF.hinge_multiclass_loss(x, y, 0.8)),
    ("hkr_mc", lambda x, y: LF.hkr_multiclass_loss(x, y, 0.6, 0.8, reduction="mean")),
    ("categorical", lambda x, y: LF.categorical_hinge_loss(x, y, 0.8)),
    ("lse", lambda x, y: LF.lse_hkr_multiclass_loss(x, y, 0.6, 1.5, 1.0, 0.8)),
    # alpha_mean=1: the temperature (a stop-gradient statistic of |x|) does not move with x.
    ("tau_ce", lambda x, y: liptriton.TauCrossEntropyLoss(3.0)(x, y)),
    ("tau_bce", lambda x, y: liptriton.TauBCEWithLogitsLoss(3.0)(x, (y[:, None] == torch.arange(4)).double())),
    ("soft", lambda x, y: LF.soft_hkr_multiclass_loss(x, y, torch.ones(1), 0.6, 0.8, alpha_mean=1.0)[0]),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=_ids(GRAD_CASES))
def test_gradcheck_float64(case):
    _, fn = case
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    assert torch.autograd.gradcheck(lambda x: fn(x, y), (x,))


# ---------------------------------------------------------------- bad input

def test_bad_input_errors():
    x = torch.randn(N, C)
    with pytest.raises(ValueError, match="hkr_multiclass_loss: target of shape"):
        LF.hkr_multiclass_loss(x, torch.zeros(N, C + 1), 0.5)
    with pytest.raises(ValueError, match="kr_loss: target of shape"):
        LF.kr_loss(x, torch.zeros(N).float())  # float (N,) is not class indices
    with pytest.raises(TypeError, match="hinge_margin_loss: target must be real"):
        LF.hinge_margin_loss(x, torch.zeros(N, C, dtype=torch.complex64))
    with pytest.raises(TypeError, match="kr_loss: input must be a floating-point"):
        LF.kr_loss(torch.ones(N, 1, dtype=torch.long), torch.ones(N, 1))
    with pytest.raises(ValueError, match="hkr_loss: alpha must be in"):
        LF.hkr_loss(x, torch.zeros(N, C), 1.5)
    with pytest.raises(ValueError, match="HKRLoss: alpha must be in"):
        liptriton.HKRLoss(-0.1)
    with pytest.raises(ValueError, match="empty batch"):
        liptriton.HKRMulticlassLoss(0.5)(torch.zeros(0, C), torch.zeros(0, C))
    with pytest.raises(ValueError, match="reduction must be one of"):
        liptriton.KRLoss(reduction="max")
    with pytest.raises(ValueError, match="lse_hkr_multiclass_loss: needs at least 2 classes"):
        LF.lse_hkr_multiclass_loss(torch.randn(3, 1), torch.ones(3, 1))
    with pytest.raises(ValueError, match="true_values"):
        liptriton.KRLoss(true_values=(0, 1))


def test_alpha_above_one_is_deprecated_and_mapped():
    for cls in (liptriton.HKRLoss, liptriton.HKRMulticlassLoss, liptriton.SoftHKRMulticlassLoss,
                liptriton.LseHKRMulticlassLoss):
        with pytest.warns(FutureWarning, match="alpha / \\(1 \\+ alpha\\)"):
            loss = cls(alpha=3.0)
        assert loss.alpha == pytest.approx(0.75)
    x, y = torch.randn(N, C), _multiclass_labels("onehot")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(liptriton.HKRMulticlassLoss(3.0)(x, y), torchlip.HKRMulticlassLoss(3.0)(x, y))


def test_single_class_batch_kr_is_documented_value():
    x = torch.randn(N, 1, requires_grad=True)
    for labels, sign in [(torch.ones(N, 1), 1.0), (torch.zeros(N, 1), -1.0)]:
        loss = liptriton.KRLoss()(x, labels)
        assert_close(loss, sign * x.mean())  # only the present class's expectation
        assert_close(loss, torchlip.KRLoss()(x, labels))
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all()


def test_no_silent_nan_on_degenerate_multiclass_labels():
    x = torch.randn(4, 2, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])
    # C = 2 in the LSE loss: deel-torchlip gives NaN (0/0); here the limit (the other logit).
    loss = LF.lse_hkr_multiclass_loss(x, y, alpha=0.0, reduction="none")
    other = x.gather(1, (1 - y).unsqueeze(1)).squeeze(1)
    own = x.gather(1, y.unsqueeze(1)).squeeze(1)
    assert_close(loss, other - own)
    # A row whose labels are all positive (no negative class): finite loss and gradient everywhere.
    x3 = torch.randn(3, 4, requires_grad=True)
    y3 = torch.tensor([[1.0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    for fn in (lambda: LF.lse_hkr_multiclass_loss(x3, y3, 0.5, reduction="sum"),
               lambda: LF.soft_hkr_multiclass_loss(x3, y3, torch.ones(1), 0.5, reduction="sum")[0],
               lambda: LF.categorical_hinge_loss(x3, y3, reduction="sum"),
               lambda: LF.hkr_multiclass_loss(x3, y3, 0.5, reduction="sum")):
        value = fn()
        (g,) = torch.autograd.grad(value, x3)
        assert torch.isfinite(value) and torch.isfinite(g).all()


def test_soft_hkr_running_mean_is_a_buffer():
    loss = liptriton.SoftHKRMulticlassLoss(min_margin=0.5)
    assert "current_mean" in loss.state_dict()
    before = loss.current_mean.clone()
    loss(torch.randn(N, C) * 10, _multiclass_labels("indices"))
    assert not torch.equal(before, loss.current_mean)
    loss.eval()
    frozen = loss.current_mean.clone()
    loss(torch.randn(N, C), _multiclass_labels("indices"))
    assert torch.equal(frozen, loss.current_mean)
    other = liptriton.SoftHKRMulticlassLoss(min_margin=0.5)
    other.load_state_dict(loss.state_dict())
    assert torch.equal(other.current_mean, frozen)


# ---------------------------------------------------------------- torch.compile

import torch._dynamo.testing  # noqa: E402

COMPILE_CASES = [
    ("KRLoss", lambda: liptriton.KRLoss(), 1), ("NegKRLoss", lambda: liptriton.NegKRLoss(), 1),
    ("HingeMarginLoss", lambda: liptriton.HingeMarginLoss(), 1),
    ("HKRLoss", lambda: liptriton.HKRLoss(0.9), 1),
    ("KRMulticlassLoss", lambda: liptriton.KRMulticlassLoss(), C),
    ("HingeMulticlassLoss", lambda: liptriton.HingeMulticlassLoss(), C),
    ("HKRMulticlassLoss", lambda: liptriton.HKRMulticlassLoss(0.9), C),
    ("SoftHKRMulticlassLoss", lambda: liptriton.SoftHKRMulticlassLoss(0.9), C),
    ("LseHKRMulticlassLoss", lambda: liptriton.LseHKRMulticlassLoss(0.9), C),
    ("CategoricalHingeLoss", lambda: liptriton.CategoricalHingeLoss(), C),
    ("TauCrossEntropyLoss", lambda: liptriton.TauCrossEntropyLoss(5.0), C),
    ("TauBCEWithLogitsLoss", lambda: liptriton.TauBCEWithLogitsLoss(5.0), 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", COMPILE_CASES, ids=_ids(COMPILE_CASES))
def test_compiled_training_step_fullgraph_no_recompile(case):
    _, make_loss, classes = case
    model = torch.nn.Linear(4, classes)
    loss_fn, eager_loss_fn = make_loss(), make_loss()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()

    def step(x, y):
        return loss_fn(model(x), y)

    compiled = torch.compile(step, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for n in (8, 12):
        x = torch.randn(n, 4)
        y = torch.arange(n) % classes if classes > 1 else (torch.arange(n) % 2).float().unsqueeze(1)
        loss = compiled(x, y)
        (grad,) = torch.autograd.grad(loss, model.weight)
        eager = eager_loss_fn(model(x), y)
        (eager_grad,) = torch.autograd.grad(eager, model.weight)
        assert_close(loss, eager)
        assert_close(grad, eager_grad)
        frames.append(counter.frame_count)
    # fullgraph=True already fails on a graph break; the second batch size must not recompile (the
    # first compile may count twice when Dynamo restarts its analysis to specialize Python floats).
    assert frames[1] == frames[0], f"recompiled for a new batch size: {frames}"


@pytest.mark.slow
def test_compiled_functional_inductor_no_recompile_across_batch_sizes():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with liptriton.config.compile_functionals(True):
        for n in (8, 12, 20):
            x = torch.randn(n, C, requires_grad=True)
            y = torch.arange(n) % C
            loss = LF.hkr_multiclass_loss(x, y, 0.9, reduction="mean")
            (grad,) = torch.autograd.grad(loss, x)
            with liptriton.config.compile_functionals(False):
                eager = LF.hkr_multiclass_loss(x, y, 0.9, reduction="mean")
            (eager_grad,) = torch.autograd.grad(eager, x)
            assert_close(loss, eager)
            assert_close(grad, eager_grad)
    assert counters["stats"]["unique_graphs"] == 1
