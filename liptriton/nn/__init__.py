"""nn.Modules: layers, containers, pooling, activations and losses."""

__all__: list[str] = []

from liptriton.nn.activations import FullSort, GroupSort, GroupSort2, HouseHolder, LPReLU, MaxMin  # noqa: E402

__all__ += ["MaxMin", "GroupSort", "GroupSort2", "FullSort", "LPReLU", "HouseHolder"]
