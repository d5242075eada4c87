"""``TaskLightningModule``: what ``FinetuneClassifier`` and ``SegmentationModule`` share.

The loss (default from the task, per-class weights, a per-sample copy for callbacks, exact epoch values),
the shared training/validation/test step and its logging, per-class metrics at epoch end, the optimizer
and scheduler wiring, freezing and parameter groups, and the checkpoint hooks live here once. A concrete
module builds its task and its network in ``__init__`` and keeps only what differs (see the class docstring).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.optim.freezing import FreezeSpec, freeze_patterns
from lit_finetune.optim.freezing import freeze as freeze_parameters
from lit_finetune.losses import LossMetric, StatisticsLoss
from lit_finetune.optim.param_groups import apply_lr_scales, held_groups, parameter_groups
from lit_finetune.optim.schedulers import WarmupCosineLR
from lit_finetune.models.network import BackboneHeadNetwork
from lit_finetune.models.stages import backbone_stages
from lit_finetune.tasks import Task

LOSS_STATE_PREFIXES = ("loss.", "loss_per_sample.", "train_loss.", "val_loss.", "test_loss.")
"""State-dict keys of the loss, of its per-sample copy and of the metrics that wrap it."""


def per_sample_copy(loss: nn.Module) -> nn.Module:
    """A copy of ``loss`` that returns one value per sample, for callbacks (the configured loss is left as it is).

    ``reduction="none"``; losses of ``lit_finetune.losses`` that aggregate over the batch score each sample
    on its own (``aggregation="per_sample"``).
    """
    if not hasattr(loss, "reduction"):
        raise ValueError(
            f"The loss {type(loss).__name__} has no `reduction` attribute: the module needs a per-sample value of it "
            "for the callbacks (reduction='none'). Give it a `reduction` argument or override `sample_losses`."
        )
    copy: Any = deepcopy(loss)  # any attributes the loss has (nn.Module.__setattr__ is typed for tensors and modules)
    copy.reduction = "none"
    if getattr(copy, "aggregation", None) == "global":
        copy.aggregation = "per_sample"
    for param in copy.parameters():
        param.requires_grad_(False)
    return copy


class TaskLightningModule(LightningModule):
    """The part of a task module (a LightningModule that asks a :class:`~lit_finetune.tasks.Task`) that does not depend on the task.

    Not used on its own: subclass it as ``FinetuneClassifier`` and ``SegmentationModule`` do. A subclass's
    ``__init__`` keeps the full typed signature (LightningCLI reads the options from it) and, in this order:

    1. calls :meth:`_check_options`, then ``save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])``
       itself (Lightning reads the arguments of the calling ``__init__``), then :meth:`_init_task` with its
       task object and :meth:`_init_normalization`;
    2. builds ``backbone`` and ``head`` (registered children) and hands the network holding them to
       :meth:`_attach_network` (kept as ``network``, not registered twice);
    3. :meth:`_init_freezing`, then :meth:`_init_loss_and_metrics` with the configured loss (or None).

    It provides ``forward(images)`` returning a dict with ``logits`` (``aux_logits`` when an auxiliary head
    is on in training), and its hyperparameters hold ``label_smoothing``, ``class_weights``, ``class_counts``,
    ``aux_loss_weight``, ``scheduler_interval``, ``scheduler_monitor``, ``backbone_lr_mult``, ``layer_decay``
    and ``no_weight_decay_norm_bias``. It overrides :meth:`_loss_weight` (the per-class weights its options
    give the default loss) and, where it differs, these hooks: :meth:`_step_outputs` (how a step gets its
    outputs; default ``self(images)``), :meth:`_scores_batch` and :meth:`_reported_target` (which batches
    the metrics score and the target they and the callbacks see), :meth:`_has_aux_loss`,
    :meth:`_mean_per_sample` and :meth:`_loggable_class_metrics`.

    Research code overrides the public points: ``forward``, :meth:`loss_terms`, :meth:`compute_loss`,
    :meth:`sample_losses`, :meth:`parameter_groups` and :meth:`build_metrics`.

    Raises:
        ValueError: from the helpers: ``label_smoothing`` or the LR options out of range, loss weights given
            with a loss of one's own, or a loss without ``reduction``.

    Example::

        class MyModule(TaskLightningModule):
            def __init__(self, num_classes: int, loss: nn.Module | None = None, ...) -> None:  # every option typed
                super().__init__()
                self._check_options(label_smoothing, head_lr, backbone_lr_mult, layer_decay)
                self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
                self._init_task(build_task("multiclass", num_classes), backbone, weights, optimizer, lr_scheduler)
                self._init_normalization(image_mean, image_std, (IMAGENET_MEAN, IMAGENET_STD))
                self.backbone, self.head = my_backbone(), nn.Linear(512, num_classes)
                self._attach_network(ClassifierNetwork(self.backbone, self.head), channels_last=False)
                self._init_freezing(freeze, train_bn, head_lr)
                self._init_loss_and_metrics(loss)

            def forward(self, images: Tensor) -> dict[str, Tensor]:
                return self.network(images)
    """

    hparams: AttributeDict  # what save_hyperparameters stores (the base property says MutableMapping)
    task: Task
    backbone: nn.Module
    head: nn.Module
    network: BackboneHeadNetwork

    _loss_weight_options = "`class_weights`"
    """The options that weight the default loss, as errors name them."""

    # ------------------------------------------------------------------ building (called by subclasses' __init__)
    @staticmethod
    def _check_options(label_smoothing: float, head_lr: float | None, backbone_lr_mult: float, layer_decay: float) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}.")
        if backbone_lr_mult < 0 or not 0 < layer_decay <= 1 or (head_lr is not None and head_lr <= 0):
            raise ValueError(
                f"Need head_lr > 0 (or None), backbone_lr_mult >= 0 and 0 < layer_decay <= 1; got head_lr={head_lr}, "
                f"backbone_lr_mult={backbone_lr_mult}, layer_decay={layer_decay}."
            )

    def _init_task(
        self, task: Task, backbone: str, weights: str | None, optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None
    ) -> None:
        self.task = task
        self.num_classes = task.num_classes
        self.num_outputs = task.num_outputs
        self.class_names = task.class_names
        self.backbone_name = backbone
        self.weights = weights
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler

    def _init_normalization(self, image_mean: tuple[float, ...] | None, image_std: tuple[float, ...] | None, default: tuple[Any, Any]) -> None:
        self.image_mean = tuple(image_mean) if image_mean is not None else default[0]
        self.image_std = tuple(image_std) if image_std is not None else default[1]

    def _attach_network(self, network: BackboneHeadNetwork, channels_last: bool) -> None:
        # The network as a plain nn.Module (not registered twice): export and research code use it.
        self.__dict__["network"] = network
        if channels_last:  # before the optimizer and any DDP wrapping see the parameters
            self.to(memory_format=torch.channels_last)

    def _init_freezing(self, freeze: FreezeSpec, train_bn: bool, head_lr: float | None) -> None:
        self.head_lr = head_lr
        self.stages = backbone_stages(self.backbone)
        self.frozen_parameters = set(freeze_parameters(self, freeze_patterns(freeze, self.stages), train_bn=train_bn))

    def _init_loss_and_metrics(self, loss: nn.Module | None) -> None:
        self.loss = self._prepare_loss(loss)
        self.loss_per_sample = per_sample_copy(self.loss)
        self.train_loss, self.val_loss, self.test_loss = (self._epoch_loss_metric(stage) for stage in ("train", "val", "test"))
        self.loss_term_metrics = nn.ModuleDict()
        metrics = self.build_metrics()
        self.train_metrics = self._training_metrics(metrics).clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        class_metrics = self.task.build_class_metrics()
        self.val_class_metrics = class_metrics.clone(prefix="val/") if class_metrics is not None else None
        self.test_class_metrics = class_metrics.clone(prefix="test/") if class_metrics is not None else None

    # ------------------------------------------------------------------ override points
    def build_metrics(self) -> MetricCollection:
        """Metrics computed on train, val and test (torchmetrics, reduced correctly under DDP): the task's.

        Classification: ``acc``, ``f1``, ... (see docs/tasks.md); segmentation: ``miou``, ``dice``, ``pixel_acc``.
        """
        return self.task.build_metrics()

    def loss_terms(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """The loss terms of a batch, each a scalar, already weighted; their sum is optimized.

        ``loss``: the configured loss on the logits, exactly as configured; ``loss_aux``: the auxiliary head
        (inception_v3; fcn and deeplabv3 with a ResNet) in training, times ``aux_loss_weight``. A subclass adds
        terms here. With more than one term, ``<stage>/loss`` is their sum and each is also logged:
        ``<stage>/loss_main``, ``<stage>/loss_aux``, ``<stage>/<name>``.
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
        """Detached per-sample values of the configured loss, shape ``(N,)``, for callbacks (best/worst samples).

        A loss with more than one value per sample (per label, per pixel) is averaged per sample; segmentation
        averages over the labeled pixels.
        """
        loss = self.loss_per_sample(outputs[keys.LOGITS].detach(), target)
        return self._mean_per_sample(loss, target) if loss.ndim > 1 else loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups handed to the optimizer (each may set its own ``lr``/``weight_decay``; ``name`` shows in LearningRateMonitor).

        Default: ``head`` (classification head; segmentation: decoder and classifiers), then ``backbone.stage{i}``
        for each stage, each split off a ``.no_decay`` group; ``lr_scale`` (LR relative to ``head_lr``) is turned
        into ``lr`` once the optimizer is built. Parameters frozen by ``freeze`` are left out; those an unfreeze
        schedule holds are kept.
        """
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
        """True when no backbone parameter requires a gradient: the backbone then runs in eval mode under ``no_grad``."""
        return self.network.backbone_is_frozen()

    def prepare_target(self, target: Tensor) -> Tensor:
        """Targets as the loss expects them (the task checks them and says what is wrong)."""
        return self.task.prepare_target(target)

    # ------------------------------------------------------------------ hooks of the subclasses
    def _loss_weight(self) -> Tensor | None:
        """Per-class weights of the default loss from the module's options; None: unweighted."""
        return None

    def _has_aux_loss(self, stage: str) -> bool:
        """Whether ``stage``'s loss may hold an auxiliary head's term (the epoch loss is then a batch mean)."""
        return False

    def _mean_per_sample(self, loss: Tensor, target: Tensor) -> Tensor:
        """One value per sample of a loss with more than one value per sample."""
        return loss.flatten(1).mean(1)

    def _step_outputs(self, batch: dict, stage: str) -> dict[str, Tensor]:
        """The forward of a step."""
        return self(batch[keys.IMAGE])

    def _scores_batch(self, batch: dict) -> bool:
        """Whether the metrics score this batch."""
        return True

    def _reported_target(self, batch: dict, target: Tensor) -> Tensor:
        """The target the metrics score and the step output holds (``target``: the prepared one)."""
        return target

    def _loggable_class_metrics(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """The per-class values that are logged."""
        return values

    # ------------------------------------------------------------------ helpers
    def _prepare_loss(self, loss: nn.Module | None) -> nn.Module:
        weight = self._loss_weight()
        if loss is None:
            return self.task.default_loss(self.hparams.label_smoothing, weight)
        if weight is not None:
            raise ValueError(f"{self._loss_weight_options} configure the default loss; give them to your own `loss` instead.")
        if self.hparams.label_smoothing > 0:
            raise ValueError("`label_smoothing` configures the default loss; give it to your own `loss` instead (or leave it at 0).")
        return loss

    def _training_metrics(self, metrics: MetricCollection) -> MetricCollection:
        # Metrics that keep every prediction of the epoch (multilabel average precision) stay out of training.
        dropped = [name for name in self.task.eval_only_metrics if name in metrics]
        if not dropped:
            return metrics
        kept: dict[str, Metric | MetricCollection] = {name: m for name, m in metrics.items(keep_base=True) if name not in dropped}
        return MetricCollection(kept, compute_groups=False)

    def _epoch_loss_metric(self, stage: str) -> Metric:
        # Losses of lit_finetune.losses that aggregate globally (a Dice over all samples) get their exact
        # epoch value from summed statistics (when the module optimizes that loss alone); for the others
        # the epoch value is the mean of the batch losses weighted by batch size (reduces under DDP).
        alone = type(self).loss_terms is TaskLightningModule.loss_terms and type(self).compute_loss is TaskLightningModule.compute_loss
        if isinstance(self.loss, StatisticsLoss) and alone and not self._has_aux_loss(stage):
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
                cast(MeanMetric, self.loss_term_metrics[key]).update(value.detach(), weight=n)
                tag = f"{stage}/loss_main" if name == keys.LOSS else f"{stage}/{name}"
                self.log(tag, cast(MeanMetric, self.loss_term_metrics[key]), on_step=False, on_epoch=True)

    def _shared_step(self, batch: dict, stage: str) -> dict[str, Tensor]:
        target = self.prepare_target(batch[keys.TARGET])
        outputs = self._step_outputs(batch, stage)
        terms = self.loss_terms(outputs, target) if type(self).compute_loss is TaskLightningModule.compute_loss else None
        total = torch.stack(list(terms.values())).sum() if terms is not None else self.compute_loss(outputs, target)
        logits = outputs[keys.LOGITS].detach()
        self._log_losses(stage, terms or {keys.LOSS: total}, total, logits, target)
        reported = self._reported_target(batch, target)
        if self._scores_batch(batch):
            inputs = self.task.metric_inputs(logits, reported)
            getattr(self, f"{stage}_metrics").update(*inputs)
            per_class = getattr(self, f"{stage}_class_metrics", None)
            if per_class is not None:
                per_class.update(*inputs)
        return {
            keys.LOSS: total,
            keys.SAMPLE_LOSS: self.sample_losses(outputs, target),
            keys.LOGITS: logits,
            keys.TARGET: reported,
            keys.INDEX: batch[keys.INDEX],
        }

    def _log_class_metrics(self, stage: str) -> None:
        # Per-class values are dicts, which Lightning cannot log as metric objects: computed (and synced) here.
        per_class = getattr(self, f"{stage}_class_metrics")
        if per_class is None or not any(metric.update_called for metric in per_class.values()):
            return
        self.log_dict(self._loggable_class_metrics(dict(per_class.compute().items())))
        per_class.reset()

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "train")
        self.log("train/loss", out[keys.LOSS], on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        if any(metric.update_called for metric in self.train_metrics.values()):  # not while every batch is mixed
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return out

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "val")
        # Logged as metric objects: Lightning computes them once per epoch over all samples (and ranks).
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
            # The schedule spans the whole run: optimizer steps (interval "step") or epochs.
            steps = self.trainer.estimated_stepping_batches if self.hparams.scheduler_interval == "step" else self.trainer.max_epochs
            scheduler.total_steps = int(steps)  # type: ignore[arg-type]  # max_epochs=None (a max_steps run) fails here as before
        config = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The class to rebuild for `lit-finetune export` when the hyperparameters hold no `_class_path` (plain `Trainer.fit`).
        checkpoint["module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["class_names"] = self.class_names

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The loss is configuration, not learned state: its buffers (class weights) come from the config
        # the model was built with, so a checkpoint saved with another loss still loads strictly.
        # EMAWeightAveraging keeps the raw weights under `current_model_state` (`state_dict` holds the average).
        own = {k: v for k, v in self.state_dict().items() if k.startswith(LOSS_STATE_PREFIXES)}
        for name in ("state_dict", "current_model_state"):
            state = checkpoint.get(name)
            if state is None:
                continue
            for key in [k for k in state if k.startswith(LOSS_STATE_PREFIXES)]:
                del state[key]
            state.update(own)
