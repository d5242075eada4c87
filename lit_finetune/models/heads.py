"""Classification heads: the configurable head, and finding and replacing the final layer of a torchvision model."""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

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
            raise ValueError(
                f"Head sizes must be positive, got in_features={in_features}, num_classes={num_classes}, hidden_dims={hidden_dims}."
            )
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


def find_final_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """Name and module of the final classification layer (last Linear/Conv2d registered)."""
    final = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not name.startswith(("AuxLogits", "aux1", "aux2")):
            final = (name, module)
    if final is None:
        raise ValueError(f"No Linear or Conv2d layer found in {type(model).__name__}: cannot find its head.")
    return final


def feature_size(layer: nn.Module) -> int:
    """Input width of a final Linear or 1x1 Conv2d layer."""
    return cast(int, layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
