"""nn.Modules: layers, containers, pooling, activations and losses."""

__all__: list[str] = []
