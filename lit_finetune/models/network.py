"""``BackboneHeadNetwork``: what every network here shares: a ``backbone`` and a ``head``, channels-last inputs,
and the frozen-backbone fast path.

A backbone with no trainable parameter runs, in training, in eval mode under ``no_grad``: it keeps no
activations for backward and its BatchNorm statistics stay those of its weights. Outside training it runs as
it is, so that tools which need gradients with respect to activations (Grad-CAM) work on a frozen backbone too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def run_frozen(module: nn.Module, images: Tensor, call: Callable[[Tensor], Any] | None = None) -> Any:
    """``call(images)`` (default: ``module(images)``) with ``module`` in eval mode and without autograd; every
    training flag of ``module`` is restored afterwards."""
    modes = [m.training for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            return (call if call is not None else module)(images)
    finally:
        for m, mode in zip(module.modules(), modes, strict=False):
            m.training = mode


class BackboneHeadNetwork(nn.Module):
    """Base of the classifier and segmentation networks: subclasses set ``backbone``, ``head`` and ``channels_last``.

    Training is read from the head's flag: it follows ``train()``/``eval()`` of whatever module holds the head.
    """

    backbone: nn.Module
    head: nn.Module
    channels_last: bool = False

    def backbone_is_frozen(self) -> bool:
        """True when no backbone parameter requires a gradient."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def _backbone_call(self) -> Callable[[Tensor], Any]:
        """What runs the backbone (a compiled version where a subclass has one)."""
        return self.backbone

    def features(self, images: Tensor) -> Any:
        """The backbone's output; a frozen backbone in training runs in eval mode without autograd."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        call = self._backbone_call()
        if self.head.training and self.backbone_is_frozen():
            return run_frozen(self.backbone, images, call)
        return call(images)
