"""``SegmentationModule``: a LightningModule for semantic segmentation with torchvision models and encoders.

The same conventions as ``FinetuneClassifier``: dict batches in (``image``, ``target`` mask, ``index``),
dict outputs with ``logits`` ``(N, C, H, W)`` and per-sample losses for the callbacks, the configured
loss optimized as configured, optimizer and scheduler callables, and freezing, per-stage LRs,
layer-wise LR decay and unfreeze schedules through the same helpers; the loss, steps, logging, optimizer and
checkpoint hooks are ``TaskLightningModule``'s (``lit_finetune.modules.base``), shared with ``FinetuneClassifier``.
Override ``build_network``, ``forward``, ``loss_terms``, ``sample_losses`` or ``parameter_groups`` in research code.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.models.preprocessing import weights_preprocessing
from lit_finetune.models.segmenters import build_segmenter
from lit_finetune.modules.base import TaskLightningModule
from lit_finetune.modules.epoch_metrics import epoch_loss_metric
from lit_finetune.modules.options import TrainingOptions, per_sample_copy, resolve_loss
from lit_finetune.optim.freezing import FreezeSpec
from lit_finetune.tasks.base import loss_weight
from lit_finetune.tasks.segmentation import SegmentationTask
from lit_finetune.tasks.segmentation_masks import mask_rule

log = logging.getLogger(__name__)

Palette = list[tuple[int, int, int]]


def logits_at_mask_size(logits: Tensor, input_size: Tensor | None, mask_size: Tensor, out_size: tuple[int, int]) -> Tensor:
    """Each image's logits cropped to its unpadded input and resized (bilinear) to its mask's size, in one batch.

    Args:
        logits: ``(N, C, h, w)`` logits of a (padded) batch of images.
        input_size: ``(N, 2)`` height and width of each image before padding; None: the whole of ``logits``.
        mask_size: ``(N, 2)`` height and width of each mask before padding.
        out_size: the padded masks' ``(H, W)``; the logits beyond each mask's size are 0 (its padding is ignored).
    """
    out = logits.new_zeros(*logits.shape[:2], *out_size)
    for i, (height, width) in enumerate(mask_size.tolist()):
        crop = logits[i : i + 1] if input_size is None else logits[i : i + 1, :, : int(input_size[i, 0]), : int(input_size[i, 1])]
        if crop.shape[-2:] != (height, width):
            crop = F.interpolate(crop.float(), size=(height, width), mode="bilinear", align_corners=False).to(logits.dtype)
        out[i, :, :height, :width] = crop[0]
    return out


@dataclass(frozen=True)
class SegmenterSpec:
    """What :meth:`SegmentationModule.build_network` builds from: the arguments of :func:`~lit_finetune.models.segmenters.build_segmenter`.

    Args:
        name: a torchvision segmentation model or a classification backbone used as the encoder.
        num_classes: output maps (the task's outputs).
        weights: weights name or local state_dict of ``name``.
        weights_backbone: torchvision segmentation models only: ImageNet weights of their backbone.
        aux_loss: keep the auxiliary classifier (fcn, deeplabv3 with a ResNet).
        decoder_channels: encoders only: widths of the U-Net decoder blocks, coarsest first.
        decoder_dropout: encoders only: dropout before the final 1x1 convolution.
        channels_last: channels-last inputs.
        trust_pickle: allow a local weights file holding a whole pickled model.
        backbone_kwargs: encoders only: extra arguments of the torchvision builder.
    """

    name: str
    num_classes: int
    weights: str | None = None
    weights_backbone: str | None = None
    aux_loss: bool = True
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    decoder_dropout: float = 0.0
    channels_last: bool = False
    trust_pickle: bool = False
    backbone_kwargs: dict[str, Any] | None = None


class SegmentationModule(TaskLightningModule):
    """Train a segmentation model: torchvision's segmentation models or any classification backbone as an encoder.

    Args:
        num_classes: number of classes, background included (``task="binary"``: 1 or 2; one output map).
            Filled in from the data by the command line.
        backbone: a torchvision segmentation model (``fcn_resnet50``, ``fcn_resnet101``, ``deeplabv3_resnet50``,
            ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``) or a
            torchvision classification model used as the encoder of a U-Net decoder (``resnet18``,
            ``efficientnet_b0``, ``convnext_tiny``, ``mobilenet_v3_large``, ``regnet_y_400mf``, ...).
        weights: None (random init), a weights name of ``backbone`` (``"DEFAULT"``; for segmentation models
            ``"COCO_WITH_VOC_LABELS_V1"``, for encoders ``"IMAGENET1K_V1"``) or a path to a local state_dict.
            The class layers are replaced after loading.
        weights_backbone: torchvision segmentation models only: ImageNet weights name of their backbone,
            used when ``weights`` is None.
        task: ``"multiclass"`` (softmax over ``num_classes`` maps) or ``"binary"`` (one sigmoid map, masks of 0/1).
        ignore_index: mask value of unlabeled pixels, left out of the default loss and the metrics (and the value
            that pads masks of mixed sizes). Filled in from the data by the command line (``data.ignore_index``);
            None: the data module's default, 255 for multiclass and -1 (padding only) for binary masks.
        decoder_channels: encoders only: widths of the U-Net decoder blocks, coarsest first.
        decoder_dropout: encoders only: dropout before the final 1x1 convolution.
        aux_loss_weight: weight of the auxiliary classifier's loss (fcn, deeplabv3 with a ResNet) in
            training; 0 removes that head.
        loss: the loss module, optimized exactly as configured; it needs a ``reduction`` attribute (a detached
            copy with ``reduction="none"`` gives the per-sample losses that callbacks read). None:
            ``CEDiceLoss`` (binary: ``BCEDiceLoss``) with ``ignore_index``. Give your own loss the same
            ``ignore_index``.
        label_smoothing: label smoothing of the default loss's cross-entropy term.
        class_weights: per-class weights of the default loss (multiclass), or ``"auto"`` (inverse pixel
            frequency from ``class_counts``).
        threshold: binary: probability above which a pixel is foreground.
        optimizer: the optimizer, given its parameter groups (any ``torch.optim`` class from YAML).
        lr_scheduler: the learning-rate scheduler, given the optimizer; None: constant LR.
        scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"``.
        scheduler_monitor: metric that ``ReduceLROnPlateau`` watches.
        class_names: names of the classes, stored in checkpoints (filled in from the data).
        palette: RGB colour of each class for pictures and exports; None: taken from the data module when
            it has one, else a fixed colour map.
        class_counts: labeled pixels per class of the training data, for ``class_weights="auto"``
            (filled in by the command line when the data module counts them).
        num_train_samples: training images (filled in by the command line; informational).
        image_mean: normalization mean of the input images (to show them); None: that of the weights.
        image_std: likewise, the normalization std.
        trust_pickle: allow a local weights file holding a whole pickled model (runs code from the file).
        channels_last: use the channels-last memory format.
        freeze: ``"none"``, ``"backbone"`` (the encoder), the number of leading backbone stages, or a list of
            module/parameter-name globs (``["backbone.layer1*"]``). The decoder and classifiers form the head.
        train_bn: keep BatchNorm layers inside frozen parts training.
        head_lr: LR of the head (decoder, classifiers); None takes the optimizer's ``lr``.
        backbone_lr_mult: backbone LR relative to the head LR.
        layer_decay: layer-wise LR decay over the backbone stages; 1 disables it.
        no_weight_decay_norm_bias: no weight decay on norm layers and biases.
        backbone_kwargs: encoders only: extra arguments of the torchvision builder.

    Raises:
        ValueError: an unknown model or weights, options that do not fit the model or task.

    Example::

        model = SegmentationModule(num_classes=3, backbone="resnet18", decoder_channels=[64, 32, 16, 16],
                                   optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
        model(torch.randn(2, 3, 64, 64))["logits"].shape  # (2, 3, 64, 64)
    """

    task: SegmentationTask

    checkpoint_monitor = "val/miou"
    """The metric the command line's checkpoint keeps the best of (instead of ``val/acc``)."""
    checkpoint_filename = "epoch{epoch:02d}-miou{val/miou:.4f}"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        weights: str | None = None,
        weights_backbone: str | None = None,
        task: Literal["multiclass", "binary"] = "multiclass",
        ignore_index: int | None = None,
        decoder_channels: list[int] | None = None,
        decoder_dropout: float = 0.0,
        aux_loss_weight: float = 0.4,
        loss: nn.Module | None = None,
        label_smoothing: float = 0.0,
        class_weights: Literal["auto"] | list[float] | None = None,
        threshold: float = 0.5,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        class_names: list[str] | None = None,
        palette: Palette | None = None,
        class_counts: list[int] | None = None,
        num_train_samples: int | None = None,
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        trust_pickle: bool = False,
        channels_last: bool = False,
        freeze: FreezeSpec = "none",
        train_bn: bool = False,
        head_lr: float | None = None,
        backbone_lr_mult: float = 1.0,
        layer_decay: float = 1.0,
        no_weight_decay_norm_bias: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        options = TrainingOptions(
            freeze, train_bn, head_lr, backbone_lr_mult, layer_decay, no_weight_decay_norm_bias,
            scheduler_interval, scheduler_monitor, aux_loss_weight, channels_last,
        )  # fmt: skip
        if palette is not None and len(palette) < num_classes:
            raise ValueError(f"`palette` has {len(palette)} colours for {num_classes} classes: give one RGB triple per class.")
        if ignore_index is None:  # resolved as the data module resolves it; the hyperparameters keep the value (loggers compare the two)
            ignore_index = mask_rule(task).ignore_index
        task_object = SegmentationTask(num_classes, class_names, task, ignore_index, threshold)
        # `auto` weights without counts: the data module counts the pixels in its mask check, and `setup` fills them in.
        weights_pending = class_weights == "auto" and not class_counts
        if weights_pending and loss is not None:
            raise ValueError("`class_weights` configure the default loss; give them to your own `loss` instead.")
        weight = None if weights_pending else loss_weight(task_object, class_weights, class_counts, None, "pixel")
        loss = resolve_loss(task_object, loss, label_smoothing, weight)
        spec = SegmenterSpec(
            backbone, task_object.num_outputs, weights, weights_backbone, aux_loss_weight > 0, tuple(decoder_channels or (256, 128, 64, 32)),
            decoder_dropout, channels_last, trust_pickle, backbone_kwargs,
        )  # fmt: skip
        pre = weights_preprocessing(backbone, weights, unknown_names=True)
        mean, std = pre.mean, pre.std
        super().__init__(
            task_object, self.build_network(spec), loss, optimizer, lr_scheduler, options, backbone, image_mean or mean, image_std or std
        )
        self.weights = weights
        self._weights_pending = weights_pending
        self.palette: Palette | None = cast(Palette, [tuple(int(v) for v in color) for color in palette]) if palette is not None else None

    # ------------------------------------------------------------------ override points
    def build_network(self, spec: SegmenterSpec) -> nn.Module:
        """The segmentation network: an ``nn.Module`` with ``backbone`` and ``head`` whose forward returns ``{"logits": ...}``.

        Called by ``__init__`` before the module is set up: use ``spec``, not ``self``'s attributes.
        """
        return build_segmenter(**asdict(spec))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits ``(N, C, H, W)`` of ``images`` (``(N, 3, H, W)``, normalized) at their size; ``aux_logits`` in training."""
        return self.network(images)

    @override
    def _step_outputs(self, batch: dict, stage: str) -> dict[str, Tensor]:
        # Scored where the user labelled: logits go to each mask's own size (evaluation keeps masks as stored;
        # batches of mixed sizes are padded, and the padding is cropped off here).
        outputs = self(batch[keys.IMAGE])
        target = batch[keys.TARGET]
        mask_size = batch.get(keys.MASK_SIZE)
        if mask_size is None:
            if outputs[keys.LOGITS].shape[-2:] == target.shape[-2:]:
                return outputs
            mask_size = torch.tensor([tuple(target.shape[-2:])] * len(target))
        input_size = batch.get(keys.INPUT_SIZE)
        frame = tuple(target.shape[-2:])
        resized = (keys.LOGITS, keys.AUX_LOGITS)
        return {
            name: logits_at_mask_size(value, input_size, mask_size, frame) if name in resized else value for name, value in outputs.items()
        }

    @torch.no_grad()
    def sample_losses(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """Detached per-sample values of the configured loss, shape ``(N,)``: a per-pixel loss is averaged over each
        sample's labeled pixels."""
        loss = self.loss_per_sample(outputs[keys.LOGITS].detach(), target)
        if loss.ndim == 1:
            return loss
        loss, ignore = loss.flatten(1), self.task.ignore_index
        if ignore is None or loss.shape[1] != target[0].numel():
            return loss.mean(1)
        labeled = (target.reshape(len(target), -1) != ignore).float()
        return (loss * labeled).sum(1) / labeled.sum(1).clamp_min(1)

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if self._weights_pending:
            self._count_pixels(datamodule)
        palette = getattr(datamodule, "palette", None)
        if self.palette is None and palette:
            self.palette = cast(Palette, [tuple(int(v) for v in color) for color in palette])
            given = getattr(datamodule, "hparams", {}).get("palette")
            if given is not None and self.hparams.get("palette") is None:
                # Loggers merge the model's and the data's hyperparameters and refuse two values of one name;
                # stored here, the palette also travels with the checkpoint.
                self.save_hyperparameters({**self.hparams, "palette": given})

    def _count_pixels(self, datamodule: Any) -> None:
        """``class_weights: auto`` without ``class_counts``: take them from the data module's mask check, then build the loss."""
        counts = datamodule.count_pixels() if hasattr(datamodule, "count_pixels") else getattr(datamodule, "class_counts", None)
        if not counts:
            raise ValueError(
                "class_weights='auto' needs `class_counts` (labeled pixels per class): give them, give the weights, or keep `data.check_masks` on."
            )
        self.save_hyperparameters({**self.hparams, "class_counts": list(counts)})
        weight = loss_weight(self.task, "auto", counts, None, "pixel")
        loss = resolve_loss(self.task, None, self.hparams.label_smoothing, weight).to(self.device)
        self.loss, self.loss_per_sample = loss, per_sample_copy(loss)
        self.train_loss, self.val_loss, self.test_loss = (epoch_loss_metric(loss).to(self.device) for _ in range(3))
        self._weights_pending = False

    @override
    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """``path``, ``index``, ``original_size`` (when the batch has it), ``input_size`` (each image before a batch
        of mixed sizes was padded; None in unpadded batches), ``logits`` at the input size and the task's ``prediction``."""
        logits = self(batch[keys.IMAGE])[keys.LOGITS]
        images = batch[keys.IMAGE]
        size = batch.get(keys.ORIGINAL_SIZE)
        if size is None:  # the input size, per image
            size = torch.tensor([images.shape[-2:]] * len(images), dtype=torch.long, device=images.device)
        return {
            keys.PATH: batch.get(keys.PATH),
            keys.INDEX: batch[keys.INDEX],
            keys.ORIGINAL_SIZE: size,
            keys.INPUT_SIZE: batch.get(keys.INPUT_SIZE),
            keys.LOGITS: logits,
            keys.PREDICTION: self.task.predict(logits),
        }

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["palette"] = [list(color) for color in self.palette] if self.palette is not None else None

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("palette") and self.palette is None:
            self.palette = cast(Palette, [tuple(int(v) for v in color) for color in checkpoint["palette"]])
        super().on_load_checkpoint(checkpoint)
