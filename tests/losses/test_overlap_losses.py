"""Dice, Jaccard and Tversky: hand-computed values, identities, options and gradients."""

from __future__ import annotations

import pytest
import torch

from lit_finetune.losses import DiceLoss, JaccardLoss, TverskyLoss, dice_loss, jaccard_loss, tversky_loss

TASKS = ("binary", "multiclass", "multilabel")


def hand_case(task: str) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Probabilities, target, expected Dice loss and expected Jaccard loss (computed by hand)."""
    if task == "binary":
        # I = 1, P = 2, T = 1: Dice 2/3, IoU 1/2.
        return torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.tensor([[1, 0, 0, 0]]), 1 / 3, 1 / 2
    if task == "multiclass":
        # class 1: I=1, P=2, T=1 -> D=2/3, J=1/2; class 0: I=2, P=2, T=3 -> D=4/5, J=2/3.
        probs = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]])
        return probs, torch.tensor([[1, 0, 0, 0]]), 1 - (2 / 3 + 4 / 5) / 2, 1 - (1 / 2 + 2 / 3) / 2
    # label 0: D=2/3, J=1/2; label 1 is predicted perfectly.
    probs = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]])
    target = torch.tensor([[[1, 0, 0, 0], [0, 1, 1, 0]]])
    return probs, target, (1 / 3 + 0) / 2, (1 / 2 + 0) / 2


@pytest.mark.parametrize("task", TASKS)
def test_hand_computed_dice_and_jaccard(task):
    probs, target, dice, jaccard = hand_case(task)
    assert dice_loss(probs, target, task=task, from_logits=False).item() == pytest.approx(dice, abs=1e-6)
    assert jaccard_loss(probs, target, task=task, from_logits=False).item() == pytest.approx(jaccard, abs=1e-6)
    assert DiceLoss(task=task, from_logits=False)(probs, target).item() == pytest.approx(dice, abs=1e-6)
    assert JaccardLoss(task=task, from_logits=False)(probs, target).item() == pytest.approx(jaccard, abs=1e-6)
    # Saturated logits give the same values.
    logits = (probs * 2 - 1) * 100
    assert DiceLoss(task=task)(logits, target).item() == pytest.approx(dice, abs=1e-6)


def test_hand_computed_classification_shape():
    """(N, C) classification: the four pixels of the multiclass case become four samples."""
    probs, target, dice, jaccard = hand_case("multiclass")
    probs, target = probs[0].T.contiguous(), target[0]
    assert probs.shape == (4, 2) and target.shape == (4,)
    assert dice_loss(probs, target, task="multiclass", from_logits=False).item() == pytest.approx(dice, abs=1e-6)
    assert jaccard_loss(probs, target, task="multiclass", from_logits=False).item() == pytest.approx(jaccard, abs=1e-6)
    # Binary (N,) and (N, 1) shapes.
    p, t = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert dice_loss(p, t, task="binary", from_logits=False).item() == pytest.approx(1 / 3, abs=1e-6)
    assert dice_loss(p[:, None], t, task="binary", from_logits=False).item() == pytest.approx(1 / 3, abs=1e-6)


def test_hand_computed_tversky_and_options():
    probs, target, _, _ = hand_case("binary")  # TP = 1, FP = 1, FN = 0
    loss = tversky_loss(probs, target, task="binary", alpha=0.3, beta=0.7, from_logits=False)
    assert loss.item() == pytest.approx(1 - 1 / 1.3, abs=1e-6)
    # smooth=1: (2 + 1) / (3 + 1); log loss: -log(2/3).
    assert dice_loss(probs, target, task="binary", from_logits=False, smooth=1.0).item() == pytest.approx(0.25, abs=1e-6)
    logd = dice_loss(probs, target, task="binary", from_logits=False, log_loss=True)
    assert logd.item() == pytest.approx(-torch.log(torch.tensor(2 / 3)).item(), abs=1e-6)
    # include_background=False keeps class 1 only; class weights [1, 3]: (1/5 + 3 * 1/3) / 4.
    probs, target, _, _ = hand_case("multiclass")
    no_bg = dice_loss(probs, target, task="multiclass", from_logits=False, include_background=False)
    assert no_bg.item() == pytest.approx(1 / 3, abs=1e-6)
    weighted = dice_loss(probs, target, task="multiclass", from_logits=False, class_weights=[1.0, 3.0])
    assert weighted.item() == pytest.approx((1 / 5 + 1) / 4, abs=1e-6)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("loss_cls", [DiceLoss, JaccardLoss, TverskyLoss])
def test_perfect_prediction_is_zero_and_total_disagreement_is_one(task, loss_cls):
    g = torch.Generator().manual_seed(0)
    if task == "multiclass":
        target = torch.randint(0, 3, (2, 5, 5), generator=g)
        perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
        wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float()
    else:
        shape = (2, 1, 5, 5) if task == "binary" else (2, 3, 5, 5)
        target = torch.randint(0, 2, shape, generator=g)
        target[:, :, 0, 0] = 1  # no empty class
        perfect, wrong = target.float(), 1 - target.float()
    for aggregation in ("global", "per_sample"):
        loss = loss_cls(task=task, from_logits=False, aggregation=aggregation)
        assert loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def random_inputs(task: str, seed: int = 0, shape: tuple[int, ...] = (3, 4, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    n, c, *spatial = shape
    if task == "binary":
        return torch.randn(n, 1, *spatial, generator=g), torch.randint(0, 2, (n, 1, *spatial), generator=g)
    logits = torch.randn(n, c, *spatial, generator=g)
    if task == "multiclass":
        return logits, torch.randint(0, c, (n, *spatial), generator=g)
    return logits, torch.randint(0, 2, (n, c, *spatial), generator=g)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("aggregation", ["global", "per_sample"])
def test_tversky_dice_jaccard_identities(task, aggregation):
    logits, target = random_inputs(task)
    kw = dict(task=task, aggregation=aggregation, reduction="none")
    dice = dice_loss(logits, target, **kw)
    jac = jaccard_loss(logits, target, **kw)
    torch.testing.assert_close(tversky_loss(logits, target, alpha=0.5, beta=0.5, **kw), dice)
    torch.testing.assert_close(tversky_loss(logits, target, alpha=1.0, beta=1.0, **kw), jac)
    # Tversky with smooth s equals Dice with smooth 2s.
    torch.testing.assert_close(tversky_loss(logits, target, smooth=0.5, **kw), dice_loss(logits, target, smooth=1.0, **kw))
    if task == "binary":  # one class: J = D / (2 - D) holds for each sample's score
        d, j = 1 - dice, 1 - jac
        torch.testing.assert_close(j, d / (2 - d))
        dg = 1 - dice_loss(logits, target, task=task)
        torch.testing.assert_close(1 - jaccard_loss(logits, target, task=task), dg / (2 - dg))


def reference_dice(probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Global soft Dice loss with the product intersection (exact for 0/1 targets), per class mean."""
    dims = [0] + list(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    return (1 - 2 * inter / (probs.sum(dims) + onehot.sum(dims))).mean()


def test_matches_product_form_for_hard_targets_and_is_exact_for_soft_targets():
    logits, target = random_inputs("multiclass")
    onehot = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    expected = reference_dice(logits.softmax(1), onehot)
    torch.testing.assert_close(dice_loss(logits, target, task="multiclass"), expected)
    torch.testing.assert_close(dice_loss(logits, onehot, task="multiclass"), expected)
    # Soft labels: a prediction equal to the label is perfect (the product form would not be).
    soft = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for loss in (dice_loss, jaccard_loss, tversky_loss):
        assert loss(soft, soft, task="multilabel", from_logits=False).item() == pytest.approx(0.0, abs=1e-6)
    assert reference_dice(soft, soft).item() > 0.1


def test_empty_target_policies():
    # Sample 0 has an empty mask and predicts P = 0.5 + 0.5 = 1 of foreground; sample 1: Dice 2/3.
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    target = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0]])
    kw = dict(task="binary", from_logits=False, aggregation="per_sample", reduction="none")
    torch.testing.assert_close(dice_loss(probs, target, empty_target="ignore", **kw), torch.tensor([0.0, 1 / 3]))
    torch.testing.assert_close(dice_loss(probs, target, empty_target="zero", **kw), torch.tensor([0.0, 1 / 3]))
    # smooth=1: empty target loss = 1 - 1 / (P + 1) = 1/2; sample 1: 1 - 3/4.
    smooth = dice_loss(probs, target, empty_target="smooth", smooth=1.0, **kw)
    torch.testing.assert_close(smooth, torch.tensor([0.5, 0.25]))
    # Means: "ignore" leaves sample 0 out of the count, "zero" counts it with 0.
    kw.pop("reduction")
    assert dice_loss(probs, target, empty_target="ignore", **kw).item() == pytest.approx(1 / 3, abs=1e-6)
    assert dice_loss(probs, target, empty_target="zero", **kw).item() == pytest.approx(1 / 6, abs=1e-6)
    # "smooth" gives the empty sample a gradient that lowers its foreground.
    p = probs.clone().requires_grad_(True)
    dice_loss(p, target, empty_target="smooth", smooth=1.0, **kw).backward()
    assert (p.grad[0] > 0).all()
    # A class absent from the whole batch is left out of the class mean.
    probs3 = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    loss = dice_loss(probs3, torch.tensor([[1, 0, 0, 0]]), task="multiclass", from_logits=False)
    assert loss.item() == pytest.approx(4 / 15, abs=1e-6)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("loss_cls", [DiceLoss, JaccardLoss, TverskyLoss])
