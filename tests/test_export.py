"""Export: baked plain models, safetensors files with metadata, exact training checkpoints, bad files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _measure import OperatorNorm, dense_singular_values, plain_conv
from _tolerances import BOUND_SLACK, assert_close
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

import liptriton

# The plain architectures, in plain torch: the same source builds the constrained models here
# (``c`` registers a liptriton constraint) and the plain ones in a subprocess without liptriton.
ARCH = textwrap.dedent('''
    import torch
    from torch import nn


    class GroupSort2(nn.Module):
        def forward(self, x):
            return x.unflatten(1, (-1, 2)).sort(dim=2).values.flatten(1, 2)


    class Residual(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return 0.5 * (x + self.f(x))


    def _plain(module, kind):
        return module


    def dense(c=_plain, act=GroupSort2):
        return nn.Sequential(c(nn.Linear(8, 16), "bjorck"), act(), c(nn.Linear(16, 16), "householder"), act(),
                             c(nn.Linear(16, 4), "spectral"))


    def conv(c=_plain, act=GroupSort2):
        return nn.Sequential(c(nn.Conv2d(2, 4, 3, padding=1), "bjorck"), nn.ReLU(),
                             c(nn.Conv2d(4, 6, 3, stride=2, padding=1), "spectral"), nn.ReLU(),
                             c(nn.ConvTranspose2d(6, 4, 2, stride=2), "householder"), nn.Flatten(),
                             c(nn.Linear(4 * 8 * 8, 3), "frobenius"))


    def residual(c=_plain, act=GroupSort2):
        block = nn.Sequential(c(nn.Conv2d(4, 4, 3, padding=1), "householder"), nn.ReLU(),
                              c(nn.Conv2d(4, 4, 3, padding=1), "bjorck"))
        return nn.Sequential(c(nn.Conv2d(2, 4, 3, padding=1), "spectral"), Residual(block), nn.Flatten(),
                             c(nn.Linear(4 * 6 * 6, 3), "bjorck"))
''')
ARCHS = {}
exec(ARCH, ARCHS)  # noqa: S102 (our own source, shared with the subprocess)
INPUTS = {"dense": (8,), "conv": (2, 8, 8), "residual": (2, 6, 6)}


def constrain(module: nn.Module, kind: str) -> nn.Module:
    if kind == "frobenius":
        return liptriton.frobenius(module, disjoint_neurons=False)
    if kind == "spectral":
        return liptriton.spectral(module, power_iters_init=60)
    return getattr(liptriton, kind)(module, power_iters_init=60)


def constrained(name: str) -> nn.Module:
    return ARCHS[name](constrain, act=liptriton.GroupSort2)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    opt.zero_grad()
    loss = ((model(x) - t) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions: oneDNN's thread synchronization costs 100x the work on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(_one_thread, tmp_path_factory):
    """Each model trained 3 Adam steps, saved; with its eval input and outputs."""
    out = {}
    folder = tmp_path_factory.mktemp("export")
    for name, shape in INPUTS.items():
        torch.manual_seed(0)
        model = constrained(name)
        x, t = torch.randn(5, *shape), torch.randn(5, 3 if name != "dense" else 4)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            train_step(model, opt, x, t)
        with torch.no_grad():  # settle: one power step per training forward lags behind Adam's steps;
            for _ in range(30):  # bake converges it, so compare with a settled model
                model(x)
        model.eval()
        with torch.no_grad():
            y = model(x)
        path = folder / f"{name}.safetensors"
        liptriton.save(model, path, metadata={"model": name})
        save_file({"x": x, "y": y}, str(folder / f"{name}_io.safetensors"))
        out[name] = (model, x, y, path)
    return out


def _measured_norms(plain: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, float]:
    """True operator norm of each named weight of the plain model (SVD, or power iteration at its input size)."""
    sizes = {}

    def record(path: str):
        def hook(mod, args) -> None:
            sizes.setdefault(path, tuple(args[0].shape[1:]))
        return hook

    hooks = [m.register_forward_pre_hook(record(p)) for p, m in plain.named_modules()]
    with torch.no_grad():
        plain(x)
    for h in hooks:
        h.remove()
    norms = {}
    for key in names:
        path = key.rsplit(".", 1)[0]
        module = plain.get_submodule(path)
        if isinstance(module, nn.Linear):
            norms[key] = float(dense_singular_values(module.weight).max())
        else:
            norms[key] = OperatorNorm(sizes[path], first=300)(plain_conv(module, module.weight))
    return norms


@pytest.mark.parametrize("name", list(INPUTS))
def test_plain_model_reproduces_outputs_and_bound(exported, name):
    model, x, y, path = exported[name]
    plain = ARCHS[name]().eval()
    assert liptriton.load(path, plain) is plain
    with torch.no_grad():
        assert_close(plain(x), y)
    meta = liptriton.load_metadata(path)
    assert meta["format"] == "liptriton.export" and meta["format_version"] == 1
    assert meta["torch_version"] == torch.__version__ and meta["user"] == {"model": name}
    assert meta["bound"]["kind"] == "product_of_layer_bounds"
    layers = {entry["name"]: entry for entry in meta["layers"]}
    assert len(layers) == {"dense": 3, "conv": 4, "residual": 4}[name]
    for key, norm in _measured_norms(plain, x, list(layers)).items():
        assert norm <= layers[key]["bound"] * (1 + BOUND_SLACK), (key, norm)
        assert layers[key]["k"] == 1.0 and layers[key]["constraints"]
    # the constrained model is untouched by the export
    assert parametrize.is_parametrized(model[0])
    with torch.no_grad():
        assert torch.equal(model(x), y)


def test_subprocess_without_liptriton(exported, tmp_path):
    folder = exported["dense"][3].parent
    (folder / "arch.py").write_text(ARCH)
    script = textwrap.dedent(f'''
        import sys, torch
        from safetensors.torch import load_file
        ns = {{}}
        exec(open({str(folder / "arch.py")!r}).read(), ns)
        for name in {list(INPUTS)!r}:
            model = ns[name]().eval()
            model.load_state_dict(load_file({str(folder)!r} + f"/{{name}}.safetensors"), strict=True)
            io = load_file({str(folder)!r} + f"/{{name}}_io.safetensors")
            with torch.no_grad():
                torch.testing.assert_close(model(io["x"]), io["y"], rtol=1e-5, atol=1e-6)
        assert not any(m == "liptriton" or m.startswith("liptriton.") for m in sys.modules), "liptriton imported"
        print("reproduced")
    ''')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "reproduced" in done.stdout


def test_liptriton_layers_become_plain_torch_layers(tmp_path):
    net = liptriton.Sequential(liptriton.SpectralConv2d(2, 4, 3, padding=1), liptriton.GroupSort2(), nn.Flatten(),
                               liptriton.SpectralLinear(4 * 6 * 6, 8), liptriton.LPReLU(),
                               liptriton.FrobeniusLinear(8, 2))
    x = torch.randn(3, 2, 6, 6)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        train_step(net, opt, x, torch.zeros(3, 2))
    net.eval()
    with torch.no_grad():
        y = net(x)
    path = tmp_path / "layers.safetensors"
    liptriton.save(net, path)
    plain = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), ARCHS["GroupSort2"](), nn.Flatten(), nn.Linear(144, 8),
                          nn.PReLU(), nn.Linear(8, 2)).eval()
    liptriton.load(path, plain)
    with torch.no_grad():
        assert_close(plain(x), y)
    assert [type(m) for m in liptriton.bake(net)] == [nn.Conv2d, liptriton.GroupSort2, nn.Flatten, nn.Linear,
                                                       nn.PReLU, nn.Linear]
    layers = {e["name"]: e for e in liptriton.load_metadata(path)["layers"]}
    assert [e["module"] for e in layers.values()] == ["SpectralConv2d", "SpectralLinear", "FrobeniusLinear"]
    for key, norm in _measured_norms(plain, x, list(layers)).items():
        assert norm <= layers[key]["bound"] * (1 + BOUND_SLACK), (key, norm)


def test_bake_converges_stale_state_and_keeps_activations():
    net = nn.ModuleList([liptriton.spectral(nn.Linear(12, 10), k=2.0), liptriton.GroupSort2(),
                         liptriton.spectral(nn.Conv1d(10, 4, 3, padding=1)), liptriton.bjorck(nn.Linear(4, 4), n_iters=2)])
    net[2](torch.randn(1, 10, 9))  # learns its input size
    with torch.no_grad():  # a stale estimate: power iteration state far from the top singular vectors
        state = net[0].parametrizations.weight[0].state
        state.v.copy_(torch.randn_like(state.v))
        conv_state = net[2].parametrizations.weight[0].conv
        conv_state.x.copy_(torch.randn_like(conv_state.x))
        conv_state.v.copy_(torch.randn_like(conv_state.v))
        u, _, vh = torch.linalg.svd(torch.randn(4, 4))  # Björck from an ill-conditioned weight: 2 steps are not enough
        net[3].parametrizations.weight.original.copy_(u @ torch.diag(torch.tensor([1.0, 0.5, 0.1, 0.02])) @ vh)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.warns(UserWarning, match="never seen an input"):
        liptriton.bake(nn.Sequential(liptriton.spectral(nn.Conv2d(1, 1, 3), power_iters_init=5)))
    baked = liptriton.bake(net)
    assert type(baked[0]) is nn.Linear and type(baked[2]) is nn.Conv1d and type(baked[1]) is liptriton.GroupSort2
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # original untouched
    s0 = float(dense_singular_values(baked[0].weight).max())
    assert 2.0 * (1 - BOUND_SLACK) <= s0 <= 2.0 * (1 + BOUND_SLACK)
    c = OperatorNorm(tuple(conv_state.x.shape[1:]))(plain_conv(baked[2], baked[2].weight))
    assert 1 - BOUND_SLACK <= c <= 1 + BOUND_SLACK
    # Björck with 2 steps is far from orthogonal; baking takes more steps, never above 1
    w2 = net[3].weight.detach()
    s2, s3 = dense_singular_values(w2), dense_singular_values(baked[3].weight)
    assert float(s3.max()) <= 1 + BOUND_SLACK and float((1 - s3).abs().max()) < float((1 - s2).abs().max())
    assert float(s3.min()) >= 0.99


def test_bake_example_input_grows_conv_size_and_leaves_original():
    net = nn.Sequential(liptriton.spectral(nn.Conv2d(2, 3, 3, padding=1), power_iters_init=60))
    net(torch.randn(1, 2, 5, 5))
    state = net[0].parametrizations.weight[0].conv
    before = state.x.clone()
    baked = liptriton.bake(net, example_input=torch.randn(1, 2, 9, 9))
    assert torch.equal(state.x, before)  # the copy's hooks and iterations never reach the original
    assert OperatorNorm((2, 9, 9))(plain_conv(baked[0], baked[0].weight)) == pytest.approx(1.0, rel=BOUND_SLACK)
    assert OperatorNorm((2, 5, 5))(plain_conv(baked[0], baked[0].weight)) <= 1.0


def test_checkpoint_resumes_bit_exact(tmp_path):
    x, t = torch.randn(4, 2, 6, 6), torch.randn(4, 3)
    torch.manual_seed(0)
    model = constrained("residual")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        train_step(model, opt, x, t)
    path = tmp_path / "ckpt.safetensors"
    liptriton.save_checkpoint(model, path, opt, metadata={"step": 2})
    expected = [train_step(model, opt, x, t) for _ in range(2)]
    torch.manual_seed(1)
    fresh = constrained("residual")
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    assert liptriton.load_checkpoint(path, fresh, fresh_opt) == {"step": 2}
    resumed = [train_step(fresh, fresh_opt, x, t) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed)), (expected, resumed)
    for (ka, a), (kb, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka
    assert liptriton.load_metadata(path)["format"] == "liptriton.checkpoint"


def _expect(match: str, fn, *args):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args)
    return str(info.value)


def test_bad_files(exported, tmp_path):
    _, _, _, path = exported["dense"]
    data = path.read_bytes()
    plain = ARCHS["dense"]()
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    cases = {
        "truncated": (data[:-7], "truncated|not a readable"),
        "header_only": (data[:5], "too short"),
        "data_flip": (data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:], "corrupted"),
        "meta_flip": (data.replace(b"product_of_layer_bounds", b"product_of_layer_bounts", 1), "corrupted"),
        "name_flip": (data.replace(b'"4.weight"', b'"5.weight"', 1), "corrupted"),
        "json_flip": (data.replace(b"__metadata__", b"__metadata_\x01", 1), "not a readable|not a JSON object"),
        "text": (b"hello, this is not a model file", "truncated|not a safetensors"),
    }
    for case, (content, match) in cases.items():
        bad = tmp_path / f"{case}.safetensors"
        bad.write_bytes(content)
        assert str(bad) in _expect(match, liptriton.load, bad, plain), case
    pickled = tmp_path / "model.pt"
    torch.save(plain.state_dict(), pickled)
    _expect("zip archive", liptriton.load, pickled, plain)
    foreign = tmp_path / "foreign.safetensors"
    save_file(plain.state_dict(), str(foreign))
    _expect("not written by liptriton", liptriton.load, foreign, plain)
    _expect("use liptriton.load\\)", liptriton.load_checkpoint, path, plain)
    with pytest.raises(FileNotFoundError):
        liptriton.load(tmp_path / "missing.safetensors", plain)
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())  # never half-loaded


def test_wrong_architecture_lists_everything_and_loads_nothing(exported):
    _, _, _, path = exported["dense"]
    wrong = nn.Sequential(nn.Linear(8, 16), ARCHS["GroupSort2"](), nn.Linear(16, 17), nn.ReLU(), nn.Identity(),
                          nn.Linear(17, 4))
    state = {k: v.clone() for k, v in wrong.state_dict().items()}
    msg = _expect("does not match", liptriton.load, path, wrong)
    assert str(path) in msg
    assert "missing keys: ['5.bias', '5.weight']" in msg and "unexpected keys: ['4.bias', '4.weight']" in msg
    assert "2.bias: file (16,), model (17,)" in msg and "2.weight: file (16, 16), model (17, 16)" in msg
    assert all(torch.equal(state[k], v) for k, v in wrong.state_dict().items())
    _expect("has parametrizations", liptriton.load, path, constrained("dense"))


def test_checkpoint_resumes_dropout_and_rng(tmp_path):
    x, t = torch.randn(6, 8), torch.randn(6, 4)
    model = nn.Sequential(liptriton.bjorck(nn.Linear(8, 16)), nn.Dropout(0.5), liptriton.spectral(nn.Linear(16, 4)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt, x, t)
    path = tmp_path / "rng.safetensors"
    liptriton.save_checkpoint(model, path, opt)
    expected = [train_step(model, opt, x, t) for _ in range(2)]
    fresh = nn.Sequential(liptriton.bjorck(nn.Linear(8, 16)), nn.Dropout(0.5), liptriton.spectral(nn.Linear(16, 4)))
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    liptriton.load_checkpoint(path, fresh, fresh_opt)
    assert all(torch.equal(a, train_step(fresh, fresh_opt, x, t)) for a in expected)


def test_checkpoint_keeps_state_flags(tmp_path):
    """A state not converged yet (no forward seen) stays so: its first forward converges, as uninterrupted."""
    model = nn.Sequential(liptriton.spectral(nn.Conv2d(2, 3, 3), power_iters_init=5))
    path = tmp_path / "c.safetensors"
    liptriton.save_checkpoint(model, path)
    other = nn.Sequential(liptriton.spectral(nn.Conv2d(2, 3, 3), power_iters_init=5))
    other(torch.randn(1, 2, 7, 7))  # other has converged at another size: the checkpoint resets that
    liptriton.load_checkpoint(path, other)
    a, b = model[0].parametrizations.weight[0].conv, other[0].parametrizations.weight[0].conv
    assert (b.fresh, b.observed) == (a.fresh, a.observed) and torch.equal(a.x, b.x)
    x = torch.randn(1, 2, 6, 6)
    outputs = []
    for m in (model, other):  # the first forward draws a fresh basis at the input's size: same RNG
        torch.manual_seed(5)
        outputs.append(m(x))
    assert torch.equal(*outputs)


def test_checkpoint_mismatches(tmp_path):
    model = constrained("dense")
    path = tmp_path / "c.safetensors"
    liptriton.save_checkpoint(model, path)
    other = ARCHS["dense"](lambda m, kind: liptriton.spectral(m, power_iters_init=10), act=liptriton.GroupSort2)
    _expect("shape mismatches|other constraints", liptriton.load_checkpoint, path, other)
    opt = torch.optim.Adam(model.parameters())
    _expect("no optimizer state", liptriton.load_checkpoint, path, constrained("dense"), opt)
    _expect("use liptriton.load_checkpoint", liptriton.load, path, ARCHS["dense"]())


@pytest.mark.skipif(importlib.util.find_spec("liptriton.certify") is None, reason="liptriton.certify not written yet")
def test_certified_bound_in_metadata(exported, tmp_path):
    model, x, _, _ = exported["residual"]
    path = tmp_path / "certified.safetensors"
    liptriton.save(model, path, example_input=x[:1])
    bound = liptriton.load_metadata(path)["bound"]
    assert bound["kind"] == "certified" and bound["upper"] <= 1 + BOUND_SLACK
