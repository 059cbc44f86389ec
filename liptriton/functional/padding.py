"""Symmetric padding (mirror, edge element included; numpy's "symmetric"): a function and
deel-torchlip's ``functional.SymmetricPad`` module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SymmetricPad", "symmetric_pad"]


def symmetric_pad(x: Tensor, pads: list[int] | tuple[int, ...]) -> Tensor:
    """Pad the last dimensions of ``x`` by mirroring, edge element included (numpy's "symmetric").

    Args:
        x: the input, (N, C, *spatial).
        pads: ``F.pad`` order: (last_before, last_after, previous_before, previous_after, ...);
            each at most the size of its dimension.

    Returns:
        The padded tensor.

    Examples:
        >>> symmetric_pad(torch.tensor([[[1.0, 2.0, 3.0]]]), (1, 2)).tolist()
        [[[1.0, 1.0, 2.0, 3.0, 3.0, 2.0]]]
    """
    for i in range(len(pads) // 2):
        before, after = int(pads[2 * i]), int(pads[2 * i + 1])
        dim = x.dim() - 1 - i
        if before == 0 and after == 0:
            continue
        parts = [x.narrow(dim, 0, before).flip(dim)] if before else []
        parts.append(x)
        if after:
            parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
        x = torch.cat(parts, dim)
    return x


class SymmetricPad(nn.Module):
    """Symmetric padding of the last one (``onedim``) or two dimensions, as deel-torchlip's.

    Args:
        pad: an int (every side), a per-dimension tuple as a convolution's ``padding``
            (``(p,)`` with ``onedim``, ``(p_h, p_w)`` otherwise; deel-torchlip's form), or the
            ``F.pad`` order ``(left, right[, top, bottom])``.
        onedim: pad the last dimension only (Conv1d inputs); else the last two.

    Examples:
        >>> SymmetricPad(1)(torch.arange(4.0).view(1, 1, 2, 2)).shape
        torch.Size([1, 1, 4, 4])
    """

    def __init__(self, pad: int | tuple[int, ...], onedim: bool = False) -> None:
        super().__init__()
        self.onedim = onedim
        num_dim = 2 if onedim else 4
        if isinstance(pad, int):
            self.pad = (pad,) * num_dim
        elif len(pad) == num_dim // 2:
            self.pad = tuple(torch.nn.modules.utils._reverse_repeat_tuple(pad, 2))
        else:
            self.pad = tuple(pad)
        if len(self.pad) != num_dim or any(not isinstance(p, int) or p < 0 for p in self.pad):
            raise ValueError(f"SymmetricPad: pad must be an int >= 0, {num_dim // 2} per-dimension ints or "
                             f"{num_dim} F.pad-order ints, got {pad!r}")

    def forward(self, x: Tensor) -> Tensor:
        """Pad ``x`` (..., [H,] W)."""
        return symmetric_pad(x, self.pad)
