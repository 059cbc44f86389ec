"""Operator geometry and guaranteed bounds: pure math on tensors, no nn.Module rules, no Triton.

* :mod:`~liptriton.bounds.activations`: the constants of elementwise activations;
* :mod:`~liptriton.bounds.pooling`: Schur and window-overlap bounds of pooling.
"""
