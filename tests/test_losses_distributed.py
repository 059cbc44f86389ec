"""Losses under torch.distributed (2 processes, gloo, CPU): gathered losses and DDP training.

With ``gather_distributed=True`` every rank computes the loss of the global batch; averaging
the parameter gradients over ranks (what DDP does) gives exactly the full-batch gradient.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
N_CLASSES = 3
SIZES = (5, 7)  # uneven local batches: rank 0 holds 5 samples, rank 1 holds 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_factories(liptriton):
    g = {"gather_distributed": True}
    return {
        "KRLoss": (lambda **k: liptriton.KRLoss(**k), 1),
        "HingeMarginLoss": (lambda **k: liptriton.HingeMarginLoss(0.5, **k), 1),
        "HKRLoss": (lambda **k: liptriton.HKRLoss(0.7, **k), 1),
        "KRMulticlassLoss": (lambda **k: liptriton.KRMulticlassLoss(**k), N_CLASSES),
        "HingeMulticlassLoss": (lambda **k: liptriton.HingeMulticlassLoss(**k), N_CLASSES),
        "HKRMulticlassLoss": (lambda **k: liptriton.HKRMulticlassLoss(0.9, **k), N_CLASSES),
        "HKRMulticlassLoss-sum": (lambda **k: liptriton.HKRMulticlassLoss(0.9, reduction="sum", **k),
                                  N_CLASSES),
        "LseHKRMulticlassLoss": (lambda **k: liptriton.LseHKRMulticlassLoss(0.8, **k), N_CLASSES),
        "SoftHKRMulticlassLoss": (lambda **k: liptriton.SoftHKRMulticlassLoss(0.8, **k), N_CLASSES),
        "CategoricalHingeLoss": (lambda **k: liptriton.CategoricalHingeLoss(**k), N_CLASSES),
    }, g


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _check_gathered_losses(rank, liptriton):
    factories, gather = _loss_factories(liptriton)
    start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    for name, (make, classes) in factories.items():
        torch.manual_seed(0)  # same data and model on every rank
        n = sum(SIZES)
        x = torch.randn(n, 4)
        y = torch.arange(n) % classes if classes > 1 else (torch.rand(n, 1) > 0.4)
        if name != "HingeMarginLoss":  # bool labels for that one, float {0, 1} for the others
            y = y if classes > 1 else y.float()
        model = torch.nn.Linear(4, classes)
        # Reference: the full batch on this process alone.
        full_loss_fn = make()
        full = full_loss_fn(model(x), y)
        full.backward()
        full_grad = _grads(model).clone()
        model.zero_grad()
        # Distributed: the local slice, gathered inside the loss; gradients averaged as DDP does.
        loss_fn = make(**gather)
        local = loss_fn(model(x[start:stop]), y[start:stop])
        local.backward()
        grad = _grads(model).clone()
        dist.all_reduce(grad)
        grad /= WORLD
        torch.testing.assert_close(local, full, msg=f"{name}: loss")
        torch.testing.assert_close(grad, full_grad, msg=f"{name}: gradient")
        if name == "SoftHKRMulticlassLoss":  # the running statistic: global, equal on every rank
            torch.testing.assert_close(loss_fn.current_mean, full_loss_fn.current_mean)


def _check_multi_gpu_labels(rank, liptriton):
    # deel-torchlip's recipe: labels preprocessed on the global batch, local means, DDP averaging.
    torch.manual_seed(0)
    n_local = 6
    x = torch.randn(WORLD * n_local, 4)
    y = torch.nn.functional.one_hot(torch.arange(WORLD * n_local) % N_CLASSES, N_CLASSES).float()
    model = torch.nn.Linear(4, N_CLASSES)
    liptriton.HKRMulticlassLoss(0.5)(model(x), y).backward()
    full_grad = _grads(model).clone()
    model.zero_grad()
    processed = liptriton.process_labels_for_multi_gpu(y)
    sl = slice(rank * n_local, (rank + 1) * n_local)
    liptriton.HKRMulticlassLoss(0.5, multi_gpu=True)(model(x[sl]), processed[sl]).backward()
    grad = _grads(model).clone()
    dist.all_reduce(grad)
    torch.testing.assert_close(grad / WORLD, full_grad)


def _check_compiled_gather(rank, liptriton):
    # Inside a user's fullgraph-compiled step the gather is a traceable functional collective
    # (equal local batch sizes); a second batch size does not recompile.
    import torch._dynamo.testing

    torch.manual_seed(0)
    model = torch.nn.Linear(4, N_CLASSES)
    loss_fn = liptriton.HKRMulticlassLoss(0.9, gather_distributed=True)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    step = torch.compile(lambda x, y: loss_fn(model(x), y), backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for n_local in (5, 7):  # not 3 or 4: equal sizes share one symbol (duck shapes) with C or the features
        x = torch.randn(WORLD * n_local, 4)
        y = torch.arange(WORLD * n_local) % N_CLASSES
        full = liptriton.HKRMulticlassLoss(0.9)(model(x), y)
        full.backward()
        full_grad = _grads(model).clone()
        model.zero_grad()
        sl = slice(rank * n_local, (rank + 1) * n_local)
        local = step(x[sl], y[sl])
        local.backward()
        grad = _grads(model).clone()
        model.zero_grad()
        dist.all_reduce(grad)
        torch.testing.assert_close(local, full)
        torch.testing.assert_close(grad / WORLD, full_grad)
        frames.append(counter.frame_count)
    assert frames[0] == frames[1], f"recompiled for a new batch size: {frames}"


def _lipschitz_model(liptriton):
    def lin(a, b):
        layer = torch.nn.Linear(a, b)
        if hasattr(liptriton, "bjorck"):
            return liptriton.bjorck(layer)
        return torch.nn.utils.parametrizations.orthogonal(layer)

    return torch.nn.Sequential(lin(4, 8), liptriton.GroupSort2(), lin(8, N_CLASSES))


def _check_ddp_training(rank, liptriton):
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(_lipschitz_model(liptriton))
    loss_fn = liptriton.HKRMulticlassLoss(0.9, 0.5, gather_distributed=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)  # different data on each rank
    for _ in range(3):
        x, y = torch.randn(8, 4), torch.randint(0, N_CLASSES, (8,))
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        torch.testing.assert_close(gathered[0], gathered[1], rtol=0, atol=0)
    with torch.no_grad():
        for m in model.module:
            if hasattr(m, "weight"):
                assert torch.linalg.matrix_norm(m.weight, 2) <= 1.0 + 1e-3


def _worker(rank: int, port: int, error_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        import liptriton

        _check_gathered_losses(rank, liptriton)
        _check_multi_gpu_labels(rank, liptriton)
        _check_compiled_gather(rank, liptriton)
        _check_ddp_training(rank, liptriton)
    except BaseException as exc:  # report to the parent, which fails the test with the message
        with open(os.path.join(error_dir, f"rank{rank}.txt"), "w") as f:
            import traceback

            f.write("".join(traceback.format_exception(exc)))
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                    reason="needs torch.distributed (gloo)")
def test_gathered_losses_and_ddp_training_two_processes():
    with tempfile.TemporaryDirectory() as error_dir:
        try:
            mp.spawn(_worker, args=(_free_port(), error_dir), nprocs=WORLD, join=True)
        except Exception as exc:
            reports = [open(os.path.join(error_dir, f)).read() for f in sorted(os.listdir(error_dir))]
            pytest.fail(f"a rank failed: {exc}\n" + "\n".join(reports))


def test_gather_is_identity_without_process_group():
    from liptriton import distributed

    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather(x) is x
    assert distributed.world_size() == 1 and distributed.rank() == 0
