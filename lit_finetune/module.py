"""``FinetuneClassifier``: a LightningModule around any torchvision classification backbone.

Built to be subclassed: override ``build_backbone``, ``build_head``, ``forward``, ``compute_loss``
or ``parameter_groups`` and keep the rest (metrics, logging, optimizer and scheduler wiring).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Accuracy, F1Score, MeanMetric, Metric, MetricCollection

from lit_finetune import keys
from lit_finetune.backbones import MIN_INPUT_SIZE, create_backbone
from lit_finetune.data.transforms import default_preprocessing
from lit_finetune.finetuning import (
    FeatureCache,
    FreezeSpec,
    apply_lr_scales,
    backbone_stages,
    freeze_patterns,
    parameter_groups,
)
from lit_finetune.finetuning import freeze as freeze_parameters
from lit_finetune.heads import ClassifierHead
from lit_finetune.losses import LossMetric, StatisticsLoss
from lit_finetune.schedulers import WarmupCosineLR

log = logging.getLogger(__name__)

Task = Literal["multiclass", "multilabel", "binary"]
LOSS_STATE_PREFIXES = ("loss.", "train_loss.", "val_loss.", "test_loss.")
"""State-dict keys of the loss and of the metrics that wrap it."""


def predict_classes(logits: Tensor, task: str) -> tuple[Tensor, Tensor, Tensor]:
    """Class probabilities, the predicted class and its probability, per sample.

    multiclass: softmax and argmax; multilabel: a sigmoid per class and the most probable class;
    binary (one output): class 1 when its sigmoid is above 0.5, with the probability of the class chosen.
    """
    if task == "multiclass":
        probs = logits.softmax(dim=1)
        prob, pred = probs.max(dim=1)
        return probs, pred, prob
    probs = logits.sigmoid()
    if task == "multilabel":
        prob, pred = probs.max(dim=1)
        return probs, pred, prob
    p = probs.reshape(len(probs), -1)[:, 0]
    pred = (p > 0.5).long()
    return probs, pred, torch.where(pred.bool(), p, 1 - p)


class FinetuneClassifier(LightningModule):
    """Fine-tune a torchvision classifier on your own classes.

    Args:
        num_classes: number of classes (for ``task="binary"``: 1 or 2; the model has one output).
            Filled in from the data by the command line.
        backbone: a torchvision classification model name (``torchvision.models.list_models()``).
        weights: None (random init), a weights name of the backbone (``"DEFAULT"``, ``"IMAGENET1K_V1"``)
            or a path to a local ``.pth``/``.pt``/``.safetensors`` state_dict. The head is replaced after loading.
        task: ``"multiclass"`` (one class per image), ``"multilabel"`` (any number of classes, float
            multi-hot targets) or ``"binary"`` (one sigmoid output).
        head_hidden_dims: widths of hidden layers in the head; empty for a single Linear layer.
        head_dropout: dropout before each Linear layer of the head.
        loss: the loss module; it must accept ``reduction="none"`` (per-sample losses are kept for
            callbacks). None: cross-entropy (multiclass) or BCE-with-logits (multilabel, binary).
            The mean of the per-sample losses is optimized. The logged epoch loss is their exact mean,
            or, for losses of ``lit_finetune.losses`` that aggregate over the batch (``aggregation="global"``
            Dice/Jaccard/Tversky), the loss's exact value over all samples (``LossMetric``); use
            ``aggregation="per_sample"`` to make the two the same.
        label_smoothing: label smoothing of the default cross-entropy.
        aux_loss_weight: weight of inception_v3's auxiliary-head loss in training; 0 removes that head
            (needed for inputs under 299 px).
        backbone_kwargs: extra arguments of the torchvision builder, e.g. ``{"image_size": 64}`` for a
            vit trained from scratch on small images.
        optimizer: the optimizer, given its parameter groups (any ``torch.optim`` class from YAML).
        lr_scheduler: the learning-rate scheduler, given the optimizer; None: constant LR.
        scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"``.
        scheduler_monitor: metric that ``ReduceLROnPlateau`` watches.
        class_names: names of the classes, stored in checkpoints and hyperparameters.
        trust_pickle: allow a local weights file holding a whole pickled model (runs code from the file).
        channels_last: use the channels-last memory format (faster convolutions on recent GPUs).
        freeze: what to freeze: ``"none"``, ``"backbone"`` (all but the head), the number of leading
            backbone stages (``2``), or a list of module/parameter-name globs (``["backbone.layer1*"]``).
            Frozen parameters get ``requires_grad=False`` and stay out of the optimizer. A backbone frozen
            whole runs in eval mode under ``no_grad``. Stages per family: ``docs/finetuning.md``.
        train_bn: keep BatchNorm layers inside frozen parts training (fastai's default); False holds them
            in eval mode so their running statistics never move.
        head_lr: LR of the head groups; None takes the optimizer's ``lr``. The LR finder sets it.
        backbone_lr_mult: backbone LR relative to the head LR (0.1 is common; 0 keeps the weights fixed
            through the optimizer, like the seed's lr=0 group).
        layer_decay: layer-wise LR decay: backbone stage ``i`` of ``n`` gets
            ``head_lr * backbone_lr_mult * layer_decay ** (n - i)``; 1 disables it.
        no_weight_decay_norm_bias: no weight decay on norm layers, biases and position embeddings/tokens.
        cache_features: with a frozen backbone and deterministic transforms, compute each sample's pooled
            features once and train the head on the cache afterwards (linear probing).

    Raises:
        ValueError: unknown backbone or weights, bad class count, or a loss without ``reduction``.

    Example::

        model = FinetuneClassifier(num_classes=2, backbone="resnet18", weights="DEFAULT",
                                   optimizer=lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9))
        out = model(torch.randn(4, 3, 224, 224), return_features=True)
        out["logits"].shape, out["features"].shape  # (4, 2), (4, 512)
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        weights: str | None = None,
        task: Task = "multiclass",
        head_hidden_dims: list[int] | None = None,
        head_dropout: float = 0.0,
        loss: nn.Module | None = None,
        label_smoothing: float = 0.0,
        aux_loss_weight: float = 0.4,
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        class_names: list[str] | None = None,
        trust_pickle: bool = False,
        channels_last: bool = False,
        freeze: FreezeSpec = "none",
        train_bn: bool = False,
        head_lr: float | None = None,
        backbone_lr_mult: float = 1.0,
        layer_decay: float = 1.0,
        no_weight_decay_norm_bias: bool = True,
        cache_features: bool = False,
    ) -> None:
        super().__init__()
        if task not in ("multiclass", "multilabel", "binary"):
            raise ValueError(f"Unknown task '{task}'; choose multiclass, multilabel or binary.")
        if task == "binary" and num_classes not in (1, 2):
            raise ValueError(f"task='binary' needs num_classes 1 or 2 (one output), got {num_classes}. Use task='multiclass' for more classes.")
        if num_classes < 1 or (task == "multiclass" and num_classes < 2):
            raise ValueError(f"num_classes={num_classes} is too small for task '{task}'.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}: they must match.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        if backbone_lr_mult < 0 or not 0 < layer_decay <= 1 or (head_lr is not None and head_lr <= 0):
            raise ValueError(
                f"Need head_lr > 0 (or None), backbone_lr_mult >= 0 and 0 < layer_decay <= 1; got head_lr={head_lr}, "
                f"backbone_lr_mult={backbone_lr_mult}, layer_decay={layer_decay}."
            )
        # Callables and modules stay out of the hyperparameters so checkpoints load with weights_only=True.
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
        self.task = task
        self.num_classes = num_classes
        self.num_outputs = 1 if task == "binary" else num_classes
        self.class_names = list(class_names) if class_names else None
        self.backbone_name = backbone
        self.weights = weights
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        pre = default_preprocessing(backbone, weights)
        self.image_mean, self.image_std = pre.mean, pre.std
        self.min_input_size = MIN_INPUT_SIZE.get(backbone, 32)

        self.backbone, self.feature_size = self.build_backbone()
        self.head = self.build_head(self.feature_size)
        self.head_lr = head_lr
        self.stages = backbone_stages(self.backbone)
        self.frozen_parameters = set(freeze_parameters(self, freeze_patterns(freeze, self.stages), train_bn=train_bn))
        if cache_features and type(self).forward is not FinetuneClassifier.forward:
            raise ValueError("cache_features=True feeds cached features to the head and bypasses `forward`: leave it off in subclasses that override `forward`.")
        self.feature_caches = {"train": FeatureCache(), "val": FeatureCache()}
        self.loss = self._prepare_loss(loss)
        self.train_loss, self.val_loss, self.test_loss = (self._epoch_loss_metric() for _ in range(3))
        metrics = self.build_metrics()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # ------------------------------------------------------------------ override points
    def build_backbone(self) -> tuple[nn.Module, int]:
        """Return the backbone (final layer removed) and the width of its pooled features."""
        return create_backbone(
            self.backbone_name,
            self.weights,
            self.num_outputs,
            trust_pickle=self.hparams.trust_pickle,
            aux_logits=self.hparams.aux_loss_weight > 0,
            model_kwargs=self.hparams.backbone_kwargs,
        )

    def build_head(self, in_features: int) -> nn.Module:
        """Return the head that maps pooled features to ``num_outputs`` logits."""
        return ClassifierHead(in_features, self.num_outputs, self.hparams.head_hidden_dims, self.hparams.head_dropout)

    def build_metrics(self) -> MetricCollection:
        """Metrics computed on train, val and test (torchmetrics, reduced correctly under DDP)."""
        if self.task == "binary":
            return MetricCollection({"acc": Accuracy(task="binary"), "f1": F1Score(task="binary")})
        if self.task == "multilabel":
            n = self.num_classes
            return MetricCollection({"acc": Accuracy(task="multilabel", num_labels=n), "f1": F1Score(task="multilabel", num_labels=n, average="macro")})
        metrics = {
            "acc": Accuracy(task="multiclass", num_classes=self.num_classes),
            "f1": F1Score(task="multiclass", num_classes=self.num_classes, average="macro"),
        }
        if self.num_classes >= 5:
            metrics["acc_top5"] = Accuracy(task="multiclass", num_classes=self.num_classes, top_k=5)
        return MetricCollection(metrics)

    def forward(self, images: Tensor, return_features: bool = False) -> dict[str, Tensor]:
        """Class logits of ``images`` (``(N, 3, H, W)``, normalized) and, if asked, their pooled features."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.backbone_features(images)
        aux = None
        if isinstance(out, tuple):  # inception_v3 in training: (features, aux_logits)
            out, aux = out
        result = {keys.LOGITS: self.head(out)}
        if return_features:
            result[keys.FEATURES] = out
        if aux is not None:
            result[keys.AUX_LOGITS] = aux
        return result

    def compute_loss(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """Per-sample losses, shape ``(N,)``: the mean is optimized, the values go to callbacks."""
        loss = self._per_sample(self.loss(outputs[keys.LOGITS], target))
        if keys.AUX_LOGITS in outputs:
            loss = loss + self.hparams.aux_loss_weight * self._per_sample(self.loss(outputs[keys.AUX_LOGITS], target))
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups handed to the optimizer (each may set its own ``lr``/``weight_decay``; ``name`` shows in LearningRateMonitor).

        Default: ``head``, then ``backbone.stage{i}`` for each stage, each split off a ``.no_decay``
        group; ``lr_scale`` (LR relative to ``head_lr``) is turned into ``lr`` once the optimizer is built.
        Parameters frozen by ``freeze`` are left out; those an unfreeze schedule holds are kept.
        """
        return parameter_groups(
            self,
            self.stages,
            backbone_lr_mult=self.hparams.backbone_lr_mult,
            layer_decay=self.hparams.layer_decay,
            no_weight_decay_norm_bias=self.hparams.no_weight_decay_norm_bias,
            exclude=self.frozen_parameters,
        )

    def backbone_is_frozen(self) -> bool:
        """True when no backbone parameter requires a gradient: the backbone then runs in eval mode under ``no_grad``."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def backbone_features(self, images: Tensor) -> Any:
        """The backbone's output for ``images``; in training, a frozen backbone runs in eval mode without autograd (keeps no activations).

        Outside training the backbone runs as it is, so that tools which need gradients with respect to
        activations (Grad-CAM) work on a frozen backbone too.
        """
        if not (self.training and self.backbone_is_frozen()):
            return self.backbone(images)
        modes = [module.training for module in self.backbone.modules()]
        self.backbone.eval()
        try:
            with torch.no_grad():
                return self.backbone(images)
        finally:
            for module, mode in zip(self.backbone.modules(), modes):
                module.training = mode

    # ------------------------------------------------------------------ helpers
    def _prepare_loss(self, loss: nn.Module | None) -> nn.Module:
        if loss is None:
            if self.task == "multiclass":
                return nn.CrossEntropyLoss(reduction="none", label_smoothing=self.hparams.label_smoothing)
            return nn.BCEWithLogitsLoss(reduction="none")
        if not hasattr(loss, "reduction"):
            raise ValueError(
                f"The loss {type(loss).__name__} has no `reduction` attribute: the module needs per-sample losses "
                "(reduction='none'). Wrap it or override `compute_loss`."
            )
        loss.reduction = "none"
        return loss

    def _epoch_loss_metric(self) -> Metric:
        # Losses of lit_finetune.losses that aggregate globally (a Dice over all samples) get their exact
        # epoch value from summed statistics; for the others the exact epoch value is the mean of the
        # per-sample losses, kept as a sum and a count (both reduce correctly under DDP).
        return LossMetric(self.loss) if isinstance(self.loss, StatisticsLoss) else MeanMetric()

    def _update_epoch_loss(self, stage: str, sample_loss: Tensor, logits: Tensor, target: Tensor) -> None:
        metric = getattr(self, f"{stage}_loss")
        if isinstance(metric, LossMetric):
            metric.update(logits, target)
        else:
            metric.update(sample_loss.detach())

    @staticmethod
    def _per_sample(loss: Tensor) -> Tensor:
        return loss.flatten(1).mean(1) if loss.ndim > 1 else loss

    def prepare_target(self, target: Tensor) -> Tensor:
        """Targets as the loss expects them: class indices (multiclass) or floats shaped like the logits."""
        if self.task == "binary":
            return target.float().reshape(-1, 1)
        if self.task == "multilabel":
            return target.float()
        return target

    def _metric_inputs(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if self.task == "binary":
            return logits.squeeze(1), target.reshape(-1).long()
        if self.task == "multilabel":
            return logits, target.long()
        return logits, target

    def _cached_forward(self, batch: dict, stage: str) -> dict[str, Tensor]:
        """Logits from cached features (computed with the frozen backbone on first sight)."""
        cache, images, index = self.feature_caches[stage], batch[keys.IMAGE], batch[keys.INDEX]
        if stage == "train" and not cache.verified and bool(cache.is_cached(index).all()):
            cache.verify(index, self(images, return_features=True)[keys.FEATURES])
        features = cache.lookup(index, lambda missing: self(images[missing], return_features=True)[keys.FEATURES])
        return {keys.LOGITS: self.head(features)}

    def _uses_cache(self, batch: dict, stage: str) -> bool:
        return self.hparams.cache_features and stage in self.feature_caches and keys.INDEX in batch and self.backbone_is_frozen()

    def _shared_step(self, batch: dict, stage: str) -> dict[str, Tensor]:
        target = self.prepare_target(batch[keys.TARGET])
        outputs = self._cached_forward(batch, stage) if self._uses_cache(batch, stage) else self(batch[keys.IMAGE])
        sample_loss = self.compute_loss(outputs, target)
        logits = outputs[keys.LOGITS].detach()
        self._update_epoch_loss(stage, sample_loss, logits, target)
        getattr(self, f"{stage}_metrics").update(*self._metric_inputs(logits, batch[keys.TARGET]))
        return {
            keys.LOSS: sample_loss.mean(),
            keys.SAMPLE_LOSS: sample_loss.detach(),
            keys.LOGITS: logits,
            keys.TARGET: batch[keys.TARGET],
            keys.INDEX: batch[keys.INDEX],
        }

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        for cache in self.feature_caches.values():
            cache.clear()  # the weights may have changed since the last fit
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "train")
        self.log("train/loss", out[keys.LOSS], on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "val")
        # Logged as metric objects: Lightning computes them once per epoch over all samples (and ranks).
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return out

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "test")
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)
        return out

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        probs, pred, prob = predict_classes(self(batch[keys.IMAGE])[keys.LOGITS], self.task)
        return {keys.PATH: batch[keys.PATH], keys.INDEX: batch[keys.INDEX], "pred": pred, "prob": prob, "probs": probs}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        apply_lr_scales(optimizer, self.head_lr)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            # The schedule spans the whole run: optimizer steps (interval "step") or epochs.
            steps = self.trainer.estimated_stepping_batches if self.hparams.scheduler_interval == "step" else self.trainer.max_epochs
            scheduler.total_steps = int(steps)
        config = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = self.class_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The loss is configuration, not learned state: its buffers (class weights) come from the config
        # the model was built with, so a checkpoint saved with another loss still loads strictly.
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for key in [k for k in state if k.startswith(LOSS_STATE_PREFIXES)]:
            del state[key]
        state.update({k: v for k, v in self.state_dict().items() if k.startswith(LOSS_STATE_PREFIXES)})
