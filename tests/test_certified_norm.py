"""The certificate itself, against independent references: float64 eigensolvers for the Gram
matrices, the exact operator matrix of a plain torch convolution for the frequency bound; and
the corner cases a user hits (zero weight, a second constraint, tiny inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import liptriton
import liptriton.bounds.certified_norm as certified_norm
from liptriton.bounds import conv_gram
from liptriton.bounds.certified_divisor import certified_sigma
from liptriton.bounds.certified_norm import certify_top_eigenvalue, lanczos_top
from liptriton.bounds.conv_fourier import fourier_blocks, fourier_gram, fourier_plan
from liptriton.bounds.conv_operator import ConvSpec
from tests._measure import exact_conv_norm


@pytest.fixture(params=["lanczos", "direct", "ranked"])
def path(request, monkeypatch):
    """Every path of the certificate, whatever the shape rule would choose."""
    monkeypatch.setattr(certified_norm, "_path", lambda h, steps, refine: request.param)
    return request.param


@pytest.mark.parametrize("batch,q", [(1, 1), (1, 7), (5, 16), (40, 12)], ids=str)
@pytest.mark.parametrize("flat", [False, True], ids=["spread", "flat-top"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "hermitian"])
def test_certificate_is_above_and_close_to_lambda_max(batch, q, flat, dtype, path):
    g = torch.Generator().manual_seed(batch * 100 + q)
    a = torch.randn(batch, q + 3, q, dtype=dtype, generator=g)
    if flat:  # the spectrum an optimizer that pushes every direction up produces: a cluster at the top
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        a = u @ torch.diag_embed(1 - 0.01 * torch.rand(s.shape, generator=g, dtype=torch.float64)).to(dtype) @ vh
    h = a.mH @ a
    top = float(torch.linalg.eigvalsh(h).max())
    v = torch.randn(batch, q, dtype=dtype, generator=g)
    bound, v = certify_top_eigenvalue(h, v, 8, refine=3)
    assert top <= float(bound) <= top * 1.0021
    if path != "lanczos":  # converged at once: the tightest level, and the top matrix's vector
        assert float(bound) <= top * (1 + 2.1e-6)
        rayleigh = ((v.conj() * (h @ v.unsqueeze(-1)).squeeze(-1)).sum(-1).real).max()
        assert float(rayleigh) >= top * (1 - 1e-9)


def test_shape_rule_picks_the_eigensolver_paths_on_cpu():
    def picks(batch, q, steps=8, refine=1):
        return certified_norm._path(torch.zeros(batch, q, q, dtype=torch.float64), steps, refine)
    assert all(picks(b, q) == "direct" for b, q in [(1, 1024), (32, 256), (20, 128)])
    assert all(picks(b, q) == "ranked" for b, q in [(60, 32), (120, 32), (420, 32), (180, 64), (60, 128)])
    assert picks(60, 32, steps=0) == picks(120, 32, refine=3) == "direct"
    assert picks(420, 32, steps=0) == picks(420, 32, refine=3) == "lanczos"
    assert certified_norm._path(torch.zeros(420, 32, 32, dtype=torch.float64, device="meta"), 8, 1) == "lanczos"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_matrix_gives_a_non_finite_bound(bad, path):
    """A diverged weight must not be certified with a finite number."""
    h = torch.eye(4, dtype=torch.float64).expand(3, 4, 4).clone()
    h[1, 2, 2] = bad
    bound, _ = certify_top_eigenvalue(h, torch.ones(3, 4, dtype=torch.float64), 8)
    assert not torch.isfinite(bound)
    # with the divisor's block index too: still not finite, and the index a valid block
    bound, _, i = certify_top_eigenvalue(h, torch.ones(3, 4, dtype=torch.float64), 8, index=True)
    assert not torch.isfinite(bound) and i.dim() == 0 and 0 <= int(i) < 3


def test_certificate_with_a_stale_vector_is_still_a_bound():
    """No Lanczos step (an estimate far below): the certificate falls back, never under-reports."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 10, 10, dtype=torch.float64, generator=g)
    h = a.mT @ a
    v = torch.zeros(30, 10, dtype=torch.float64)
    v[:, 0] = 1.0
    h[7] *= 50  # one matrix far above the others, which the stale vectors do not see
    bound, _ = certify_top_eigenvalue(h, v, 0)
    assert float(bound) >= float(torch.linalg.eigvalsh(h).max())


def test_lanczos_top_vector():
    h = torch.diag(torch.tensor([1.0, 3.0, 2.0, 2.9], dtype=torch.float64)).expand(2, 4, 4)
    v = lanczos_top(h, torch.ones(2, 4, dtype=torch.float64), 4)
    assert torch.allclose(v.abs(), torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64).expand(2, 4), atol=1e-8)


