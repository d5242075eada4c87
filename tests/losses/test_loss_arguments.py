"""Invalid options and shapes raise errors that say what was expected; YAML construction works."""

from __future__ import annotations

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from lit_finetune import losses
from lit_finetune.losses import (
    BCEDiceLoss,
    CEDiceLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LossMetric,
    SoftCrossEntropyLoss,
    TverskyLoss,
    dice_loss,
    focal_loss,
)

BAD_OPTIONS = [
    (lambda: DiceLoss(task="segmentation"), r"`task` must be one of \('binary', 'multiclass', 'multilabel'\), got 'segmentation'"),
    (lambda: DiceLoss(task="binary", reduction="avg"), r"`reduction` must be one of .*got 'avg'"),
    (lambda: DiceLoss(task="binary", aggregation="batch"), r"`aggregation` must be one of .*got 'batch'"),
    (lambda: DiceLoss(task="binary", reduction="sum"), r"reduction='sum'.*aggregation='per_sample'"),
    (lambda: DiceLoss(task="binary", empty_target="nan"), r"`empty_target` must be one of \('ignore', 'zero', 'smooth'\)"),
    (lambda: DiceLoss(task="binary", smooth=-1.0), r"`smooth` must be a finite number >= 0, got -1.0"),
    (lambda: DiceLoss(task="binary", eps=0.0), r"`eps` must be a finite number > 0, got 0.0"),
    (lambda: DiceLoss(task="binary", include_background=False), r"include_background=False.*task='multiclass' only"),
    (lambda: DiceLoss(task="binary", num_classes=3), r"`num_classes` must be None or 1 for task='binary'"),
    (lambda: DiceLoss(task="multiclass", num_classes=1), r"`num_classes` must be >= 2 for task='multiclass', got 1"),
    (lambda: DiceLoss(task="binary", ignore_index=2.5), r"`ignore_index` must be an int"),
    (lambda: DiceLoss(task="binary", class_weights=[1.0]), r"task='binary' weight the positives with `alpha`"),
    (lambda: DiceLoss(task="multiclass", num_classes=3, class_weights=[1.0, 2.0]), r"`class_weights` has 2 entries but `num_classes` is 3"),
    (lambda: DiceLoss(task="multiclass", class_weights=[1.0, -1.0]), r"`class_weights` must be finite, >= 0.*got \[1.0, -1.0\]"),
    (lambda: DiceLoss(task="multiclass", class_weights=[0.0, 0.0]), r"not all zero"),
    (lambda: TverskyLoss(task="binary", alpha=-0.1), r"`alpha` must be a finite number >= 0, got -0.1"),
    (lambda: TverskyLoss(task="binary", alpha=0.0, beta=0.0), r"`alpha \+ beta` must be > 0"),
    (lambda: FocalLoss(task="binary", gamma=-1.0), r"`gamma` must be a finite number >= 0 .*got -1.0"),
    (lambda: FocalLoss(task="binary", gamma=float("nan")), r"`gamma` must be a finite number >= 0"),
    (lambda: FocalLoss(task="binary", alpha=1.5), r"`alpha` must be a number in \[0, 1\], got 1.5"),
    (lambda: FocalLoss(task="multiclass", alpha=0.25), r"alpha=0.25 with task='multiclass'; use `class_weights`"),
    (lambda: SoftCrossEntropyLoss(task="multiclass", label_smoothing=1.5), r"`label_smoothing` must be a number in \[0, 1\], got 1.5"),
    (lambda: BCEDiceLoss(task="multiclass"), r"BCEDiceLoss needs task='binary' or 'multilabel'.*use CEDiceLoss"),
    (lambda: CEDiceLoss(ce_weight=-1.0), r"`ce_weight` must be a finite number >= 0, got -1.0"),
    (lambda: CEDiceLoss(ce_weight=0.0, dice_weight=0.0), r"must not both be 0"),
    (lambda: dice_loss(torch.rand(2, 4), torch.rand(2, 4), task="binary", smooth=-2.0), r"`smooth` must be"),
]


@pytest.mark.parametrize("make, message", BAD_OPTIONS)
def test_invalid_options_raise_with_a_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


BAD_INPUTS = [
    # (task, preds shape, target, message)
    ("binary", (2, 1, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), r"must have the shape of `preds` \(2, 1, 4, 4\).*got \(2, 4, 5\)"),
    (
        "multiclass",
        (2, 3, 4, 4),
        torch.zeros(2, 4, 5, dtype=torch.long),
        r"class indices of shape \(2, 4, 4\) or one-hot/soft labels of shape \(2, 3, 4, 4\), got \(2, 4, 5\)",
    ),
    ("multiclass", (2, 3, 4, 4), torch.zeros(2, 4, 4), r"Class-index targets must be an integer tensor, got torch.float32"),
    ("multiclass", (2, 3, 4, 4), torch.full((2, 4, 4), 255), r"class index 255 but `preds` has 3 classes \(0..2\)\. Set `ignore_index`"),
    ("multiclass", (2, 3, 4, 4), torch.full((2, 4, 4), -1), r"class index -1"),
    ("multiclass", (2,), torch.zeros(2, dtype=torch.long), r"`preds` must have shape \(N, C\) or \(N, C, H, W\[, D\]\), got \(2,\)"),
    ("multilabel", (2, 3), torch.zeros(2, 4), r"task='multilabel', `target` must have the shape of `preds` \(2, 3\)"),
    ("multilabel", (2, 3), torch.full((2, 3), 2.0), r"`target` values must lie in \[0, 1\], found 2.0"),
    ("binary", (2, 4), torch.full((2, 4), 255), r"values must lie in \[0, 1\], found 255.*Set `ignore_index`"),
]