@pytest.mark.parametrize("aggregation", ["global", "per_sample"])
def test_ignore_index_equals_cropping(task, loss_cls, aggregation):
    logits, target = random_inputs(task)
    target = target.clone()
    target[..., 4:] = 255  # last two columns ignored
    loss = loss_cls(task=task, ignore_index=255, aggregation=aggregation)
    cropped = loss_cls(task=task, aggregation=aggregation)
    torch.testing.assert_close(loss(logits, target), cropped(logits[..., :4], target[..., :4]))
    loss_none = loss_cls(task=task, ignore_index=255, aggregation=aggregation, reduction="none")
    torch.testing.assert_close(loss_none(logits, target), loss_none(logits[..., :4], target[..., :4]))


def test_ignore_index_255_with_uint8_mask_and_no_validation():
    logits, target = random_inputs("multiclass")
    mask = target.to(torch.uint8)
    mask[:, 0] = 255
    a = dice_loss(logits, mask, task="multiclass", ignore_index=255)
    b = dice_loss(logits, mask, task="multiclass", ignore_index=255, validate_args=False)
    torch.testing.assert_close(a, b)
    assert torch.isfinite(a)


def test_fully_ignored_sample_is_left_out_of_the_mean():
    logits, target = random_inputs("binary")
    target = target.clone()
    target[0] = 255
    loss = DiceLoss(task="binary", ignore_index=255, aggregation="per_sample")
    torch.testing.assert_close(loss(logits, target), loss(logits[1:], target[1:]))
    assert DiceLoss(task="binary", ignore_index=255, reduction="none")(logits, target)[0].item() == 0.0


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_uniform_class_weights_equal_no_weights(task):
    logits, target = random_inputs(task)
    for loss_fn in (dice_loss, jaccard_loss, tversky_loss):
        for aggregation in ("global", "per_sample"):
            plain = loss_fn(logits, target, task=task, aggregation=aggregation)
            weighted = loss_fn(logits, target, task=task, aggregation=aggregation, class_weights=[2.5] * 4)
            torch.testing.assert_close(weighted, plain)


