"""The multilayer perceptron shared by the deep parts and the towers."""

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Linear -> [BatchNorm1d] -> ReLU -> [Dropout] per hidden layer, then an optional plain
    Linear to `output_dim` (no activation). B x in_dim -> B x (output_dim or hidden_units[-1]).

    BatchNorm1d in training mode needs more than one row per batch (PyTorch raises on B = 1);
    in eval mode any batch size works. Training loops drop a last batch of one row.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_units: Sequence[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ) -> None:
        units = [int(u) for u in hidden_units]
        if in_dim < 1 or any(u < 1 for u in units):
            raise ValueError(f"MLP sizes must be >= 1, got in_dim={in_dim}, hidden={units}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_dim
        for u in units:
            layers.append(nn.Linear(width, u, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(u))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = u
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        super().__init__(*layers)
        self.output_dim = width
