"""``TaskLightningModule``: what ``FinetuneClassifier`` and ``SegmentationModule`` share, built by composition.

A concrete module builds its :class:`~lit_finetune.tasks.Task`, its network (a plain ``nn.Module`` with a
``backbone`` and a ``head``), its loss (``resolve_loss``) and its ``TrainingOptions`` (``lit_finetune.modules.options``),
and hands them to the base in one ``super().__init__(...)`` call. The base keeps the rest once: the loss bookkeeping (a per-sample
copy for callbacks, exact epoch values, one metric per loss term), the training/validation/test steps and their
logging, per-class metrics at epoch end, the optimizer and scheduler wiring, freezing and parameter groups, and
the checkpoint hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from typing_extensions import final, override

from lit_finetune import keys
from lit_finetune.losses import LossMetric
from lit_finetune.models.network import BackboneHeadNetwork
from lit_finetune.models.stages import backbone_layers, backbone_stages
from lit_finetune.modules.epoch_metrics import (
    epoch_loss_metric,
    log_class_metrics,
    log_epoch_metrics,
    sample_losses_wanted,
    training_metrics,
    update_losses,
)
from lit_finetune.modules.options import TrainingOptions, per_sample_copy, resolve_loss
from lit_finetune.optim.freezing import freeze as freeze_parameters
from lit_finetune.optim.freezing import freeze_patterns
from lit_finetune.optim.param_groups import apply_lr_scales, held_groups, parameter_groups
from lit_finetune.optim.schedulers import WarmupCosineLR
from lit_finetune.tasks import Task, has_soft_targets

LOSS_STATE_PREFIXES = ("loss.", "loss_per_sample.", "train_loss.", "val_loss.", "test_loss.")
"""State-dict keys of the loss, of its per-sample copy and of the metrics that wrap it."""
NETWORK = "network"
"""Name of the registered network; its parameters are saved under ``backbone.``/``head.`` only (see the class docstring)."""
STAGES = ("train", "val", "test")
__all__ = ["LOSS_STATE_PREFIXES", "TaskLightningModule", "TrainingOptions", "per_sample_copy", "resolve_loss"]


class TaskLightningModule(LightningModule):
    """The part of a task module (a LightningModule that asks a :class:`~lit_finetune.tasks.Task`) that does not depend on the task.

    Not used on its own: a subclass keeps a full typed ``__init__`` (LightningCLI reads the options from it),
    builds its task, network, loss and options, and calls ``super().__init__(...)`` once. The base saves the
    subclass's arguments as hyperparameters (``loss``, ``optimizer`` and ``lr_scheduler`` left out, so that
    checkpoints load with ``weights_only=True``), registers ``backbone``, ``head`` and ``network`` and freezes
    what ``options.freeze`` says. The parameters keep the names ``backbone.*`` and ``head.*``: the network is a
    registered child too (``train()``/``eval()`` and Lightning's mode restore reach it), but its entries are
    dropped from ``state_dict()`` and filled in from ``backbone.*``/``head.*`` on load, so checkpoints keep
    one copy of each weight under the names they always had.

    Research code overrides the public points: ``forward``, :meth:`loss_terms` (every term it returns is
    optimized and logged), :meth:`sample_losses`, :meth:`parameter_groups` and :meth:`build_metrics`.

    Args:
        task: the task (targets, default loss, predictions, metrics).
        network: an ``nn.Module`` with ``backbone`` and ``head`` whose forward returns ``{"logits": ...}`` (and
            ``aux_logits`` for an auxiliary head in training) and that has ``backbone_is_frozen()``.
        loss: the loss that is optimized (see :func:`resolve_loss`); it needs a ``reduction`` attribute.
        optimizer: the optimizer, given the parameter groups.
        lr_scheduler: the learning-rate scheduler, given the optimizer; None: constant LR.
        options: freezing, learning rates per part, the scheduler's interval and monitor, the auxiliary loss weight.
        backbone_name: the name of the backbone (callbacks and exports read it).
        image_mean: normalization mean of the input images (callbacks show the images with it).
        image_std: likewise, the normalization std.

    Raises:
        ValueError: a loss without ``reduction``.

    Example::

        class MyModule(TaskLightningModule):
            def __init__(self, num_classes: int, lr: float = 1e-3) -> None:  # every option typed: LightningCLI reads them
                task = build_task("multiclass", num_classes)
                backbone, width = create_backbone("resnet18", None, num_classes)
                network = ClassifierNetwork(backbone, nn.Linear(width, num_classes))
                super().__init__(task, network, resolve_loss(task, None), partial(torch.optim.AdamW, lr=lr))

            def forward(self, images: Tensor) -> dict[str, Tensor]:
                return self.network(images)
    """

    hparams: AttributeDict  # what save_hyperparameters stores (the base property says MutableMapping)
    task: Task
    backbone: nn.Module
    head: nn.Module
    network: BackboneHeadNetwork

    def __init__(
        self,
        task: Task,
        network: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None = None,
        options: TrainingOptions | None = None,
        backbone_name: str = "",
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        # The arguments of the subclass's __init__ (and of any subclass of it), not this one's.
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"], frame=inspect.currentframe().f_back)  # type: ignore[union-attr]
        self.options = options = options or TrainingOptions()
        self.task = task
        self.num_classes, self.num_outputs, self.class_names = task.num_classes, task.num_outputs, task.class_names
        self.backbone_name = backbone_name
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.sample_losses_wanted = True  # whether the steps return per-sample losses: asked of the callbacks in `setup`
        self._stage: str | None = None  # the stage of the step under way (its LossMetric computes the configured loss)

        # backbone and head first: parameter and module names are those of their first registration.
        self.backbone, self.head = cast(nn.Module, network.backbone), cast(nn.Module, network.head)
        self.network = cast(BackboneHeadNetwork, network)
        self.register_state_dict_post_hook(_drop_network_entries)
        self.register_load_state_dict_pre_hook(_fill_network_entries)
        if options.channels_last:  # before the optimizer and any DDP wrapping see the parameters
            self.to(memory_format=torch.channels_last)

        self.head_lr = options.head_lr  # the LR finder sets it
        self.stages = backbone_stages(self.backbone)
        self.frozen_parameters = set(freeze_parameters(self, freeze_patterns(options.freeze, self.stages), train_bn=options.train_bn))

        self.loss = loss
        self.loss_per_sample = per_sample_copy(loss)
        self.train_loss, self.val_loss, self.test_loss = (epoch_loss_metric(loss) for _ in STAGES)
        self.loss_term_metrics = nn.ModuleDict()
        metrics = self.build_metrics()
        self.train_metrics = training_metrics(task, metrics).clone(prefix="train/")
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")
        class_metrics = task.build_class_metrics()
        self.val_class_metrics = class_metrics.clone(prefix="val/") if class_metrics is not None else None
        self.test_class_metrics = class_metrics.clone(prefix="test/") if class_metrics is not None else None

    # ------------------------------------------------------------------ override points
    def build_metrics(self) -> MetricCollection:
        """Metrics computed on train, val and test (torchmetrics, reduced correctly under DDP): the task's.

        Classification: ``acc``, ``f1``, ... (see docs/tasks.md); segmentation: ``miou``, ``dice``, ``pixel_acc``.
        """
        return self.task.build_metrics()

    def loss_terms(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """The loss terms of a batch, each a scalar, already weighted; their sum is optimized and each is logged.

        ``loss``: the configured loss on the logits, exactly as configured; ``loss_aux``: the auxiliary head
        (inception_v3; fcn and deeplabv3 with a ResNet) in training, times ``aux_loss_weight``. A subclass adds
        terms here. With more than one term, ``<stage>/loss`` is their sum and each is also logged:
        ``<stage>/loss_main``, ``<stage>/loss_aux``, ``<stage>/<name>``.
        """
        logits, metric = outputs[keys.LOGITS], getattr(self, f"{self._stage}_loss") if self._stage else None
        if isinstance(metric, LossMetric) and getattr(self.loss, "reduction", None) == "mean":
            # Inside a step, the stage's LossMetric computes a loss of lit_finetune.losses and adds the batch to the
            # exact epoch value from the same statistics: one pass, not two.
            metric.updated_by_forward = True
            terms = {keys.LOSS: metric(logits, target)}
        else:
            terms = {keys.LOSS: self.loss(logits, target).mean()}
        if keys.AUX_LOGITS in outputs:
            terms["loss_aux"] = self.options.aux_loss_weight * self.loss(outputs[keys.AUX_LOGITS], target).mean()
        return terms

    @final
    def compute_loss(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """The scalar that is optimized: the sum of :meth:`loss_terms` (for scripts and callbacks; override ``loss_terms``)."""
        return torch.stack(list(self.loss_terms(outputs, target).values())).sum()

    @torch.no_grad()
    def sample_losses(self, outputs: dict[str, Tensor], target: Tensor) -> Tensor:
        """Detached per-sample values of the configured loss, shape ``(N,)``, for callbacks (best/worst samples).

        A loss with more than one value per sample (per label) is averaged per sample.
        """
        loss = self.loss_per_sample(outputs[keys.LOGITS].detach(), target)
        return loss.flatten(1).mean(1) if loss.ndim > 1 else loss

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
            backbone_lr_mult=self.options.backbone_lr_mult,
            layer_decay=self.options.layer_decay,
            no_weight_decay_norm_bias=self.options.no_weight_decay_norm_bias,
            exclude=self.frozen_parameters,
            keep_separate=held_groups(self._trainer),  # stages an unfreeze schedule warms up keep their own groups
            layers=backbone_layers(self.backbone),  # timm: decay per block (fine groups); torchvision: the stages
        )

    def backbone_is_frozen(self) -> bool:
        """True when no backbone parameter requires a gradient: the backbone then runs in eval mode under ``no_grad``."""
        return bool(self.network.backbone_is_frozen())

    def prepare_target(self, target: Tensor) -> Tensor:
        """Targets as the loss expects them (the task checks them and says what is wrong)."""
        return self.task.prepare_target(target)

    def _step_outputs(self, batch: dict, stage: str) -> dict[str, Tensor]:
        """The forward of a step (the classifier adds test-time augmentation, cached features and compiled parts)."""
        return self(batch[keys.IMAGE])

    # ------------------------------------------------------------------ the shared step
    def _shared_step(self, batch: dict, stage: str) -> dict[str, Tensor]:
        target = self.prepare_target(batch[keys.TARGET])
        outputs = self._step_outputs(batch, stage)
        logits = outputs[keys.LOGITS].detach()
        self._stage = stage
        try:
            terms = self.loss_terms(outputs, target)
        finally:
            self._stage = None
        total = update_losses(self, stage, terms, logits, target)
        # A mixed batch or soft targets are not scored against hard labels.
        # Decided from the `mixed` key and the target's layout, never its values (no device sync per step).
        if not has_soft_targets(self.task, batch):
            inputs = self.task.metric_inputs(logits, batch[keys.TARGET])
            getattr(self, f"{stage}_metrics").update(*inputs)
            per_class = getattr(self, f"{stage}_class_metrics", None)
            if per_class is not None:
                per_class.update(*inputs)
        out = {keys.LOSS: total, keys.LOGITS: logits, keys.TARGET: batch[keys.TARGET], keys.INDEX: batch[keys.INDEX]}
        if self.sample_losses_wanted:
            out[keys.SAMPLE_LOSS] = self.sample_losses(outputs, target)
        return out

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, stage: str) -> None:
        self.sample_losses_wanted = sample_losses_wanted(self._trainer)

    @override
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = self._shared_step(batch, "train")
        self.log("train/loss", out[keys.LOSS], on_step=True, on_epoch=False, prog_bar=True)
        return out

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "test")

    @override
    def on_train_epoch_end(self) -> None:
        log_epoch_metrics(self, "train")

    @override
    def on_validation_epoch_end(self) -> None:
        log_epoch_metrics(self, "val")
        log_class_metrics(self, "val")

    @override
    def on_test_epoch_end(self) -> None:
        log_epoch_metrics(self, "test")
        log_class_metrics(self, "test")

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        apply_lr_scales(optimizer, self.head_lr)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        interval = self.options.scheduler_interval
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            # The schedule spans the whole run: optimizer steps (interval "step") or epochs.
            steps = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
            scheduler.total_steps = int(steps)  # type: ignore[arg-type]  # max_epochs None still raises here, as before
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.options.scheduler_monitor
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


def _drop_network_entries(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    # The network's tensors are the backbone's and the head's, already saved under their own names.
    for key in [k for k in state_dict if k.startswith(f"{prefix}{NETWORK}.")]:
        del state_dict[key]
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == f"{prefix}{NETWORK}" or k.startswith(f"{prefix}{NETWORK}.")]:
            del metadata[key]


def _fill_network_entries(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    # The inverse of _drop_network_entries: the network loads the same tensors as the backbone and the head.
    for key in [k for k in state_dict if k.startswith((f"{prefix}backbone.", f"{prefix}head."))]:
        state_dict.setdefault(f"{prefix}{NETWORK}.{key[len(prefix) :]}", state_dict[key])
