"""Focal loss and soft-target cross-entropy against torch / torchvision references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from lit_finetune.losses import (
    BCEDiceLoss,
    CEDiceLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    SoftCrossEntropyLoss,
    TverskyLoss,
    focal_loss,
    soft_cross_entropy_loss,
)


def inputs(task: str, shape=(3, 4, 5, 5), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, c, *spatial = shape
    if task == "binary":
        return torch.randn(n, 1, *spatial, generator=g) * 3, torch.randint(0, 2, (n, 1, *spatial), generator=g).float()
    logits = torch.randn(n, c, *spatial, generator=g) * 3
    if task == "multiclass":
        return logits, torch.randint(0, c, (n, *spatial), generator=g)
    return logits, torch.randint(0, 2, (n, c, *spatial), generator=g).float()


def value_and_grad(fn, logits, target):
    x = logits.clone().requires_grad_(True)
    value = fn(x, target)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("task", ["binary", "multilabel", "multiclass"])
def test_focal_gamma_zero_equals_cross_entropy_in_value_and_gradient(task):
    logits, target = inputs(task)
    reference = F.cross_entropy if task == "multiclass" else F.binary_cross_entropy_with_logits
    ours = value_and_grad(lambda x, t: focal_loss(x, t, task=task, gamma=0.0), logits, target)
    ref = value_and_grad(reference, logits, target)
    torch.testing.assert_close(ours, ref)
    ce = value_and_grad(lambda x, t: soft_cross_entropy_loss(x, t, task=task), logits, target)
    torch.testing.assert_close(ce, ref)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_sigmoid_focal_equals_torchvision(task, gamma, alpha):
    logits, target = inputs(task)
    tv_alpha = -1 if alpha is None else alpha
    ref = value_and_grad(lambda x, t: sigmoid_focal_loss(x, t, alpha=tv_alpha, gamma=gamma, reduction="mean"), logits, target)
    ours = value_and_grad(lambda x, t: FocalLoss(task=task, gamma=gamma, alpha=alpha)(x, t), logits, target)
    torch.testing.assert_close(ours, ref)
    ref_sum = sigmoid_focal_loss(logits, target, alpha=tv_alpha, gamma=gamma, reduction="sum")
    torch.testing.assert_close(focal_loss(logits, target, task=task, gamma=gamma, alpha=alpha, reduction="sum"), ref_sum)
    # reduction="none": one value per sample, the mean of that sample's elements.
    ref_none = sigmoid_focal_loss(logits, target, alpha=tv_alpha, gamma=gamma, reduction="none").flatten(1).mean(1)
    torch.testing.assert_close(focal_loss(logits, target, task=task, gamma=gamma, alpha=alpha, reduction="none"), ref_none)


def test_multiclass_focal_matches_formula():
    logits, target = inputs("multiclass")
    log_p = logits.log_softmax(1).gather(1, target[:, None]).squeeze(1)
    expected = (-((1 - log_p.exp()) ** 2) * log_p).mean()
    torch.testing.assert_close(focal_loss(logits, target, task="multiclass", gamma=2.0), expected)
    # Class weights follow cross_entropy's normalisation: sum(w_y * l) / sum(w_y).
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    wy = w[target]
    expected_w = (-((1 - log_p.exp()) ** 2) * log_p * wy).sum() / wy.sum()
    torch.testing.assert_close(focal_loss(logits, target, task="multiclass", class_weights=w), expected_w)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("task", ["binary", "multilabel", "multiclass"])
def test_finite_loss_and_gradients_at_saturated_logits(task, gamma):
    logits, target = inputs(task, shape=(2, 3, 4, 4))
    if task == "multiclass":
        right = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 200 - 100
        wrong = -right
    else:
        right = (target * 2 - 1) * 100
        wrong = -right
    losses = [
        FocalLoss(task=task, gamma=gamma),
        FocalLoss(task=task, gamma=gamma, alpha=None if task == "multiclass" else 0.25, aggregation="per_sample"),
        SoftCrossEntropyLoss(task=task, label_smoothing=0.1),
        DiceLoss(task=task, log_loss=True),
        JaccardLoss(task=task),
        TverskyLoss(task=task, alpha=0.3, beta=0.7, log_loss=True),
        CEDiceLoss() if task == "multiclass" else BCEDiceLoss(task=task),
    ]
    for loss in losses:
        for x in (right, wrong):
            value, grad = value_and_grad(loss, x, target)
            assert torch.isfinite(value) and torch.isfinite(grad).all(), (loss, x[0].flatten()[0])
    # Values: certain and right costs 0; certain and wrong costs the cross-entropy (about 100 nats
    # per element), since the modulating factor is 1 there.
    assert focal_loss(right, target, task=task, gamma=gamma).item() == pytest.approx(0.0, abs=1e-6)
    reference = F.cross_entropy if task == "multiclass" else F.binary_cross_entropy_with_logits
    expected = reference(wrong, target).item()
    assert expected >= 100.0
    assert focal_loss(wrong, target, task=task, gamma=gamma).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_at_saturated_logits_matches_the_limit():
    """d/dx of -(1 - p)^0.5 log p at a logit of 100 is tiny, not NaN; wrong and certain gives -1."""
    x = torch.tensor([100.0, -100.0], requires_grad=True)
    t = torch.tensor([1.0, 1.0])
    focal_loss(x, t, task="binary", gamma=0.5, reduction="sum").backward()
    assert x.grad[0].abs().item() < 1e-20
    assert x.grad[1].item() == pytest.approx(-1.0, rel=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_soft_cross_entropy_matches_torch(label_smoothing):
    logits, target = inputs("multiclass")
    target = target.clone()
    target[:, 0] = -100
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    ours = soft_cross_entropy_loss(logits, target, task="multiclass", label_smoothing=label_smoothing, ignore_index=-100, class_weights=w)
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=-100, label_smoothing=label_smoothing)
    torch.testing.assert_close(ours, ref)
    ref_sum = F.cross_entropy(logits, target, weight=w * 4 / w.sum(), ignore_index=-100, label_smoothing=label_smoothing, reduction="sum")
    ours_sum = soft_cross_entropy_loss(
        logits, target, task="multiclass", label_smoothing=label_smoothing, ignore_index=-100, class_weights=w,
        reduction="sum",
    )  # fmt: skip
    torch.testing.assert_close(ours_sum, ref_sum)


def test_soft_cross_entropy_with_soft_targets():
    logits, _ = inputs("multiclass", shape=(6, 4))
    soft = torch.rand(6, 4, generator=torch.Generator().manual_seed(2)).softmax(1)
    ours = value_and_grad(lambda x, t: soft_cross_entropy_loss(x, t, task="multiclass"), logits, soft)
    ref = value_and_grad(F.cross_entropy, logits, soft)  # torch's probability-target form
    torch.testing.assert_close(ours, ref)
    smoothed = soft_cross_entropy_loss(logits, soft, task="multiclass", label_smoothing=0.2)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, soft, label_smoothing=0.2))
    # Binary label smoothing: t' = t (1 - e) + e / 2.
    x, t = inputs("binary")
    torch.testing.assert_close(
        soft_cross_entropy_loss(x, t, task="binary", label_smoothing=0.2),
        F.binary_cross_entropy_with_logits(x, t * 0.8 + 0.1),
    )


def test_probability_inputs_match_logit_inputs():
    logits, target = inputs("multilabel")
    for task, probs in (("multilabel", logits.sigmoid()), ("multiclass", logits.softmax(1))):
        t = target if task == "multilabel" else target.argmax(1)
        for fn in (focal_loss, soft_cross_entropy_loss):
            torch.testing.assert_close(fn(probs, t, task=task, from_logits=False), fn(logits, t, task=task), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("aggregation", ["global", "per_sample"])
def test_ignore_index_equals_cropping(task, aggregation):
    logits, target = inputs(task)
    target = target.clone()
    target[..., 3:] = 255
    for cls, kw in ((FocalLoss, dict(gamma=0.5)), (SoftCrossEntropyLoss, dict(label_smoothing=0.1))):
        full = cls(task=task, ignore_index=255, aggregation=aggregation, **kw)
        crop = cls(task=task, aggregation=aggregation, **kw)
        torch.testing.assert_close(full(logits, target), crop(logits[..., :3], target[..., :3]))
        none = cls(task=task, ignore_index=255, reduction="none", **kw)
        torch.testing.assert_close(none(logits, target), none(logits[..., :3], target[..., :3]))


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_uniform_class_weights_equal_no_weights(task):
    logits, target = inputs(task)
    for fn in (focal_loss, soft_cross_entropy_loss):
        for reduction in ("mean", "sum", "none"):
            plain = fn(logits, target, task=task, reduction=reduction)
            torch.testing.assert_close(fn(logits, target, task=task, reduction=reduction, class_weights=[0.3] * 4), plain)


def test_per_sample_aggregation_and_reduction_none():
    logits, target = inputs("multiclass")
    target = target.clone()
    target[0, :3] = -1  # sample 0 has fewer valid pixels than the others
    kw = dict(task="multiclass", gamma=1.0, ignore_index=-1)
    none = focal_loss(logits, target, reduction="none", **kw)
    assert none.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(none[i], focal_loss(logits[i : i + 1], target[i : i + 1], **kw))
    torch.testing.assert_close(focal_loss(logits, target, aggregation="per_sample", **kw), none.mean())
    # Global mean counts pixels, so sample 0 weighs less.
    valid = (target != -1).flatten(1).sum(1).float()
    torch.testing.assert_close(focal_loss(logits, target, **kw), (none * valid).sum() / valid.sum())


@pytest.mark.parametrize("task", ["binary", "multilabel", "multiclass"])
def test_gradcheck_double(task):
    logits, target = inputs(task, shape=(2, 3, 2, 2))
    logits = logits.double().requires_grad_(True)
    alpha = None if task == "multiclass" else 0.25
    for loss in (
        FocalLoss(task=task, gamma=0.5, alpha=alpha),
        FocalLoss(task=task, gamma=2.0, reduction="none"),
        SoftCrossEntropyLoss(task=task, label_smoothing=0.1, aggregation="per_sample"),
    ):
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, target), (logits,))
