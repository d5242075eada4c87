"""Plain ``nn.Module`` networks, usable without Lightning (export, research code).

``ClassifierNetwork`` is a backbone (the torchvision model with its final layer removed) and a head
on its pooled features. ``FinetuneClassifier`` holds the same two modules under the same names
(``backbone``, ``head``), so a checkpoint's ``state_dict`` loads into either.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn

from lit_finetune import keys
from lit_finetune.models.network import BackboneHeadNetwork


class ClassifierNetwork(BackboneHeadNetwork):
    """Backbone plus head: ``forward(images)`` returns ``{"logits": ...}`` (and ``features`` when asked).

    In training mode, a backbone with no trainable parameter runs in eval mode under ``no_grad``
    (it keeps no activations for backward: the frozen-backbone fast path of :class:`BackboneHeadNetwork`).

    :meth:`compile_parts` compiles the backbone and the head with ``torch.compile``, each on its own:
    the mode switch of the fast path stays in eager code between them, so it never breaks a graph.
    The compiled parts run only inside :meth:`compiled_calls`; elsewhere the eager modules run, so
    forward hooks added later (NaN replay, Grad-CAM) fire, which compiled graphs would skip.

    Args:
        backbone: maps ``(N, 3, H, W)`` images to pooled features ``(N, D)`` (inception_v3 in training:
            a ``(features, aux_logits)`` pair).
        head: maps the features to the logits.
        channels_last: convert inputs to the channels-last memory format.

    Example::

        from lit_finetune.models.backbones import create_backbone
        backbone, width = create_backbone("resnet18", None, 2)
        net = ClassifierNetwork(backbone, nn.Linear(width, 2))
        net(torch.randn(1, 3, 64, 64))["logits"].shape  # (1, 2)
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.channels_last = channels_last
        self._compiled_parts: dict[str, nn.Module] = {}
        self._use_compiled = False

    def __getstate__(self) -> dict[str, Any]:
        # Compiled graphs are neither copied nor pickled (an EMA copy, DDP spawn): a copy compiles its own.
        return {**self.__dict__, "_compiled_parts": {}, "_use_compiled": False}

    def compile_parts(self, backend: str = "inductor") -> None:
        """Compile the backbone and the head with ``torch.compile(backend=backend)`` (used in :meth:`compiled_calls`)."""
        self._compiled_parts = {
            "backbone": cast(nn.Module, torch.compile(self.backbone, backend=backend)),  # an OptimizedModule
            "head": cast(nn.Module, torch.compile(self.head, backend=backend)),
        }

    @contextmanager
    def compiled_calls(self, enabled: bool = True) -> Iterator[None]:
        """Within this context the compiled backbone and head run (if :meth:`compile_parts` was called)."""
        previous, self._use_compiled = self._use_compiled, enabled and bool(self._compiled_parts)
        try:
            yield
        finally:
            self._use_compiled = previous

    def _part(self, name: str) -> nn.Module:
        return self._compiled_parts[name] if self._use_compiled else getattr(self, name)

    def _backbone_call(self) -> nn.Module:
        return self._part("backbone")

    def forward(self, images: Tensor, return_features: bool = False) -> dict[str, Tensor]:
        out = self.features(images)
        aux = None
        if isinstance(out, tuple):  # inception_v3 in training: (features, aux_logits)
            out, aux = out
        result = {keys.LOGITS: self._part("head")(out)}
        if return_features:
            result[keys.FEATURES] = out
        if aux is not None:
            result[keys.AUX_LOGITS] = aux
        return result