GEOMETRIES = [
    lambda: nn.Conv2d(3, 4, 3, padding=1), lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
    lambda: nn.Conv2d(4, 2, 3, padding=2, dilation=2), lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    lambda: nn.Conv2d(2, 3, 5, stride=3, padding=2, dilation=2), lambda: nn.Conv1d(3, 5, 5, stride=2, padding=2),
    lambda: nn.Conv3d(2, 3, 3, padding=1), lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
    lambda: nn.ConvTranspose1d(3, 2, 4, stride=2), lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
    lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), lambda: nn.Conv2d(3, 3, 1),
    lambda: nn.Conv2d(3, 5, 1, stride=2), lambda: nn.Conv2d(3, 4, (1, 3), padding=(0, 1)),
    lambda: nn.Conv2d(4, 3, 2, stride=2), lambda: nn.Conv1d(2, 3, 3, stride=3, padding=1),
]


@pytest.mark.parametrize("one_gemm", [True, False], ids=["one-gemm", "half-pairs"])
@pytest.mark.parametrize("make", GEOMETRIES, ids=range(len(GEOMETRIES)))
def test_frequency_bound_is_above_the_exact_operator_norm(make, one_gemm, monkeypatch):
    # both ways to the tap pairs' Gram: one GEMM (small convolutions) and the pairs t <= u (large)
    monkeypatch.setattr(conv_gram, "_ONE_GEMM_WORK", 2**60 if one_gemm else 0)
    torch.manual_seed(0)
    conv = make()
    nd = conv.weight.dim() - 2
    size = {1: (11,), 2: (7, 6), 3: (4, 3, 3)}[nd]
    if conv.padding_mode == "circular":
        size = (6, 6)
    plan = fourier_plan(ConvSpec.from_module(conv), conv.weight.shape, size)
    w = conv.weight.detach().double()
    blocks = fourier_blocks(plan, w)
    gram = fourier_gram(plan, w)
    embedded = torch.cat([torch.cat([gram.real, -gram.imag], -1), torch.cat([gram.imag, gram.real], -1)], -2)
    torch.testing.assert_close(embedded, blocks.mT @ blocks, rtol=1e-12, atol=1e-12)
    bound = float(torch.linalg.matrix_norm(blocks, 2).max()) * plan.gather
    exact = exact_conv_norm(conv, conv.weight, size)
    assert exact <= bound * (1 + 1e-12)
    if plan.exact:
        assert bound <= exact * (1 + 1e-9)


@pytest.mark.parametrize("method", ["spectral", "bjorck", "householder"])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 3)], ids=str)
def test_tiny_conv_inputs(method, size):
    """Fewer input entries than the estimate's 8-vector block (a squeeze-excitation 1x1 conv)."""
    layer = getattr(liptriton, method)(nn.Conv2d(1 if size == (2, 2) else 4, 3, 1), bound="certified")
    x = torch.randn(2, layer.in_channels, *size)
    assert layer(x).shape[-2:] == size
    assert exact_conv_norm(layer, layer.weight, size) <= 1 + 1e-4
    est = getattr(liptriton, method)(nn.Conv2d(layer.in_channels, 3, 1), bound="estimate")
    assert torch.isfinite(est(x)).all()


@pytest.mark.parametrize("make", [lambda: nn.Linear(5, 3), lambda: nn.Conv2d(2, 3, 3, padding=1)], ids=["linear", "conv"])
def test_zero_weight_gives_zero_output_not_nan(make):
    layer = make()
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    liptriton.spectral(layer)
    x = torch.randn(2, 5) if isinstance(layer, nn.Linear) else torch.randn(2, 2, 6, 6)
    out = layer(x)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(layer.parametrizations.weight.original.grad).all()


def test_second_constraint_on_one_tensor_is_refused():
    layer = liptriton.spectral(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"already constrained by Spectral.*remove_parametrizations"):
        liptriton.bjorck(layer)
    torch.nn.utils.parametrize.remove_parametrizations(layer, "weight")
    liptriton.bjorck(layer)  # after removal: accepted


@pytest.mark.parametrize("make,size", [
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (5, 4)),  # input side (in <= out)
    (lambda: nn.Conv2d(4, 2, 3, stride=2, padding=1), (6, 6)),  # output side
    (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), (3, 3)),
], ids=["in-side", "out-side", "transposed"])
def test_dense_path_estimate_through_the_operator_matches_the_matrix(make, size):
    """The exact-operator path's divisor, estimated through one convolution, has the value and the
    gradient of the estimate through the operator matrix."""
    torch.manual_seed(0)
    layer = liptriton.spectral(make())
    layer(torch.randn(1, layer.in_channels, *size))
    state = layer.parametrizations.weight[0].conv
    assert state.method == "dense"
    w = torch.randn_like(layer.parametrizations.weight.original).requires_grad_()
    ours = state.norm(w, update=False)
    (g_ours,) = torch.autograd.grad(ours, w)
    h = state._gram(w.detach().double())
    i = torch.tensor(0)
    bound = torch.linalg.eigvalsh(h).max()
    ref = certified_sigma(state._blocks(w, i), bound, state.v)
    (g_ref,) = torch.autograd.grad(ref, w)
    assert torch.allclose(ours, ref, rtol=1e-5)
    assert torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("side", [8, 40], ids=["side8", "side40"])
