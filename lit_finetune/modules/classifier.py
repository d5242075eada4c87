"""``FinetuneClassifier``: a LightningModule around any torchvision classification backbone.

Built to be subclassed: override ``build_backbone``, ``build_head``, ``forward``, ``compute_loss``
or ``parameter_groups`` and keep the rest (metrics, logging, optimizer and scheduler wiring, shared with
``SegmentationModule`` in ``lit_finetune.modules.base.TaskLightningModule``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.models.backbones import MIN_INPUT_SIZE, create_backbone
from lit_finetune.models.preprocessing import weights_preprocessing
from lit_finetune.optim.feature_cache import FeatureCache
from lit_finetune.optim.freezing import FreezeSpec
from lit_finetune.models.heads import ClassifierHead
from lit_finetune.models.classifier import ClassifierNetwork
from lit_finetune.modules.base import LOSS_STATE_PREFIXES, TaskLightningModule, per_sample_copy
from lit_finetune.tasks import build_task, has_soft_targets, loss_weight
from lit_finetune.modules.tta import TTAMode, check_tta, tta_logits

log = logging.getLogger(__name__)

TaskName = Literal["multiclass", "multilabel", "binary"]
__all__ = ["LOSS_STATE_PREFIXES", "FinetuneClassifier", "TaskName", "per_sample_copy"]


class FinetuneClassifier(TaskLightningModule):
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
        loss: the loss module, optimized exactly as configured (its own ``reduction`` and ``aggregation``:
            a global Dice is computed over the whole batch). It needs a ``reduction`` attribute: a detached
            copy with ``reduction="none"`` (and ``aggregation="per_sample"``) gives the per-sample losses that
            callbacks read. None: cross-entropy (multiclass) or BCE-with-logits (multilabel, binary).
            The logged epoch loss is exact: for losses of ``lit_finetune.losses`` that aggregate over the
            batch, the loss over all samples of the epoch (``LossMetric``); otherwise the batch losses'
            mean weighted by batch size.
        label_smoothing: label smoothing ``e`` of the default loss: cross-entropy's (multiclass); for multilabel and
            binary, BCE targets ``y (1 - e) + e / 2``. With a ``loss`` of your own it must stay 0 (give it to your loss).
        threshold: multilabel and binary: the probability above which a label is predicted (one value,
            or one per class for multilabel). Used by predictions, F1 and exact-match metrics.
        class_weights: multiclass: per-class weights of the default cross-entropy, or ``"auto"``
            (inverse frequency from ``class_counts``).
        pos_weight: multilabel and binary: ``pos_weight`` of the default BCE (one per class), or ``"auto"``
            (negatives / positives per class from ``class_counts``; a label without positive or without negative
            training images is an error naming it).
        class_counts: training images per class (multilabel: positives per class), filled in from the data
            by the command line; needed for ``"auto"`` weights.
        num_train_samples: training images (the total that multilabel ``class_counts`` count positives of),
            filled in by the command line; None: the sum of ``class_counts``.
        image_mean: normalization mean of the input images (used to show them in TensorBoard); None:
            that of the weights. The command line links it from the data.
        image_std: likewise, the normalization std.
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
        channels_last: use the channels-last memory format (faster convolutions on recent GPUs; on CPU measure it:
            docs/recipes.md, Throughput).
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
        tta: test-time augmentation of ``validate``, ``test`` and ``predict`` (not of the validation inside
            ``fit``): ``"none"``, ``"hflip"`` (2 views), ``"five_crop"`` (5) or ``"ten_crop"`` (10). The
            task's probabilities are averaged over the views; metrics, predictions and callbacks get the
            logits of the averaged probabilities, and the logged loss is the configured loss on those
            logits (cross-entropy: the NLL of the averaged probabilities). Export does not include it.
        tta_crop_fraction: side of the ``five_crop``/``ten_crop`` crops relative to the image side (each crop
            is resized back to the input size).
        compile: ``torch.compile`` the backbone and the head (each on its own, used in the training,
            validation, test and predict steps; calls from callbacks run eagerly).
        compile_backend: the ``torch.compile`` backend (``"inductor"`` needs a C compiler on CPU;
            ``"aot_eager"`` does not).

    Raises:
        ValueError: unknown backbone or weights, bad class count, or a loss without ``reduction``.

    Example::

        model = FinetuneClassifier(num_classes=2, backbone="resnet18", weights="DEFAULT",
                                   optimizer=lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9))
        out = model(torch.randn(4, 3, 224, 224), return_features=True)
        out["logits"].shape, out["features"].shape  # (4, 2), (4, 512)
    """

    _loss_weight_options = "`class_weights` / `pos_weight`"

    network: ClassifierNetwork

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        weights: str | None = None,
        task: TaskName = "multiclass",
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
        threshold: float | list[float] = 0.5,
        class_weights: Literal["auto"] | list[float] | None = None,
        pos_weight: Literal["auto"] | list[float] | None = None,
        class_counts: list[int] | None = None,
        num_train_samples: int | None = None,
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        tta: TTAMode = "none",
        tta_crop_fraction: float = 0.875,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        check_tta(tta, tta_crop_fraction)
        self._check_options(label_smoothing, head_lr, backbone_lr_mult, layer_decay)
        # Callables and modules stay out of the hyperparameters so checkpoints load with weights_only=True.
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
        self._init_task(build_task(task, num_classes, class_names, threshold), backbone, weights, optimizer, lr_scheduler)
        pre = weights_preprocessing(backbone, weights)
        self._init_normalization(image_mean, image_std, (pre.mean, pre.std))
        self.min_input_size = MIN_INPUT_SIZE.get(backbone, 32)

        self.backbone, self.feature_size = self.build_backbone()
        self.head = self.build_head(self.feature_size)
        self._attach_network(ClassifierNetwork(self.backbone, self.head, channels_last), channels_last)
        if compile:
            self.network.compile_parts(compile_backend)
        self._init_freezing(freeze, train_bn, head_lr)
        if cache_features and type(self).forward is not FinetuneClassifier.forward:
            raise ValueError("cache_features=True feeds cached features to the head and bypasses `forward`: leave it off in subclasses that override `forward`.")
        self.feature_caches = {"train": FeatureCache(), "val": FeatureCache()}
        self._init_loss_and_metrics(loss)

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

    def forward(self, images: Tensor, return_features: bool = False) -> dict[str, Tensor]:
        """Class logits of ``images`` (``(N, 3, H, W)``, normalized) and, if asked, their pooled features."""
        return self.network(images, return_features=return_features)

    def backbone_features(self, images: Tensor) -> Any:
        """The backbone's output for ``images`` (see :meth:`ClassifierNetwork.features`)."""
        return self.network.features(images)

    # ------------------------------------------------------------------ hooks of TaskLightningModule
    @override
    def _loss_weight(self) -> Tensor | None:
        class_weights, pos_weight = self.hparams.class_weights, self.hparams.pos_weight
        if class_weights is not None and self.task.name != "multiclass":
            raise ValueError(f"`class_weights` is for task 'multiclass'; task '{self.task.name}' takes `pos_weight`.")
        if pos_weight is not None and self.task.name == "multiclass":
            raise ValueError("`pos_weight` is for tasks 'multilabel' and 'binary'; task 'multiclass' takes `class_weights`.")
        value = class_weights if class_weights is not None else pos_weight
        counts = self.hparams.class_counts
        # Multiclass and binary counts partition the images; multilabel counts do not, so the data gives the total.
        return loss_weight(self.task, value, counts, getattr(self.hparams, "num_train_samples", None), "training label")

    @override
    def _has_aux_loss(self, stage: str) -> bool:
        return self.backbone_name == "inception_v3"

    @override
    def _step_outputs(self, batch: dict, stage: str) -> dict[str, Tensor]:
        """The forward of a step: compiled parts when ``compile``, test-time augmentation or cached features when on."""
        with self.network.compiled_calls(self.hparams.compile):
            if self._uses_tta():
                forward = lambda images: self(images)[keys.LOGITS]  # noqa: E731
                return {keys.LOGITS: tta_logits(self.task, forward, batch[keys.IMAGE], self.hparams.tta, self.hparams.tta_crop_fraction)}
            if self._uses_cache(batch, stage):
                return self._cached_forward(batch, stage)
            return self(batch[keys.IMAGE])

    @override
    def _scores_batch(self, batch: dict) -> bool:
        # A mixed batch (multilabel targets can stay 0/1) or soft targets are not scored against hard labels;
        # decided from the `mixed` key and the target's shape, never its values (no device sync per step).
        return not has_soft_targets(self.task, batch)

    @override
    def _reported_target(self, batch: dict, target: Tensor) -> Tensor:
        return batch[keys.TARGET]  # as the data gives it (binary: (N,)); the loss alone gets the prepared one

    # ------------------------------------------------------------------ helpers
    def _cached_forward(self, batch: dict, stage: str) -> dict[str, Tensor]:
        """Logits from cached features (computed with the frozen backbone on first sight)."""
        cache, images, index = self.feature_caches[stage], batch[keys.IMAGE], batch[keys.INDEX]
        if stage == "train" and not cache.verified and bool(cache.is_cached(index).all()):
            cache.verify(index, self(images, return_features=True)[keys.FEATURES])
        features = cache.lookup(index, lambda missing: self(images[missing], return_features=True)[keys.FEATURES])
        return {keys.LOGITS: self.head(features)}

    def _uses_cache(self, batch: dict, stage: str) -> bool:
        # A mixed batch's images are not the indexed samples': their features cannot be cached by index.
        mixed = batch.get(keys.MIXED, False)
        return self.hparams.cache_features and stage in self.feature_caches and keys.INDEX in batch and not mixed and self.backbone_is_frozen()

    def _uses_tta(self) -> bool:
        # validate/test/predict only: the validation inside fit (checkpoint selection) stays plain and cheap.
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return self.hparams.tta != "none" and not self.training and not fitting

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def on_fit_start(self) -> None:
        for cache in self.feature_caches.values():
            cache.clear()  # the weights may have changed since the last fit

    @override
    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        prediction = self.task.predict(self._step_outputs(batch, "predict")[keys.LOGITS])
        return {
            keys.PATH: batch[keys.PATH],
            keys.INDEX: batch[keys.INDEX],
            keys.PREDICTION: prediction,
            "pred": prediction.pred,
            "prob": prediction.prob,
            "probs": prediction.probs,
        }
