"""Grad-CAM heatmaps of a fixed set of validation images, logged at the end of each validation epoch.

Uses captum's ``LayerGradCam``. The target layer is chosen per backbone family (the last
convolutional stage whose map is at least ``min_map_size`` pixels; the last transformer block for
ViT and Swin, and for timm's token models (ViT, DeiT, EVA, DINOv2), whose token outputs are reshaped to a map
without the class and register tokens) or given by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.callbacks._images import caption_tiles, colorize, denormalize, fit_size, tile_grid
from lit_finetune.callbacks._tensorboard import has_tensorboard, tensorboard_writer
from lit_finetune.tasks import Task, task_of

Reshape = Literal["none", "tokens", "channels_last"]
MAX_IMAGES = 32


def _family_layer(pl_module: nn.Module) -> tuple[str, Reshape] | None:
    """Target layer of transformer families, whose outputs are tokens rather than maps."""
    name = str(getattr(pl_module, "backbone_name", ""))
    backbone = getattr(pl_module, "backbone", None)
    if backbone is None:
        return None
    if name.startswith("vit_"):
        last = len(backbone.encoder.layers) - 1
        return f"backbone.encoder.layers.{list(backbone.encoder.layers._modules)[last]}.ln_1", "tokens"
    if name.startswith("timm/"):
        from lit_finetune.models.timm_backbones import timm_gradcam_layer

        return timm_gradcam_layer(backbone)  # token models: the last block; CNNs: None, found below
    if name.startswith("swin"):
        stage = len(backbone.features) - 1
        block = len(backbone.features[stage]) - 1
        return f"backbone.features.{stage}.{block}.norm2", "channels_last"
    return None


@torch.no_grad()
def find_target_layer(pl_module: nn.Module, images: Tensor, min_map_size: int = 4) -> tuple[str, Reshape]:
    """Name of the Grad-CAM layer for ``pl_module`` and how to reshape its output to ``(N, C, h, w)``.

    Transformers: the last block (ViT: ``ln_1``, reshaped from tokens; Swin: ``norm2``, channels last).
    Others: the last module inside ``backbone`` (in execution order) with a 4-D output at least
    ``min_map_size`` pixels on each side, i.e. the last convolutional stage that still has a useful map;
    at small input sizes that is an earlier stage.
    """
    family = _family_layer(pl_module)
    if family is not None:
        return family
    root = getattr(pl_module, "backbone", pl_module)
    prefix = "backbone." if root is not pl_module else ""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out, _n=name: shapes.append((_n, tuple(out.shape))) if isinstance(out, Tensor) else None)
        for name, m in root.named_modules()
        if name
    ]
    modes = {m: m.training for m in pl_module.modules()}
    try:
        pl_module.eval()
        pl_module(images[:1])
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training  # the flag alone: `train()` would recurse into children already restored
    maps = [(name, shape) for name, shape in shapes if len(shape) == 4 and min(shape[2:]) > 1]
    large = [(name, shape) for name, shape in maps if min(shape[2:]) >= min_map_size]
    chosen = large or maps
    if not chosen:
        raise ValueError(f"No layer of {type(root).__name__} gives a 2-D feature map: set GradCAM(target_layer=...) to a module name.")
    return prefix + chosen[-1][0], "none"


@contextmanager
def exposed_map(layer: nn.Module, reshape: Reshape, prefix_tokens: int = 1) -> Iterator[nn.Module]:
    """A module whose output is ``layer``'s output as an ``(N, C, h, w)`` map, for captum to hook.

    ``tokens``: the first ``prefix_tokens`` tokens (class and register tokens) stay out of the map, the others
    are reshaped to a grid (square, or of the nearest factorization).
    """
    if reshape == "none":
        yield layer
        return
    probe = nn.Identity()

    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        if reshape == "channels_last":
            return probe(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        cls, tokens = out[:, :prefix_tokens], out[:, prefix_tokens:]
        n, t, d = tokens.shape
        side = math.isqrt(t)
        while t % side:
            side -= 1
        grid = probe(tokens.transpose(1, 2).reshape(n, d, side, t // side))
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)

    handle = layer.register_forward_hook(hook)
    try:
        yield probe
    finally:
        handle.remove()


@contextmanager
def preserved_state(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and restore every submodule's training flag afterwards."""
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        yield
    finally:
        for m, training in modes.items():
            m.training = training  # the flag alone: `train()` would recurse into children already restored