def test_ranked_path_over_a_drifting_batch(side):
    """The warm CPU path of a large batch, as training calls it: the matrices drift and the top
    one changes between calls; every bound is above the true maximum (float64 eigvalsh) and within
    the tightest level of it, and the returned vectors give the top matrix's eigenvector (the
    ranking sends 4 matrices through eigvalsh first: the jumps are missed, then refined)."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(200, side + 2, side, dtype=torch.complex128, generator=g)
    v = torch.randn(200, side, dtype=torch.complex128, generator=g)
    assert certified_norm._path(a.mH @ a, 8, 1) == "ranked"
    for step in range(20):
        a = a + 0.05 * torch.randn(a.shape, dtype=a.dtype, generator=g)
        if step % 5 == 4:  # a matrix deep in the ranking jumps above all others
            a[int(torch.randint(200, (1,), generator=g))] *= 1.2
        h = a.mH @ a
        top = float(torch.linalg.eigvalsh(h).max())
        bound, v = certify_top_eigenvalue(h, v, 8)
        assert top <= float(bound) <= top * (1 + 1e-6) ** 2 * (1 + 1e-8), step
        rayleigh = (v.conj() * (h @ v.unsqueeze(-1)).squeeze(-1)).sum(-1).real.max()
        assert float(rayleigh) >= top * (1 - 1e-6), step


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=["real", "hermitian"])
def test_compiled_graphs_call_the_eager_certificate_as_one_op(dtype):
    a = torch.randn(40, 7, 6, dtype=dtype, generator=torch.Generator().manual_seed(0))
    h, v = a.mH @ a, torch.randn(40, 6, dtype=dtype)
    args = (h, v, 8, [1 + 1e-6, 1 + 1e-3], 16, 1, 1)
    torch.library.opcheck(torch.ops.liptriton.certify_top_eigenvalue, args,
                          test_utils=("test_schema", "test_faketensor"))
    bound, _, i = torch.ops.liptriton.certify_top_eigenvalue(*args)
    tops = torch.linalg.eigvalsh(h)[..., -1]
    top = tops.max()
    assert top <= bound <= top * (1 + 3e-6)  # the eager (ranked) path's tightness
    assert tops[i] >= top * (1 - 1e-5)  # the index of the top matrix
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    compiled = torch.compile(lambda h, v: certify_top_eigenvalue(h, v, 8, index=True), backend=backend,
                             fullgraph=True)
    bound_c, _, i_c = compiled(h, v)
    assert any("liptriton.certify_top_eigenvalue" in t for t in seen), seen
    assert bound_c == certify_top_eigenvalue(h, v, 8)[0] and i_c == i


@pytest.mark.parametrize("batch, refine", [(8, 1), (60, 1), (200, 3)], ids=["direct", "ranked", "lanczos"])
def test_certificate_index_is_the_top_block(batch, refine):
    """The index the certificate returns (the divisor's gradient block) is the matrix holding the
    largest eigenvalue, on every path, from a random (unconverged) warm start."""
    g = torch.Generator().manual_seed(batch)
    a = torch.randn(batch, 12, 10, dtype=torch.complex128, generator=g)
    h = a.mH @ a
    top = torch.linalg.eigvalsh(h)[..., -1]
    v = torch.randn(batch, 10, dtype=torch.complex128, generator=g)
    bound, v_new, i = certify_top_eigenvalue(h, v, 8, refine=refine, index=True)
    assert i.dim() == 0 and i.dtype == torch.long
    assert float(top[i]) >= float(top.max()) * (1 - 1e-5)
    assert float(top.max()) <= float(bound) <= float(top.max()) * 1.003
    bound2, v2 = certify_top_eigenvalue(h, v, 8, refine=refine)  # without the index: same result
    assert float(bound2) == float(bound) and torch.equal(v2, v_new)


@pytest.mark.parametrize("make", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[3], GEOMETRIES[5], GEOMETRIES[6]],
                         ids=["wide", "stride2", "groups", "conv1d", "conv3d"])
def test_compiled_graphs_build_the_gram_blocks_as_one_op(make):
    """``liptriton::fourier_gram``: the schema and fake checks, the eager values, and a compiled
    graph calls it (network (a)'s compiled peak memory: perf/NOTES.md)."""
    torch.manual_seed(0)
    conv = make()
    nd = conv.weight.dim() - 2
    plan = fourier_plan(ConvSpec.from_module(conv), conv.weight.shape, {1: (11,), 2: (7, 6), 3: (4, 3, 3)}[nd])
    w = conv.weight.detach().double()
    args = (w, plan.pairs, plan.place, list(plan.dfts), list(plan.lag_shape), plan.groups, plan.phases, plan.wide)
    torch.library.opcheck(torch.ops.liptriton.fourier_gram, args, test_utils=("test_schema", "test_faketensor"))
    torch.testing.assert_close(torch.ops.liptriton.fourier_gram(*args), fourier_gram(plan, w), rtol=0, atol=0)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    compiled = torch.compile(lambda w: fourier_gram(plan, w), backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(w), fourier_gram(plan, w), rtol=0, atol=0)
    assert any("liptriton.fourier_gram" in t for t in seen), seen
