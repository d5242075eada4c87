"""``FinetuneClassifier``: a LightningModule around any torchvision classification backbone.

Built to be subclassed: override ``build_backbone``, ``build_head``, ``forward``, ``loss_terms``
or ``parameter_groups`` and keep the rest (metrics, logging, optimizer and scheduler wiring, shared with
``SegmentationModule`` in ``lit_finetune.modules.base.TaskLightningModule``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.models.backbones import MIN_INPUT_SIZE, create_backbone
from lit_finetune.models.classifier import ClassifierNetwork
from lit_finetune.models.heads import ClassifierHead
from lit_finetune.models.preprocessing import weights_preprocessing
from lit_finetune.modules.base import LOSS_STATE_PREFIXES, TaskLightningModule
from lit_finetune.modules.options import TrainingOptions, per_sample_copy, resolve_loss
from lit_finetune.modules.tta import TTAMode, check_tta, tta_logits
from lit_finetune.optim.feature_cache import FeatureCache
from lit_finetune.optim.freezing import FreezeSpec
from lit_finetune.tasks import build_task, loss_weight

log = logging.getLogger(__name__)

TaskName = Literal["multiclass", "multilabel", "binary"]
__all__ = ["LOSS_STATE_PREFIXES", "FinetuneClassifier", "NetworkSpec", "TaskName", "per_sample_copy"]


@dataclass(frozen=True)
class NetworkSpec:
    """What :meth:`FinetuneClassifier.build_backbone` and :meth:`~FinetuneClassifier.build_head` build from: the module's options that shape the network.

    Args:
        backbone: the torchvision model name.
        weights: None, a weights name of the backbone or a path to a local state_dict.
        num_outputs: width of the logits (the task's).
        head_hidden_dims: widths of hidden layers in the head.
        head_dropout: dropout before each Linear layer of the head.
        aux_logits: keep the auxiliary head of inception_v3.
        trust_pickle: allow a local weights file holding a whole pickled model.
        backbone_kwargs: extra arguments of the torchvision builder.
    """

    backbone: str
    weights: str | None
    num_outputs: int
    head_hidden_dims: list[int] | None = None
    head_dropout: float = 0.0
    aux_logits: bool = True
    trust_pickle: bool = False
    backbone_kwargs: dict[str, Any] | None = None


def _weight_option(task: str, class_weights: Any, pos_weight: Any) -> Any:
    """The loss-weight option the task takes; a clear error for the other one."""
    if class_weights is not None and task != "multiclass":
        raise ValueError(f"`class_weights` is for task 'multiclass'; task '{task}' takes `pos_weight`.")
    if pos_weight is not None and task == "multiclass":
        raise ValueError("`pos_weight` is for tasks 'multilabel' and 'binary'; task 'multiclass' takes `class_weights`.")
    return class_weights if task == "multiclass" else pos_weight


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
        check_tta(tta, tta_crop_fraction)
        options = TrainingOptions(
            freeze, train_bn, head_lr, backbone_lr_mult, layer_decay, no_weight_decay_norm_bias,
            scheduler_interval, scheduler_monitor, aux_loss_weight, channels_last,
        )  # fmt: skip
        if cache_features and type(self).forward is not FinetuneClassifier.forward:
            raise ValueError(
                "cache_features=True feeds cached features to the head and bypasses `forward`: leave it off in subclasses that override `forward`."
            )
        task_object = build_task(task, num_classes, class_names, threshold)
        # Multiclass and binary counts partition the images; multilabel counts do not, so the data gives the total.
        weight = loss_weight(
            task_object, _weight_option(task, class_weights, pos_weight), class_counts, num_train_samples, "training label"
        )
        spec = NetworkSpec(
            backbone, weights, task_object.num_outputs, head_hidden_dims, head_dropout, aux_loss_weight > 0, trust_pickle, backbone_kwargs
        )
        network_backbone, feature_size = self.build_backbone(spec)
        network = ClassifierNetwork(network_backbone, self.build_head(feature_size, spec), channels_last)
        pre = weights_preprocessing(backbone, weights)
        super().__init__(
            task_object,
            network,
            resolve_loss(task_object, loss, label_smoothing, weight, "`class_weights` / `pos_weight`"),
            optimizer,
            lr_scheduler,
            options,
            backbone_name=backbone,
            image_mean=image_mean or pre.mean,
            image_std=image_std or pre.std,
        )
        self.weights = weights
        self.feature_size = feature_size
        self.min_input_size = MIN_INPUT_SIZE.get(backbone, 32)
        if compile:
            self.network.compile_parts(compile_backend)
        self.feature_caches = {"train": FeatureCache(), "val": FeatureCache()}

    # ------------------------------------------------------------------ override points
    def build_backbone(self, spec: NetworkSpec) -> tuple[nn.Module, int]:
        """Return the backbone (final layer removed) and the width of its pooled features.

        Called by ``__init__`` before the module is set up: use ``spec``, not ``self``'s attributes.
        """
        return create_backbone(
            spec.backbone,
            spec.weights,
            spec.num_outputs,
            trust_pickle=spec.trust_pickle,
            aux_logits=spec.aux_logits,
            model_kwargs=spec.backbone_kwargs,
        )

    def build_head(self, in_features: int, spec: NetworkSpec) -> nn.Module:
        """Return the head that maps pooled features to ``spec.num_outputs`` logits (called like :meth:`build_backbone`)."""
        return ClassifierHead(in_features, spec.num_outputs, spec.head_hidden_dims, spec.head_dropout)

    def forward(self, images: Tensor, return_features: bool = False) -> dict[str, Tensor]:
        """Class logits of ``images`` (``(N, 3, H, W)``, normalized) and, if asked, their pooled features."""
        return self.network(images, return_features=return_features)

    def backbone_features(self, images: Tensor) -> Any:
        """The backbone's output for ``images`` (see :meth:`ClassifierNetwork.features`)."""
        return self.network.features(images)

    # ------------------------------------------------------------------ hook of TaskLightningModule
    @override
    def _step_outputs(self, batch: dict, stage: str) -> dict[str, Tensor]:
        """The forward of a step: compiled parts when ``compile``, test-time augmentation or cached features when on."""
        with self.network.compiled_calls(self.hparams.compile):
            if self._uses_tta():

                def forward(images):
                    return self(images)[keys.LOGITS]

                return {keys.LOGITS: tta_logits(self.task, forward, batch[keys.IMAGE], self.hparams.tta, self.hparams.tta_crop_fraction)}
            if self._uses_cache(batch, stage):
                return self._cached_forward(batch, stage)
            return self(batch[keys.IMAGE])

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
        return (
            self.hparams.cache_features and stage in self.feature_caches and keys.INDEX in batch and not mixed and self.backbone_is_frozen()
        )

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
