"""timm encoders for segmentation: a CNN through features_only stages, a ViT through its intermediate blocks."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from seg_model_helpers import ShapesDataset, loader, tiny_module

from lit_finetune import keys
from lit_finetune.models.segmenters import build_segmenter

timm = pytest.importorskip("timm")

VIT = {"img_size": 32, "depth": 4}


def _fit(model, steps: int = 3) -> Trainer:
    trainer = Trainer(
        max_steps=steps,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader(ShapesDataset()), loader(ShapesDataset(seed=1)))
    return trainer


def test_cnn_encoder_channels_and_strides_come_from_feature_info():
    net = build_segmenter("timm/resnet10t", 3, decoder_channels=[16, 16, 8, 8])
    reference = timm.create_model("resnet10t", features_only=True)  # timm's own features_only model
    assert net.strides == reference.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert net.head.classifier.out_channels == 3
    maps = net.backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == reference.feature_info.channels()
    assert [64 // m.shape[-1] for m in maps] == net.strides


def test_vit_encoder_gives_maps_without_prefix_tokens():
    net = build_segmenter(
        "timm/vit_small_patch14_reg4_dinov2", 2, backbone_kwargs={"img_size": 28, "depth": 4, "embed_dim": 32, "num_heads": 2}
    )
    reference = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=28, depth=4, embed_dim=32, num_heads=2).eval()
    net.backbone.model.load_state_dict({k: v for k, v in reference.state_dict().items() if k in net.backbone.model.state_dict()})
    images = torch.randn(2, 3, 28, 28)
    maps = net.backbone.eval()(images)
    assert net.strides == [14] * 4 and len(maps) == 4
    # The last map is the last block's patch tokens (5 prefix tokens dropped) on the 2x2 grid.
    tokens = reference.blocks(reference._pos_embed(reference.patch_embed(images)))
    expected = tokens[:, reference.num_prefix_tokens :].reshape(2, 2, 2, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps[-1], expected)


def test_fit_with_a_timm_cnn_encoder_and_frozen_stem(one_thread):
    model = tiny_module(backbone="timm/convnext_atto", freeze=1)
    stem = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if n.startswith("model.stem")}
    assert stem and all(not p.requires_grad for n, p in model.backbone.named_parameters() if n in stem)
    _fit(model)
    assert all(torch.equal(p, stem[n]) for n, p in model.backbone.named_parameters() if n in stem)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 40))[keys.LOGITS].shape == (1, 3, 40, 40)


def test_fit_with_a_timm_vit_encoder_and_layer_decay(one_thread, tmp_path):
    reference = timm.create_model("deit_tiny_patch16_224", **VIT)
    path = tmp_path / "deit.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    model = tiny_module(backbone="timm/deit_tiny_patch16_224", weights=str(path), backbone_kwargs=VIT, layer_decay=0.5)
    own = model.backbone.model.state_dict()
    assert own and all(torch.equal(v, reference.state_dict()[k]) for k, v in own.items())
    scales = sorted({g["lr_scale"] for g in model.parameter_groups()})
    assert scales == [0.5**k for k in range(5, 0, -1)] + [1.0]  # embedding + 4 blocks decay, the decoder at 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _fit(model)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith("backbone."))
