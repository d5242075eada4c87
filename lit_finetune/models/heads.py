"""Configurable classification heads."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn


class ClassifierHead(nn.Module):
    """Dropout, optional hidden layers, then a Linear layer to the class scores.

    Args:
        in_features: width of the pooled features.
        num_classes: number of outputs.
        hidden_dims: widths of hidden layers (Linear + activation + dropout each), empty for none.
        dropout: dropout probability before every Linear layer.
        activation: ``"relu"``, ``"gelu"`` or ``"silu"`` between hidden layers.

    Raises:
        ValueError: a non-positive size, a dropout outside [0, 1), or an unknown activation.

    Example::

        >>> head = ClassifierHead(512, 4, hidden_dims=[256], dropout=0.2)
        >>> head(torch.randn(2, 512)).shape
        torch.Size([2, 4])
    """

    ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_dims: list[int] | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims or [])
        if in_features <= 0 or num_classes <= 0 or any(h <= 0 for h in hidden_dims):
            raise ValueError(f"Head sizes must be positive, got in_features={in_features}, num_classes={num_classes}, hidden_dims={hidden_dims}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"Unknown activation '{activation}'; choose one of {sorted(self.ACTIVATIONS)}.")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i, hidden in enumerate(hidden_dims):
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            layers[f"hidden{i}"] = nn.Linear(width, hidden)
            layers[f"act{i}"] = self.ACTIVATIONS[activation]()
            width = hidden
        if dropout > 0:
            layers["drop"] = nn.Dropout(dropout)
        layers["fc"] = nn.Linear(width, num_classes)
        self.layers = nn.Sequential(layers)
        self.in_features = in_features
        self.num_classes = num_classes

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)