@pytest.mark.parametrize("task, shape, target, message", BAD_INPUTS)
def test_invalid_inputs_raise_with_a_message(task, shape, target, message):
    preds = torch.randn(shape)
    for loss in (DiceLoss(task=task), FocalLoss(task=task)):
        with pytest.raises(ValueError, match=message):
            loss(preds, target)


def test_runtime_class_count_checks():
    with pytest.raises(ValueError, match=r"`preds` has 4 channels in dimension 1 but `num_classes` is 3"):
        DiceLoss(task="multiclass", num_classes=3)(torch.randn(2, 4, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`class_weights` has 3 entries but `preds` has 4 classes"):
        focal_loss(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), task="multiclass", class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"`ignore_index` applies to class-index targets"):
        DiceLoss(task="multiclass", ignore_index=255)(torch.randn(2, 3, 2, 2), torch.rand(2, 3, 2, 2))
    with pytest.raises(TypeError, match="must be tensors"):
        DiceLoss(task="binary")([0.5], torch.zeros(1))


YAML_CONFIGS = {
    "DiceLoss": {"task": "multiclass", "num_classes": 3, "ignore_index": 255, "class_weights": [1, 2, 3], "aggregation": "per_sample"},
    "JaccardLoss": {"task": "multilabel", "log_loss": True, "reduction": "none"},
    "TverskyLoss": {"task": "binary", "alpha": 0.3, "beta": 0.7, "smooth": 1.0, "empty_target": "smooth"},
    "FocalLoss": {"task": "binary", "gamma": 2.0, "alpha": 0.25},
    "SoftCrossEntropyLoss": {"task": "multiclass", "label_smoothing": 0.1},
    "BCEDiceLoss": {"task": "multilabel", "bce_weight": 0.5, "num_classes": 4},
    "CEDiceLoss": {"dice_weight": 2.0, "include_background": False, "num_classes": 3},
}


@pytest.mark.parametrize("name", sorted(YAML_CONFIGS))
def test_constructible_from_lightning_cli_yaml(name):
    parser = ArgumentParser()
    parser.add_argument("--loss", type=torch.nn.Module)
    init_args = YAML_CONFIGS[name]
    text = yaml.safe_dump({"loss": {"class_path": f"lit_finetune.losses.{name}", "init_args": init_args}})
    loss = parser.instantiate_classes(parser.parse_string(text)).loss
    assert type(loss) is getattr(losses, name)
    for key, value in init_args.items():
        if key == "class_weights":  # rescaled to mean 1
            torch.testing.assert_close(loss.class_weights, torch.tensor(value) * len(value) / sum(value))
        else:
            assert getattr(loss, key) == value, key


def test_loss_metric_from_yaml():
    parser = ArgumentParser()
    parser.add_argument("--metric", type=LossMetric)
    text = """
metric:
  class_path: lit_finetune.losses.LossMetric
  init_args:
    loss:
      class_path: lit_finetune.losses.DiceLoss
      init_args: {task: binary, smooth: 1.0}
"""
    metric = parser.instantiate_classes(parser.parse_string(text)).metric
    assert isinstance(metric.loss, DiceLoss) and metric.loss.smooth == 1.0


def test_public_names():
    assert set(losses.__all__) >= {
        "DiceLoss", "JaccardLoss", "TverskyLoss", "FocalLoss", "SoftCrossEntropyLoss", "BCEDiceLoss", "CEDiceLoss",
        "LossMetric", "dice_loss", "jaccard_loss", "tversky_loss", "focal_loss", "soft_cross_entropy_loss",
        "bce_dice_loss", "ce_dice_loss",
    }  # fmt: skip
    assert JaccardLoss(task="binary").reduction == "mean"


ALL_MODULES = [DiceLoss, JaccardLoss, TverskyLoss, FocalLoss, SoftCrossEntropyLoss]


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 4, 4), (5, 3, 2, 3, 2)])
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_every_module_gives_one_loss_per_sample_with_reduction_none(task, shape):
    g = torch.Generator().manual_seed(0)
    n, c, *spatial = shape
    if task == "binary":
        preds, target = torch.randn(n, 1, *spatial, generator=g), torch.randint(0, 2, (n, 1, *spatial), generator=g)
    elif task == "multiclass":
        preds, target = torch.randn(shape, generator=g), torch.randint(0, c, (n, *spatial), generator=g)
    else:
        preds, target = torch.randn(shape, generator=g), torch.randint(0, 2, shape, generator=g)
    # empty_target="zero" counts samples without foreground, so the mean is over all samples.
    modules = [cls(task=task, reduction="none", aggregation="per_sample") for cls in ALL_MODULES[3:]]
    modules += [cls(task=task, reduction="none", aggregation="per_sample", empty_target="zero") for cls in ALL_MODULES[:3]]
    modules.append(CEDiceLoss(reduction="none") if task == "multiclass" else BCEDiceLoss(task=task, reduction="none"))
    for loss in modules:
        values = loss(preds, target)
        assert values.shape == (n,), type(loss).__name__
        # Each value is the loss of that sample alone; the mean of the per-sample form is their mean.
        torch.testing.assert_close(values[1], loss(preds[1:2], target[1:2])[0])
        if not isinstance(loss, (BCEDiceLoss, CEDiceLoss)):
            loss.reduction = "mean"
            torch.testing.assert_close(loss(preds, target), values.mean())


def test_volumes_equal_flattened_images():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 3, 2, generator=g)
    target = torch.randint(0, 3, (2, 4, 3, 2), generator=g)
    for loss in (DiceLoss(task="multiclass"), FocalLoss(task="multiclass"), CEDiceLoss()):
        torch.testing.assert_close(loss(logits, target), loss(logits.flatten(3), target.flatten(2)))
