"""Every public name of the installed deel-torchlip, with every parameter, exists in liptriton.

The names and signatures are read from deel-torchlip at run time (``deel.torchlip`` and its
``modules``, ``functional``, ``utils``, ``normalizers`` and ``init``), so a new deel-torchlip
release with a new name or parameter fails here rather than in a user's script. Each deel
parameter must exist in liptriton at the same position with an equal default; liptriton's own
extra parameters may only follow deel's.
"""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

deel = pytest.importorskip("deel.torchlip")

SUBMODULES = ["", ".modules", ".functional", ".utils", ".normalizers", ".init"]
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _deel_public() -> list[tuple[str, str, object]]:
    """(deel submodule, name, object) of every public class, function and constant that resolves.

    deel-torchlip 1.0.5's ``__all__`` lists two names it does not define (``LipschitzPReLU``,
    ``ScaledL2NormPooling2D``; ``from deel.torchlip import *`` fails on them): nobody can use
    them, so they are skipped."""
    found = []
    for sub in SUBMODULES:
        mod = importlib.import_module("deel.torchlip" + sub)
        names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name, None)
            if obj is None or isinstance(obj, types.ModuleType):
                continue
            if callable(obj) and not (getattr(obj, "__module__", "") or "").startswith("deel"):
                continue  # re-exported torch / typing objects (torch, F, Optional, ...)
            found.append((sub, name, obj))
    return found


def _targets(sub: str, obj: object) -> list[str]:
    """Where liptriton holds the name: classes at liptriton and liptriton.nn, functions of
    deel.torchlip(.modules) at liptriton, the rest at the matching liptriton submodule."""
    if sub in ("", ".modules"):
        return ["liptriton", "liptriton.nn"] if inspect.isclass(obj) else ["liptriton"]
    return ["liptriton" + sub]


CASES = [(sub, name, obj, target) for sub, name, obj in _deel_public() for target in _targets(sub, obj)]
CLASSES = sorted({name: obj for sub, name, obj in _deel_public()
                  if inspect.isclass(obj) and sub in ("", ".modules")}.items())

# The intermediate steps of two deel-torchlip losses, public by name only (their docstrings do not
# describe them): liptriton computes these losses in one fused op, and documents so
# (docs/guide.md, "Migrating from deel-torchlip").
LOSS_INTERNALS = {
    "SoftHKRMulticlassLoss": {"clamp_current_mean", "computeTemperatureSoftMax", "hkr", "kr_soft",
                              "kr_soft_preproc", "multiclass_hinge_preproc", "multiclass_hinge_soft",
                              "multiclass_hinge_soft_preproc", "signed_y_pred"},
    "LseHKRMulticlassLoss": {"compute_lse_neg", "get_positive", "lse_hinge", "lse_hinge_preproc", "lse_hkr",
                             "lse_kr", "lse_kr_preproc"},
}


def _same_default(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a is b or a == b


@pytest.mark.parametrize(("name", "cls"), CLASSES, ids=[n for n, _ in CLASSES])
def test_class_methods(name, cls):
    """Every public method and attribute that deel-torchlip's class defines (not torch's)."""
    ours = getattr(__import__("liptriton"), name)
    defined = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("deel"):
            defined |= {m for m in vars(klass) if not m.startswith("_")}
    missing = sorted(m for m in defined - LOSS_INTERNALS.get(name, set()) if not hasattr(ours, m))
    assert not missing, f"liptriton.{name} lacks deel-torchlip's {missing}"


def test_the_surface_is_large():
    # what deel-torchlip 1.0.5 exports today; a much smaller number means the enumeration broke
    assert len({(s, n) for s, n, _, _ in CASES}) >= 90


@pytest.mark.parametrize(("sub", "name", "obj", "target"), CASES,
                         ids=[f"{t}.{n}(deel.torchlip{s})" for s, n, _, t in CASES])
def test_name_and_signature(sub, name, obj, target):
    ours = getattr(importlib.import_module(target), name, None)
    assert ours is not None, f"{target}.{name} is missing (deel.torchlip{sub}.{name})"
    if not callable(obj):  # constants (DEFAULT_EPS_SPECTRAL, ...)
        assert ours == obj, f"{target}.{name} = {ours!r}, deel-torchlip has {obj!r}"
        return
    if inspect.isclass(obj) != inspect.isclass(ours):
        kind = "a class" if inspect.isclass(obj) else "a function"
        pytest.fail(f"{target}.{name}: deel-torchlip's is {kind}")
    theirs = list(inspect.signature(obj).parameters.values())
    mine = list(inspect.signature(ours).parameters.values())
    names = [p.name for p in mine]
    for i, p in enumerate(theirs):
        if p.kind in VARIADIC:
            assert any(q.kind == p.kind for q in mine), f"{target}.{name} lacks deel's {p}"
            continue
        assert p.name in names, f"{target}.{name} lacks deel's parameter {p}"
        q = mine[names.index(p.name)]
        assert names.index(p.name) == i, (
            f"{target}.{name}: {p.name} is parameter {names.index(p.name)}, deel's {i}")
        assert q.kind not in (inspect.Parameter.KEYWORD_ONLY, *VARIADIC) or p.kind == q.kind, (
            f"{target}.{name}: {p.name} is keyword-only here, positional in deel-torchlip")
        assert (p.default is inspect.Parameter.empty) == (q.default is inspect.Parameter.empty), (
            f"{target}.{name}: {p.name} default {q.default!r}, deel-torchlip's {p.default!r}")
        if p.default is not inspect.Parameter.empty:
            assert _same_default(p.default, q.default), (
                f"{target}.{name}: {p.name} default {q.default!r}, deel-torchlip's {p.default!r}")
    extra = [q for q in mine[len(theirs):] if q.kind not in VARIADIC]
    for q in extra:  # liptriton's own parameters come after deel's and are optional
        assert q.default is not inspect.Parameter.empty, (
            f"{target}.{name}: extra parameter {q.name} is required")
