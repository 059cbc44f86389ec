"""save of a lipschitzify'd model: the file is the constrained model in the user's own architecture.

Each architecture is written in plain torch (ARCH, shared with a subprocess without liptriton),
converted, trained a few steps (convex residual weights and scales move away from their
initial values), saved, and loaded strictly into a fresh instance of the user's architecture:
here with liptriton.load (then certified against the file's bound) and in a subprocess that
never imports liptriton. Where the architecture cannot compute the converted function, save
refuses, names the node, and save_program writes a torch.export program instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from _measure import dense_singular_values
from _tolerances import assert_close
from _torchvision import models
from safetensors.torch import load_file, save_file
from torch import nn

import liptriton

ARCH = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    def mlp():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4))


    def conv_pool():  # overlapping max pooling (scaled by 1/2) and 2x2 average pooling (scaled by 2)
        return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(6, 8, 3, padding=1),
                             nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 3))


    def bn_net():  # a BatchNorm on the input (removed), BatchNorms after convs and a Linear (folded)
        return nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(),
                             nn.Linear(16, 3))


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += identity
            return F.relu(out)


    class ResNet(nn.Module):  # identity and projection shortcuts, as torchvision's
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(2, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
            self.layer2 = nn.Sequential(Block(8, 16, 2))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.avgpool(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(x, 1))


    def resnet():
        return ResNet()


    class Functional(nn.Module):  # F.gelu (scaled by a node lipschitzify inserts), an overlapping F.max_pool1d
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(7, 4)

        def forward(self, x):
            return self.fc2(F.max_pool1d(F.gelu(self.fc1(x)).unsqueeze(1), 3, 2).flatten(1))


    def functional():
        return Functional()


    def resnet18():
        from _torchvision import models

        return models().resnet18(num_classes=10)
''')
ARCHS: dict = {}
exec(ARCH, ARCHS)  # noqa: S102 (our own source, shared with the subprocess)
SMALL = {"mlp": (8,), "conv_pool": (2, 13, 13), "bn_net": (2, 8, 8), "resnet": (2, 8, 8), "functional": (8,)}
# (architecture, lipschitzify options): GELU kept unscaled, so the output is scaled by 1 / 1.129
# residual="keep": sums stay sums, the output is scaled instead of the residuals
OPTIONS = {"mlp_output_scale": ("mlp", {"activations": "keep"}), "resnet_sums_kept": ("resnet", {"residual": "keep"})}
TESTS = Path(__file__).parent


def trained_conversion(name: str, shape: tuple[int, ...], **options) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(the user's model with random BatchNorm statistics, its conversion trained 2 Adam steps, an input)."""
    net = ARCHS[name]()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    net.eval()
    lip = liptriton.lipschitzify(net, method="spectral", power_iters_init=30, **options)
    x = torch.randn(4, *shape)
    opt = torch.optim.Adam(lip.parameters(), lr=0.05)
    lip.train()
    for _ in range(2):
        opt.zero_grad()
        lip(x).square().mean().backward()
        opt.step()
    return net, lip.eval(), x


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every small architecture converted, trained, saved with its eval input and output."""
    folder = tmp_path_factory.mktemp("arch")
    out = {}
    for name, (arch, options) in {**{n: (n, {}) for n in SMALL}, **OPTIONS}.items():
        torch.manual_seed(1)
        net, lip, x = trained_conversion(arch, SMALL[arch], **options)
        with torch.no_grad():
            y = lip(x)
        path = folder / f"{name}.safetensors"
        liptriton.save(lip, path, example_input=x)
        save_file({"x": x, "y": y}, str(folder / f"{name}_io.safetensors"))
        out[name] = (net, lip, x, y, path)
    return out


@pytest.mark.parametrize("name", [*SMALL, *OPTIONS])
def test_file_is_the_constrained_model_in_the_users_architecture(saved, name):
    net, _, x, y, path = saved[name]
    plain = liptriton.load(path, ARCHS[OPTIONS.get(name, (name,))[0]]().eval())
    assert set(load_file(str(path))) == set(net.state_dict())
    with torch.no_grad():
        assert_close(plain(x), y)
    meta = liptriton.load_metadata(path)
    assert meta["architecture"]["class"] == f"{type(net).__module__}.{type(net).__qualname__}"
    cert = liptriton.certify(plain, x)
    assert meta["bound"]["kind"] == "certified" and cert.upper <= meta["bound"]["upper"]
    for entry in meta["layers"]:  # each layer's bound is the file's weight's
        weight = plain.get_submodule(entry["name"].rsplit(".", 1)[0]).weight
        if weight.dim() == 2:
            assert float(dense_singular_values(weight).max()) <= entry["bound"] * (1 + 1e-6), entry


def test_save_refuses_without_a_copy_of_the_architecture(tmp_path):
    class Uncopyable(nn.Sequential):
        def __deepcopy__(self, memo):
            raise TypeError("no copies")

    lip = liptriton.lipschitzify(Uncopyable(nn.Linear(4, 4), nn.ReLU()), inplace=True)
    with pytest.raises(ValueError, match="kept no copy of the architecture.*no copies.*save_program"):
        liptriton.save(lip, tmp_path / "x.safetensors")


def test_save_needs_the_input_size_of_size_dependent_scalings(saved, tmp_path):
    _, lip, *_ = saved["bn_net"]  # AdaptiveAvgPool2d(1) became sqrt(H W) * mean
    with pytest.raises(ValueError, match="ScaledAdaptiveAvgPool2d: its factor depends on the input size"):
        liptriton.save(lip, tmp_path / "x.safetensors")


def test_load_refuses_the_converted_model(saved):
    """The file's weights hold the conversion's scalings: loaded into the converted model they would count twice."""
    _, lip, _, _, path = saved["conv_pool"]
    for model in (lip, liptriton.bake(lip)):
        with pytest.raises(ValueError, match="architecture given to lipschitzify"):
            liptriton.load(path, model)


def test_scalings_were_really_absorbed(saved):
    """The conversions hold what the user's architecture lacks, so equal outputs prove the absorption."""
    _, lip, *_ = saved["resnet"]
    alphas = [float(torch.sigmoid(m.alpha.detach())) for m in lip.modules() if isinstance(m, liptriton.LipResidual)]
    assert len(alphas) == 3 and all(abs(a - 0.5) > 1e-3 for a in alphas)
    meta = liptriton.load_metadata(saved["conv_pool"][4])
    assert any(abs(e.get("absorbed_factor", 1.0) - 1.0) > 0.1 for e in meta["layers"])
    assert saved["mlp_output_scale"][1].lipschitz_report.output_scale < 0.9
    assert saved["functional"][1].lipschitz_report.output_scale < 0.8  # the pooling's sqrt(2)