def test_reduction_none_sum_and_per_sample_mean():
    logits, target = random_inputs("multiclass")
    none = dice_loss(logits, target, task="multiclass", reduction="none")
    assert none.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(none[i], dice_loss(logits[i : i + 1], target[i : i + 1], task="multiclass"))
    per_sample = dict(task="multiclass", aggregation="per_sample")
    torch.testing.assert_close(dice_loss(logits, target, **per_sample), none.mean())
    torch.testing.assert_close(dice_loss(logits, target, reduction="sum", **per_sample), none.sum())


@pytest.mark.parametrize("task", TASKS)
def test_gradcheck_double(task):
    logits, target = random_inputs(task, shape=(2, 3, 3, 3))
    logits = logits.double().requires_grad_(True)
    soft_ok = task != "multiclass"
    for loss in (
        DiceLoss(task=task, smooth=0.5),
        JaccardLoss(task=task, aggregation="per_sample", log_loss=True),
        TverskyLoss(task=task, alpha=0.3, beta=0.7, reduction="none"),
    ):
        assert torch.autograd.gradcheck(lambda x, loss=loss: loss(x, target), (logits,))
    if soft_ok:  # soft labels use |p - t|, differentiable away from p == t
        soft = torch.rand(logits.shape, dtype=torch.double, generator=torch.Generator().manual_seed(3))
        assert torch.autograd.gradcheck(lambda x: dice_loss(x, soft, task=task), (logits,))
