"""Triton kernels and their launchers (installed as ``liptriton.kernels``).

This layer imports torch and triton only; it knows nothing of nn.Modules or of the
dispatch in :mod:`liptriton.ops`. Launchers take contiguous tensors, validate shapes,
allocate outputs and launch; they are wrapped as ``torch.library.triton_op`` in
``liptriton.ops``.
"""