def test_batchnorm_is_an_exact_identity_plus_the_folded_shift(saved):
    """Folded BatchNorms compute ``x + shift`` exactly (the shift of a bias-free conv), the removed one ``x``."""
    plain = liptriton.load(saved["bn_net"][4], ARCHS["bn_net"]().eval())
    bns = [m for m in plain.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 4 and torch.equal(bns[0].bias, torch.zeros(2))
    assert bns[1].bias.abs().min() > 0  # plain[1] has no bias: the folded shift lives in the BatchNorm
    for bn in bns:
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.running_mean.any()
        x = torch.randn(5, bn.num_features, *((3, 3) if isinstance(bn, nn.BatchNorm2d) else ()))
        shift = bn.bias.reshape(-1, *([1] * (x.dim() - 2)))
        with torch.no_grad():
            assert torch.equal(bn(x), x + shift)


def assert_same_function(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal outputs to 1e-5 relative to the output's size (float32 rounding of reordered sums)."""
    gap = float((got - want).abs().max() / want.abs().max())
    assert gap <= 1e-5, gap


def _run_without_liptriton(script: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    script = script + '\nassert not any(m.split(".")[0] == "liptriton" for m in sys.modules), "liptriton imported"\n'
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def resnet18_saved(tmp_path_factory):
    """torchvision's resnet18 (BatchNorm, identity and projection shortcuts) converted and saved."""
    torch.manual_seed(2)
    net = models().resnet18(num_classes=10).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    # eval and save each converge the power iterations from the state they find: at 100 steps both agree to 3e-6
    lip = liptriton.lipschitzify(net, method="spectral", power_iters_init=100).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        y = lip(x)
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.safetensors"
    liptriton.save(lip, path, example_input=x)
    save_file({"x": x, "y": y}, str(path.parent / "resnet18_io.safetensors"))
    return net, x, y, path


def test_torchvision_resnet18(resnet18_saved):
    _, x, y, path = resnet18_saved
    plain = liptriton.load(path, models().resnet18(num_classes=10).eval())
    with torch.no_grad():
        assert_same_function(plain(x), y)
    meta = liptriton.load_metadata(path)
    assert meta["architecture"]["class"] == "torchvision.models.resnet.ResNet"
    assert len(meta["architecture"]["batchnorm_identity"]) == 20
    assert liptriton.certify(plain, x, n_samples=1).upper <= meta["bound"]["upper"]


def test_subprocess_without_liptriton(saved, resnet18_saved):
    folder = saved["mlp"][4].parent
    (folder / "arch.py").write_text(ARCH)
    files = {name: str(path) for name, (*_, path) in saved.items() if name in SMALL}
    files["resnet18"] = str(resnet18_saved[3])
    out = _run_without_liptriton(textwrap.dedent(f'''
        import sys, torch
        from safetensors.torch import load_file
        ns = {{}}
        exec(open({str(folder / "arch.py")!r}).read(), ns)
        for name, path in {files!r}.items():
            model = ns[name]().eval()
            model.load_state_dict(load_file(path), strict=True)
            io = load_file(path.replace(".safetensors", "_io.safetensors"))
            with torch.no_grad():
                gap = float((model(io["x"]) - io["y"]).abs().max() / io["y"].abs().max())
            assert gap <= 1e-5, (name, gap)
            print("reproduced", name)
    '''))
    assert out.count("reproduced") == len(files)


REFUSED = {  # (user model, options, input shape, what the error names)
    "scale_before_gelu": (lambda: nn.Sequential(nn.MaxPool2d(3, 2), nn.GELU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)),
                          {}, (2, 9, 9), "1 (node _1): GELU scaled by"),
    "scale_at_output": (lambda: nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3), nn.GELU()),
                        {"activations": "keep"}, (4,), "the model's output"),
    "batch_statistics": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                                               nn.Flatten(), nn.Linear(4 * 2 * 2, 3)),
                         {}, (2, 4, 4), "uses batch statistics"),
    "replaced_activation": (lambda: nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3)),
                            {"activations": "groupsort"}, (4,), "replaced GELU (1) by GroupSort2"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_save_refuses_what_the_architecture_cannot_compute(case, tmp_path):
    make, options, shape, named = REFUSED[case]
    lip = liptriton.lipschitzify(make(), method="spectral", power_iters_init=30, **options).eval()
    path = tmp_path / "refused.safetensors"
    with pytest.raises(ValueError, match="save_program") as err:
        liptriton.save(lip, path, example_input=torch.randn(2, *shape))
    assert named in str(err.value)
    assert not path.exists()


