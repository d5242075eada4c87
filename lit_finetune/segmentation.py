"""``SegmentationModule``: a LightningModule for semantic segmentation with torchvision models and encoders.

The same conventions as ``FinetuneClassifier``: dict batches in (``image``, ``target`` mask, ``index``),
dict outputs with ``logits`` ``(N, C, H, W)`` and per-sample losses for the callbacks, the configured
loss optimized as configured, optimizer and scheduler callables, and freezing, per-stage LRs,
layer-wise LR decay and unfreeze schedules through the same helpers. Override ``build_network``,
``forward``, ``loss_terms`` or ``parameter_groups`` in research code.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.backbones import resolve_weights
from lit_finetune.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lit_finetune.freezing import FreezeSpec, freeze_patterns
from lit_finetune.freezing import freeze as freeze_parameters
from lit_finetune.losses import LossMetric, StatisticsLoss
from lit_finetune.module import LOSS_STATE_PREFIXES, per_sample_copy
from lit_finetune.param_groups import apply_lr_scales, held_groups, parameter_groups
from lit_finetune.schedulers import WarmupCosineLR
from lit_finetune.segmenters import build_segmenter
from lit_finetune.stages import backbone_stages
from lit_finetune.tasks.segmentation import SegmentationTask

log = logging.getLogger(__name__)

Palette = list[tuple[int, int, int]]


def weights_statistics(backbone: str, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization ``(mean, std)`` of the named weights (their ``transforms()``), else ImageNet's."""
    enum = resolve_weights(backbone, weights)
    if enum is not None:
        preset = enum.transforms()
        return tuple(preset.mean), tuple(preset.std)
    return IMAGENET_MEAN, IMAGENET_STD