class GradCAM(Callback):
    """Log Grad-CAM overlays of the first ``num_images`` validation images as ``zz-gradcam/val``.

    The probe images are taken once from the first validation batches (on rank zero) and kept, so the
    same images are explained every epoch. The heatmaps explain the predicted class (or the true one)
    with captum's ``LayerGradCam``, computed in eval mode with gradients enabled (outside the
    validation loop's inference mode); gradients go to fresh tensors, so ``.grad`` of the parameters,
    ``requires_grad`` flags and every module's training flag are as before. Runs on rank zero only
    (no collectives). Each tile: the de-normalized image blended with the heatmap, captioned with the
    true class, predicted class and probability.

    Args:
        num_images: probe images (1 to 32).
        every_n_epochs: log on every n-th validation epoch.
        target_layer: name of the module to explain (e.g. ``"backbone.layer4"``); None: chosen per family.
        reshape: how to turn ``target_layer``'s output into a map: ``"none"`` (already ``(N, C, h, w)``),
            ``"tokens"`` (ViT: class token + square grid of patch tokens), ``"channels_last"`` (Swin,
            ``(N, h, w, C)``). Only used with ``target_layer``.
        explain: ``"pred"`` (the predicted class) or ``"true"`` (the target class).
        min_map_size: automatic choice: the deepest layer whose map is at least this many pixels a side.
        tile_size: longer side of each tile in pixels.
        alpha: weight of the heatmap in the overlay.

    Segmentation modules (a task with per-pixel targets) are refused at setup, before training.

    Raises:
        ValueError: a count, size or weight out of range, an unknown ``explain``/``reshape``, or a
            segmentation module.

    Example::

        trainer = Trainer(callbacks=[GradCAM(num_images=8)])  # or target_layer="backbone.layer3"
    """

    def __init__(
        self,
        num_images: int = 8,
        every_n_epochs: int = 1,
        target_layer: str | None = None,
        reshape: Reshape = "none",
        explain: Literal["pred", "true"] = "pred",
        min_map_size: int = 4,
        tile_size: int = 96,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if not 1 <= num_images <= MAX_IMAGES:
            raise ValueError(f"`num_images` must be between 1 and {MAX_IMAGES} (it bounds the images logged), got {num_images}.")
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1, got {every_n_epochs}.")
        if reshape not in ("none", "tokens", "channels_last"):
            raise ValueError(f"`reshape` must be 'none', 'tokens' or 'channels_last', got {reshape!r}.")
        if explain not in ("pred", "true"):
            raise ValueError(f"`explain` must be 'pred' or 'true', got {explain!r}.")
        if min_map_size < 2:
            raise ValueError(f"`min_map_size` must be >= 2, got {min_map_size}.")
        if not 8 <= tile_size <= 256:
            raise ValueError(f"`tile_size` must be between 8 and 256 pixels, got {tile_size}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.target_layer = target_layer
        self.reshape = reshape
        self.explain = explain
        self.min_map_size = min_map_size
        self.tile_size = tile_size
        self.alpha = alpha
        self._enabled = True
        self._images: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._layer: tuple[str, Reshape] | None = None
        self.last_heatmaps: Tensor | None = None
        """The heatmaps logged last, ``(N, 1, H, W)`` in ``[0, 1]`` on the CPU."""

    @property
    def layer_name(self) -> str | None:
        """The layer explained (known after the first heatmaps)."""
        return self._layer[0] if self._layer else None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        task = getattr(pl_module, "task", None)
        if isinstance(task, Task) and task.dense:
            raise ValueError(
                "GradCAM explains one class per image; it does not apply to segmentation modules (their predicted masks "
                "already show where each class is). Remove GradCAM from trainer.callbacks; BestWorstSamples shows mask overlays."
            )
        self._enabled = has_tensorboard(trainer, type(self).__name__)

    @override
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        held = sum(len(t) for t in self._images)
        if not self._enabled or trainer.global_rank != 0 or held >= self.num_images:
            return
        need = self.num_images - held
        self._images.append(batch[keys.IMAGE][:need].detach().cpu().clone())
        self._targets.append(batch[keys.TARGET][:need].detach().cpu().clone())

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs or not self._images:
            return
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        with torch.inference_mode(False):
            images = torch.cat(self._images).clone()
            targets = torch.cat(self._targets).clone()
        heatmaps, pred, prob = self.heatmaps(pl_module, images, targets)
        self.last_heatmaps = heatmaps
        writer.add_image("zz-gradcam/val", self._grid(pl_module, images, heatmaps, targets, pred, prob), trainer.global_step)

    def heatmaps(self, pl_module: LightningModule, images: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Grad-CAM maps of ``images`` (normalized ``(N, 3, H, W)``), upsampled to the image size and scaled to ``[0, 1]``.

        Returns the maps on the CPU, and the predicted class and its probability per image.
        """
        from captum.attr import LayerGradCam

        task = task_of(pl_module, type(self).__name__)
        with torch.inference_mode(False), torch.enable_grad(), preserved_state(pl_module):
            x = images.to(pl_module.device).clone()
            if self._layer is None:
                self._layer = (self.target_layer, self.reshape) if self.target_layer else find_target_layer(pl_module, x, self.min_map_size)
            name, reshape = self._layer
            logits = _logits(pl_module(x)).detach()
            prediction = task.predict(logits)
            explained = self._explained(task, logits, targets)
            # timm's token models name their class + register tokens `num_prefix_tokens`; torchvision's ViT has one.
            prefix = int(getattr(getattr(pl_module, "backbone", None), "num_prefix_tokens", 1))
            with exposed_map(pl_module.get_submodule(name), reshape, prefix) as layer:
                gradcam = LayerGradCam(lambda inp: task.explained_logits(_logits(pl_module(inp))), layer)
                cam = gradcam.attribute(x, target=explained.tolist(), relu_attributions=True)
            cam = F.interpolate(cam.detach().float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
            cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        self._last_prediction = prediction
        return cam.cpu(), prediction.pred.cpu(), prediction.prob.cpu()

    def _explained(self, task: Task, logits: Tensor, targets: Tensor | None) -> Tensor:
        """The output column explained per image: the predicted class, or the true one when asked and defined."""
        pred = task.explained_class(logits)
        if self.explain == "true" and targets is not None and targets.ndim == 1 and not targets.is_floating_point():
            return targets.to(pred.device).long()
        return pred

    def _grid(self, pl_module: LightningModule, images: Tensor, heatmaps: Tensor, targets: Tensor, pred: Tensor, prob: Tensor) -> Tensor:
        task = task_of(pl_module, type(self).__name__)
        # image_mean, image_std: the task module's normalization tuples
        pictures = denormalize(images.float().cpu(), pl_module.image_mean, pl_module.image_std)  # type: ignore[arg-type]
        overlay = (1 - self.alpha) * pictures + self.alpha * colorize(heatmaps)
        prediction = self._last_prediction
        captions = [[f"true {task.target_text(targets[i])}", f"pred {task.prediction_text(prediction, i)}"] for i in range(len(images))]
        return tile_grid(caption_tiles(fit_size(overlay, self.tile_size), captions))


def _logits(output: Any) -> Tensor:
    return output[keys.LOGITS] if isinstance(output, dict) else output
