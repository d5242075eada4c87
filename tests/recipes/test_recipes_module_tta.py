"""Test-time augmentation: views, probability averaging per task, and where the module applies it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from recipes_module_helpers import tiny_data, tiny_trainer
from torch import nn
from torch.nn import functional as F

from lit_finetune import FinetuneClassifier, keys
from lit_finetune.modules.tta import tta_logits, tta_views
from lit_finetune.tasks import build_task


class SmallConvNet(FinetuneClassifier):
    """A one-convolution backbone with global average pooling; ``symmetric`` makes it mirror-invariant."""

    symmetric = False

    def build_backbone(self, spec) -> tuple[nn.Module, int]:
        conv = nn.Conv2d(3, 8, 3, padding=1)  # stride 1, zero padding: mirroring the input mirrors the map
        if self.symmetric:
            with torch.no_grad():
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
        return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8


class SymmetricNet(SmallConvNet):
    symmetric = True


class Outputs(Callback):
    """Collects the logits of validation/test steps and the sizes of the batches that went through forward."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.logits.append(outputs[keys.LOGITS])

    on_test_batch_end = on_validation_batch_end


def hand_views(images: torch.Tensor, mode: str, fraction: float) -> list[torch.Tensor]:
    """The views written out by slicing: corners and centre, resized back; ten_crop adds those of the mirrored image."""
    h, w = images.shape[-2:]
    ch, cw = round(h * fraction), round(w * fraction)
    if mode == "hflip":
        return [images, images.flip(-1)]
    top, left = round((h - ch) / 2), round((w - cw) / 2)  # torchvision's centre crop rounds this way (half to even)
    crops = [
        images[..., :ch, :cw],
        images[..., :ch, w - cw :],
        images[..., h - ch :, :cw],
        images[..., h - ch :, w - cw :],
        images[..., top : top + ch, left : left + cw],
    ]
    crops = [F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False, antialias=True) for c in crops]
    return crops + hand_views(images.flip(-1), "five_crop", fraction) if mode == "ten_crop" else crops  # crops of the mirror


def test_views_are_the_flips_and_crops() -> None:
    images = torch.randn(3, 3, 16, 20)
    for mode, count in [("none", 1), ("hflip", 2), ("five_crop", 5), ("ten_crop", 10)]:
        views = tta_views(images, mode, 0.75)
        assert views.shape == (count * 3, 3, 16, 20)
        if mode != "none":
            expected = torch.cat(hand_views(images, mode, 0.75))
            torch.testing.assert_close(views, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="tta mode"):
        tta_views(images, "flip", 0.75)
    with pytest.raises(ValueError, match="crop_fraction"):
        tta_views(images, "five_crop", 0.0)


@pytest.mark.parametrize("task_name, num_classes", [("multiclass", 3), ("multilabel", 3), ("binary", 2)])
@pytest.mark.parametrize("mode", ["hflip", "five_crop", "ten_crop"])
def test_tta_averages_the_task_probabilities(task_name: str, num_classes: int, mode: str) -> None:
    torch.manual_seed(0)
    task = build_task(task_name, num_classes)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(36, task.num_outputs))
    net[-1].weight.data *= 20  # confident outputs, so that averaging probabilities differs from averaging logits
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        logits = tta_logits(task, net, images, mode, 0.75)
        expected = torch.stack([task.predict(net(view)).probs for view in hand_views(images, mode, 0.75)]).mean(0)
        logit_mean = torch.stack([net(view) for view in hand_views(images, mode, 0.75)]).mean(0)
    assert logits.shape == (4, task.num_outputs)
    torch.testing.assert_close(task.predict(logits).probs, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(task.predict(logit_mean).probs, expected, atol=1e-3)  # not the logits' mean


def run_validate(model: FinetuneClassifier, root: Path, tmp_path: Path) -> tuple[dict, torch.Tensor]:
    outputs = Outputs()
    metrics = tiny_trainer(tmp_path, callbacks=[outputs]).validate(model, datamodule=tiny_data(root), verbose=False)[0]
    return metrics, torch.cat(outputs.logits)


def test_hflip_of_a_mirror_symmetric_model_equals_no_tta(image_folder: Path, tmp_path: Path, one_thread) -> None:
    torch.manual_seed(0)
    plain = SymmetricNet(num_classes=2)
    flipped = SymmetricNet(num_classes=2, tta="hflip")
    flipped.load_state_dict(plain.state_dict())
    metrics_plain, logits_plain = run_validate(plain, image_folder, tmp_path)
    metrics_tta, logits_tta = run_validate(flipped, image_folder, tmp_path)
    torch.testing.assert_close(logits_tta.softmax(1), logits_plain.softmax(1), atol=1e-6, rtol=1e-5)
    assert metrics_tta["val/loss"] == pytest.approx(metrics_plain["val/loss"], rel=1e-5)
    assert metrics_tta["val/acc"] == metrics_plain["val/acc"]
    # The same check fails for a model that is not symmetric: hflip does something.
    torch.manual_seed(0)
    asymmetric, asymmetric_tta = SmallConvNet(num_classes=2), SmallConvNet(num_classes=2, tta="hflip")
    asymmetric_tta.load_state_dict(asymmetric.state_dict())
    _, a = run_validate(asymmetric, image_folder, tmp_path)
    _, b = run_validate(asymmetric_tta, image_folder, tmp_path)
    assert not torch.allclose(a.softmax(1), b.softmax(1), atol=1e-6)


class BatchSizes(Callback):
    """Sizes of the image batches that reach the network in each stage."""

    def __init__(self) -> None:
        self.sizes: dict[str, list[int]] = {}

    def setup(self, trainer, pl_module, stage) -> None:
        if not self.sizes:
            pl_module.backbone.register_forward_pre_hook(lambda m, args: self.record(pl_module.trainer.state.fn, len(args[0])))

    def record(self, stage: str, size: int) -> None:
        self.sizes.setdefault(stage, []).append(size)


def test_ten_crop_in_test_and_predict_not_in_fit(image_folder: Path, tmp_path: Path, one_thread) -> None:
    torch.manual_seed(0)
    model = SmallConvNet(num_classes=2, tta="ten_crop", tta_crop_fraction=0.75)
    sizes = BatchSizes()
    data = tiny_data(image_folder)
    trainer = tiny_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1, callbacks=[sizes])
    trainer.fit(model, datamodule=data)
    outputs = Outputs()
    test = tiny_trainer(tmp_path, limit_test_batches=1, limit_predict_batches=1, callbacks=[outputs, sizes])
    test.test(model, dataloaders=data.val_dataloader(), verbose=False)
    predicted = test.predict(model, dataloaders=data.val_dataloader())
    # fit: one training and one validation batch, no views; test and predict: ten views of a batch, one forward a
    # view, so the network never sees more images at once than the evaluation batch holds (4, not 40)
    assert sizes.sizes == {"fit": [4, 4], "test": [4] * 10, "predict": [4] * 10}
    batch = next(iter(data.val_dataloader()))
    model.eval()
    with torch.no_grad():
        expected = torch.stack([model(v)[keys.LOGITS].softmax(1) for v in hand_views(batch[keys.IMAGE], "ten_crop", 0.75)]).mean(0)
    torch.testing.assert_close(outputs.logits[0].softmax(1), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(predicted[0]["probs"], expected, atol=1e-5, rtol=1e-4)


def test_bad_tta_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="tta"):
        FinetuneClassifier(num_classes=2, tta="mirror")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tta_crop_fraction"):
        FinetuneClassifier(num_classes=2, tta="five_crop", tta_crop_fraction=1.5)