class SegmentationModule(LightningModule):
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
        ignore_index: mask value of unlabeled pixels, left out of the default loss and the metrics.
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
        ignore_index: int | None = 255,
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
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        if aux_loss_weight < 0:
            raise ValueError(f"`aux_loss_weight` must be >= 0 (0 removes the auxiliary head), got {aux_loss_weight}.")
        if backbone_lr_mult < 0 or not 0 < layer_decay <= 1 or (head_lr is not None and head_lr <= 0):
            raise ValueError(
                f"Need head_lr > 0 (or None), backbone_lr_mult >= 0 and 0 < layer_decay <= 1; got head_lr={head_lr}, "
                f"backbone_lr_mult={backbone_lr_mult}, layer_decay={layer_decay}."
            )
        if palette is not None and len(palette) < num_classes:
            raise ValueError(f"`palette` has {len(palette)} colours for {num_classes} classes: give one RGB triple per class.")
        # Callables and modules stay out of the hyperparameters so checkpoints load with weights_only=True.
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
        self.task: SegmentationTask = SegmentationTask(num_classes, class_names, task, ignore_index, threshold)
        self.num_classes = num_classes
        self.num_outputs = self.task.num_outputs
        self.class_names = self.task.class_names
        self.palette: Palette | None = [tuple(int(v) for v in color) for color in palette] if palette is not None else None
        self.backbone_name = backbone
        self.weights = weights
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        mean, std = weights_statistics(backbone, weights)
        self.image_mean = tuple(image_mean) if image_mean is not None else mean
        self.image_std = tuple(image_std) if image_std is not None else std

        network = self.build_network()
        self.backbone, self.head = network.backbone, network.head
        # The network as a plain nn.Module (not registered twice): export and research code use it.
        self.__dict__["network"] = network
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.head_lr = head_lr
        self.stages = backbone_stages(self.backbone)
        self.frozen_parameters = set(freeze_parameters(self, freeze_patterns(self.hparams.freeze, self.stages), train_bn=train_bn))
        self.loss = self._prepare_loss(loss)
        self.loss_per_sample = per_sample_copy(self.loss)
        self.train_loss, self.val_loss, self.test_loss = (self._epoch_loss_metric(stage) for stage in ("train", "val", "test"))
        self.loss_term_metrics = nn.ModuleDict()
        metrics = self.build_metrics()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        class_metrics = self.task.build_class_metrics()
        self.val_class_metrics = class_metrics.clone(prefix="val/") if class_metrics is not None else None
        self.test_class_metrics = class_metrics.clone(prefix="test/") if class_metrics is not None else None

    # ------------------------------------------------------------------ override points
    def build_network(self) -> nn.Module:
        """The segmentation network: an ``nn.Module`` with ``backbone`` and ``head`` whose forward returns ``{"logits": ...}``."""
        hp = self.hparams
        return build_segmenter(
            self.backbone_name,
            self.num_outputs,
            weights=self.weights,
            weights_backbone=hp.weights_backbone,
            aux_loss=hp.aux_loss_weight > 0,
            decoder_channels=hp.decoder_channels or (256, 128, 64, 32),
            decoder_dropout=hp.decoder_dropout,
            channels_last=hp.channels_last,
            trust_pickle=hp.trust_pickle,
            backbone_kwargs=hp.backbone_kwargs,
        )

    def build_metrics(self) -> MetricCollection:
        """Metrics of train, val and test: the task's (``miou``, ``dice``, ``pixel_acc`` from one confusion matrix)."""
        return self.task.build_metrics()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits ``(N, C, H, W)`` of ``images`` (``(N, 3, H, W)``, normalized) at their size; ``aux_logits`` in training."""
        # The network is no registered child, so neither `eval()` nor Lightning's mode restore reaches its own flag.
        if self.network.training != self.training:
            self.network.training = self.training
        return self.network(images)

    def loss_terms(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """The loss terms of a batch, each a scalar, already weighted; their sum is optimized.

        ``loss``: the configured loss on the logits, as configured; ``loss_aux``: the auxiliary classifier
        in training. A subclass adds terms here; with more than one, each is logged too.
        """
        terms = {keys.LOSS: self.loss(outputs[keys.LOGITS], target).mean()}
        if keys.AUX_LOGITS in outputs:
            terms["loss_aux"] = self.hparams.aux_loss_weight * self.loss(outputs[keys.AUX_LOGITS], target).mean()
        return terms

    def compute_loss(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """The scalar that is optimized: the sum of :meth:`loss_terms`."""
        return torch.stack(list(self.loss_terms(outputs, target).values())).sum()

    @torch.no_grad()
    def sample_losses(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """Detached per-sample values of the configured loss ``(N,)`` (a per-pixel loss: its mean over labeled pixels)."""
        loss = self.loss_per_sample(outputs[keys.LOGITS].detach(), target)
        if loss.ndim <= 1:
            return loss
        loss = loss.flatten(1)
        ignore = self.task.ignore_index
        if ignore is None or loss.shape[1] != target[0].numel():
            return loss.mean(1)
        labeled = (target.reshape(len(target), -1) != ignore).float()
        return (loss * labeled).sum(1) / labeled.sum(1).clamp_min(1)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups handed to the optimizer: ``head`` (decoder, classifiers) and ``backbone.stage{i}``, as in ``FinetuneClassifier``."""
        return parameter_groups(
            self,
            self.stages,
            backbone_lr_mult=self.hparams.backbone_lr_mult,
            layer_decay=self.hparams.layer_decay,
            no_weight_decay_norm_bias=self.hparams.no_weight_decay_norm_bias,
            exclude=self.frozen_parameters,
            keep_separate=held_groups(self._trainer),  # stages an unfreeze schedule warms up keep their own groups
        )

    def backbone_is_frozen(self) -> bool:
        """True when no backbone parameter requires a gradient (it then runs in eval mode under ``no_grad`` in training)."""
        return self.network.backbone_is_frozen()

    def prepare_target(self, target: Tensor) -> Tensor:
        """Masks as the loss expects them (the task checks them and says what is wrong)."""
        return self.task.prepare_target(target)

    # ------------------------------------------------------------------ helpers
    def _prepare_loss(self, loss: nn.Module | None) -> nn.Module:
        weight = self._loss_weight()
        if loss is None:
            return self.task.default_loss(self.hparams.label_smoothing, weight)
        if weight is not None:
            raise ValueError("`class_weights` configure the default loss; give them to your own `loss` instead.")
        return loss

    def _loss_weight(self) -> Tensor | None:
        value = self.hparams.class_weights
        if value is None:
            return None
        if value == "auto":
            counts = self.hparams.class_counts
            if not counts:
                raise ValueError("class_weights='auto' needs `class_counts` (labeled pixels per class); give them or give the weights.")
            weight = self.task.class_weights(counts, int(sum(counts)))
            log.info("Loss weights from the pixel counts %s: %s", list(counts), [round(float(w), 4) for w in weight])
            return weight
        if len(value) != self.num_outputs:
            raise ValueError(f"{len(value)} class weights given for {self.num_outputs} classes: give one per class.")
        return torch.as_tensor(value, dtype=torch.float32)

    def _epoch_loss_metric(self, stage: str) -> Metric:
        # Losses of lit_finetune.losses that aggregate over the batch (a global Dice) get their exact epoch
        # value from summed statistics when the module optimizes that loss alone (no auxiliary head in training).
        alone = type(self).loss_terms is SegmentationModule.loss_terms and type(self).compute_loss is SegmentationModule.compute_loss
        aux = stage == "train" and "aux_classifier" in getattr(self.head, "keys", lambda: [])()
        if isinstance(self.loss, StatisticsLoss) and alone and not aux:
            return LossMetric(self.loss)
        return MeanMetric()

    def _log_losses(self, stage: str, terms: dict[str, Tensor], total: Tensor, logits: Tensor, target: Tensor) -> None:
        metric, n = getattr(self, f"{stage}_loss"), len(logits)
        if isinstance(metric, LossMetric):
            metric.update(logits, target)
        else:
            metric.update(total.detach(), weight=n)
        if len(terms) > 1:
            for name, value in terms.items():
                key = f"{stage}_{name}"
                if key not in self.loss_term_metrics:
                    self.loss_term_metrics[key] = MeanMetric().to(self.device)
                self.loss_term_metrics[key].update(value.detach(), weight=n)
                tag = f"{stage}/loss_main" if name == keys.LOSS else f"{stage}/{name}"
                self.log(tag, self.loss_term_metrics[key], on_step=False, on_epoch=True)

    def _shared_step(self, batch: dict, stage: str) -> dict[str, Tensor]:
        target = self.prepare_target(batch[keys.TARGET])
        outputs = self(batch[keys.IMAGE])
        terms = self.loss_terms(outputs, target) if type(self).compute_loss is SegmentationModule.compute_loss else None
        total = torch.stack(list(terms.values())).sum() if terms is not None else self.compute_loss(outputs, target)
        logits = outputs[keys.LOGITS].detach()
        self._log_losses(stage, terms or {keys.LOSS: total}, total, logits, target)
        inputs = self.task.metric_inputs(logits, target)
        getattr(self, f"{stage}_metrics").update(*inputs)
        per_class = getattr(self, f"{stage}_class_metrics", None)
        if per_class is not None:
            per_class.update(*inputs)
        return {
            keys.LOSS: total,
            keys.SAMPLE_LOSS: self.sample_losses(outputs, target),
            keys.LOGITS: logits,
            keys.TARGET: target,
            keys.INDEX: batch[keys.INDEX],
        }

    def _log_class_metrics(self, stage: str) -> None:
        # Per-class values are a dict, which Lightning cannot log as metric objects: computed (and synced) here.
        per_class = getattr(self, f"{stage}_class_metrics")
        if per_class is None or not any(metric.update_called for metric in per_class.values()):
            return
        values = per_class.compute()
        # A class absent from target and prediction has no IoU (NaN): it is not logged.
        self.log_dict({name: value for name, value in values.items() if not bool(value.isnan())})
        per_class.reset()

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        palette = getattr(datamodule, "palette", None)
        if self.palette is None and palette:
            self.palette = [tuple(int(v) for v in color) for color in palette]
            given = getattr(datamodule, "hparams", {}).get("palette")
            if given is not None and self.hparams.get("palette") is None:
                # Loggers merge the model's and the data's hyperparameters and refuse two values of one name;
                # stored here, the palette also travels with the checkpoint.
                self.save_hyperparameters({**self.hparams, "palette": given})

    @override
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "train")
        self.log("train/loss", out[keys.LOSS], on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return out

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "val")
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return out

    @override
    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "test")
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)
        return out

    @override
    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """``path``, ``index``, ``original_size`` (when the batch has it), ``logits`` at the input size and the task's ``prediction``."""
        logits = self(batch[keys.IMAGE])[keys.LOGITS]
        images = batch[keys.IMAGE]
        size = batch.get(keys.ORIGINAL_SIZE)
        if size is None:  # the input size, per image
            size = torch.tensor([images.shape[-2:]] * len(images), dtype=torch.long, device=images.device)
        return {
            keys.PATH: batch.get(keys.PATH),
            keys.INDEX: batch[keys.INDEX],
            keys.ORIGINAL_SIZE: size,
            keys.LOGITS: logits,
            keys.PREDICTION: self.task.predict(logits),
        }

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_class_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_class_metrics("test")

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        apply_lr_scales(optimizer, self.head_lr)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            steps = self.trainer.estimated_stepping_batches if self.hparams.scheduler_interval == "step" else self.trainer.max_epochs
            scheduler.total_steps = int(steps)
        config = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The class to rebuild for `lit-finetune export` when the hyperparameters hold no `_class_path` (plain `Trainer.fit`).
        checkpoint["module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["class_names"] = self.class_names
        checkpoint["palette"] = [list(color) for color in self.palette] if self.palette is not None else None

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The loss is configuration, not learned state: its buffers come from the config the model was built with.
        if checkpoint.get("palette") and self.palette is None:
            self.palette = [tuple(int(v) for v in color) for color in checkpoint["palette"]]
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for key in [k for k in state if k.startswith(LOSS_STATE_PREFIXES)]:
            del state[key]
        state.update({k: v for k, v in self.state_dict().items() if k.startswith(LOSS_STATE_PREFIXES)})