def test_save_program_loads_without_liptriton(tmp_path):
    make, options, shape, _ = REFUSED["scale_at_output"]
    lip = liptriton.lipschitzify(make(), method="spectral", power_iters_init=30, **options).eval()
    x = torch.randn(3, *shape)
    path = tmp_path / "model.pt2"
    liptriton.save_program(lip, path, example_input=x)
    with zipfile.ZipFile(path) as archive:  # no pickle: torch.export.save pickles only example inputs
        assert all(i.file_size == 0 for i in archive.infolist() if i.filename.endswith((".pt", ".pkl")))
    meta = liptriton.load_metadata(path)
    assert meta["format"] == "liptriton.program" and meta["bound"]["kind"] == "certified"
    baked = liptriton.bake(lip, example_input=x)  # the weights the program holds
    assert meta["bound"]["upper"] == liptriton.certify(baked, x).upper
    x2 = torch.randn(5, *shape)  # another batch size: the batch dimension stays dynamic
    with torch.no_grad():
        save_file({"x": x2, "y": lip(x2)}, str(tmp_path / "io.safetensors"))
    out = _run_without_liptriton(textwrap.dedent(f'''
        import sys, torch
        from safetensors.torch import load_file
        program = torch.export.load({str(path)!r})
        io = load_file({str(tmp_path / "io.safetensors")!r})
        with torch.no_grad():
            torch.testing.assert_close(program.module()(io["x"]), io["y"], rtol=1e-5, atol=1e-6)
        print("reproduced")
    '''))
    assert "reproduced" in out


def test_metadata_names_the_architecture_of_other_models(tmp_path):
    net = nn.Sequential(liptriton.spectral(nn.Linear(4, 4)), liptriton.GroupSort2(), nn.Linear(4, 2))
    liptriton.save(net, tmp_path / "net.safetensors")
    arch = liptriton.load_metadata(tmp_path / "net.safetensors")["architecture"]
    assert arch["class"] == "torch.nn.modules.container.Sequential"
    assert arch["needs"] == ["liptriton.nn.activations.GroupSort2"]
