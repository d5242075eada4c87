"""timm backbones (``backbone: timm/<name>``): weights files, preprocessing, stages, layer decay, fit, Grad-CAM,
export (safetensors and ONNX for every family, ONNX checked with onnxruntime).

Nine families, each tiny (depth and width cut where timm's builder takes them) at 28-32 px, built with
``pretrained=False``; weight files are written by the tests. One module per family is shared by its tests.
"""

from __future__ import annotations

import warnings

import onnxruntime
import pytest
import torch
from lightning.pytorch import Trainer
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lit_finetune import keys
from lit_finetune.callbacks.gradcam import GradCAM
from lit_finetune.data.transforms import default_preprocessing
from lit_finetune.export import export_checkpoint, load_exported
from lit_finetune.models.backbones import check_backbone_name, create_backbone
from lit_finetune.models.stages import backbone_layers, backbone_stages
from lit_finetune.modules.classifier import FinetuneClassifier
from lit_finetune.optim.param_groups import parameter_groups

timm = pytest.importorskip("timm")

TINY_VIT = {"depth": 2}
# name -> (timm.create_model arguments, input side, token model)
FAMILIES = {
    "resnet10t": ({}, 32, False),
    "convnext_atto": ({}, 32, False),
    "tinynet_e": ({}, 32, False),  # EfficientNet
    "mobilenetv3_small_050": ({}, 32, False),
    "regnetx_002": ({}, 32, False),
    "fastvit_t8": ({}, 32, False),  # hybrid: convolutional stages, then attention
    "deit_tiny_patch16_224": ({"img_size": 32, **TINY_VIT}, 32, True),
    "eva02_tiny_patch14_224": ({"img_size": 28, **TINY_VIT}, 28, True),
    "vit_small_patch14_reg4_dinov2": ({"img_size": 28, "embed_dim": 64, "num_heads": 2, **TINY_VIT}, 28, True),  # 4 register tokens
}
NUM_CLASSES = 3
DECAY = 0.5


class RandomImages(Dataset):
    """Normalized random images with a class each, as the data modules give them (dict samples)."""

    def __init__(self, size: int, count: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.targets = torch.arange(count) % NUM_CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {keys.IMAGE: self.images[i], keys.TARGET: self.targets[i], keys.INDEX: i, keys.PATH: f"{i}.png"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, one_thread):
    """A module per family, built from a weights file written here (``module.`` prefixes, classifier included)."""
    name = request.param
    kwargs, size, tokens = FAMILIES[name]
    folder = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, **kwargs)
    path = folder / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = FinetuneClassifier(
        NUM_CLASSES,
        backbone=f"timm/{name}",
        weights=str(path),
        backbone_kwargs=kwargs,
        freeze=1,
        layer_decay=DECAY,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    )
    return {"name": name, "model": model, "reference": reference, "size": size, "tokens": tokens, "folder": folder, "weights": path}


def _fit(model: FinetuneClassifier, size: int, folder) -> Trainer:
    trainer = Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    loader = DataLoader(RandomImages(size), batch_size=4)
    trainer.fit(model, loader, loader)
    return trainer


def test_weights_file_loads_into_backbone(family):
    """Every backbone tensor equals the file's (the classifier is removed, the new head is ours)."""
    reference = family["reference"].state_dict()
    backbone = family["model"].backbone.state_dict()
    assert backbone and all(torch.equal(v, reference[k]) for k, v in backbone.items())


def test_head_on_pre_logits_features(family):
    """The head sees timm's ``forward_head(pre_logits=True)`` features."""
    model, reference, size = family["model"].eval(), family["reference"].eval(), family["size"]
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(images, return_features=True)
        expected = reference.forward_head(reference.forward_features(images), pre_logits=True)
    assert out[keys.FEATURES].shape == (2, model.feature_size) == expected.shape
    torch.testing.assert_close(out[keys.FEATURES], expected)
    assert out[keys.LOGITS].shape == (2, NUM_CLASSES)


def test_stages_and_layer_decay_follow_group_matcher(family):
    """Stages are timm's coarse groups; layer decay runs over the fine groups exactly as timm's own param_groups_layer_decay."""
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    model, reference = family["model"], family["reference"]
    coarse = [names for _, names in sorted(group_parameters(model.backbone, model.backbone.group_matcher(coarse=True)).items())]
    assert model.stages == coarse
    # freeze=1: exactly the first coarse group (the stem) is frozen.
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen == set(coarse[0])

    groups = model.parameter_groups()
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    timm_scale = {n: g["lr_scale"] for g in param_groups_layer_decay(reference, layer_decay=DECAY) for n in _names(reference, g["params"])}
    ratios = {round(scale_of[id(p)] / timm_scale[n], 9) for n, p in model.backbone.named_parameters() if p.requires_grad}
    # Ours counts the backbone's layers up to the head; timm counts its classifier group in too: one constant factor apart.
    assert len(ratios) == 1 and ratios.pop() in (1.0, DECAY)
    layers = backbone_layers(model.backbone)
    assert len({scale_of[id(p)] for p in model.backbone.parameters() if p.requires_grad}) == len(layers) - 1  # the stem is frozen
    head = [g for g in groups if g["name"].startswith("head")]
    assert head and all(g["lr_scale"] == 1.0 for g in head)


def _names(model, params):
    ids = {id(p) for p in params}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_no_weight_decay_on_norms_biases_and_declared_tokens(family):
    model = family["model"]
    no_decay = {id(p) for g in model.parameter_groups() if g.get("weight_decay") == 0.0 for p in g["params"]}
    declared = set(getattr(model.backbone, "no_weight_decay", lambda: set())())
    for name, param in model.backbone.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name in declared
        assert (id(param) in no_decay) == exempt, name
    if family["tokens"]:
        assert {"cls_token", "pos_embed"} & declared


def test_fit_trains_head_and_unfrozen_stages_only(family):
    model, size = family["model"], family["size"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _fit(model, size, family["folder"])
    assert trainer.global_step == 2
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {f"backbone.{n}" for n in model.stages[0]}
    assert not changed & frozen
    assert any(n.startswith("head.") for n in changed)
    assert any(n.startswith("backbone.") for n in changed)
    trainer.save_checkpoint(family["folder"] / "last.ckpt")


def test_gradcam_picks_a_layer_and_gives_maps(family):
    model, size = family["model"], family["size"]
    gradcam = GradCAM(num_images=2)
    images = torch.randn(2, 3, size, size)
    heatmaps, _, _ = gradcam.heatmaps(model, images)
    assert heatmaps.shape == (2, 1, size, size) and torch.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    if family["tokens"]:
        last = len(model.backbone.blocks) - 1
        assert gradcam.layer_name == f"backbone.blocks.{last}.norm1"
    else:
        assert gradcam.layer_name.startswith("backbone.")


def test_export_safetensors_and_onnx_rebuild_the_same_model(family, tmp_path):
    ckpt = family["folder"] / "last.ckpt"
    if not ckpt.exists():  # the fit test writes it; run alone, this test fits first
        _fit(family["model"], family["size"], family["folder"]).save_checkpoint(ckpt)
    size = family["size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on each family's operators
        files = export_checkpoint(str(ckpt), str(tmp_path), example_size=size, onnx=True)
    model, config = load_exported(tmp_path)  # built with weights=None (nothing fetched), then the exported weights
    images = torch.randn(3, 3, size, size)  # another batch size than the export's example: the batch is dynamic
    with torch.no_grad():
        expected = family["model"].eval()(images)[keys.LOGITS]
        torch.testing.assert_close(model(images)[keys.LOGITS], expected)
    session = onnxruntime.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"images": images.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, atol=1e-4, rtol=1e-4)
    assert config["init_args"]["backbone"] == f"timm/{family['name']}"
    assert config["preprocessing"]["mean"] == pytest.approx(family["reference"].pretrained_cfg["mean"])


def test_torchscript_export_of_a_timm_model(tmp_path):
    model = FinetuneClassifier(NUM_CLASSES, backbone="timm/resnet10t")
    ckpt = _checkpoint(model, tmp_path)
    files = export_checkpoint(str(ckpt), str(tmp_path / "out"), torchscript=True, example_size=32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(files["torchscript"])(images), model.eval()(images)[keys.LOGITS])


def test_torchscript_failure_names_the_backbone_and_what_works(tmp_path, monkeypatch):
    ckpt = _checkpoint(FinetuneClassifier(NUM_CLASSES, backbone="timm/resnet10t"), tmp_path)

    def untraceable(*args, **kwargs):
        raise torch.jit.Error("Tracer cannot infer type of output")

    monkeypatch.setattr(torch.jit, "trace", untraceable)
    with pytest.raises(RuntimeError, match=r"tracing of backbone 'timm/resnet10t' failed: Tracer cannot.*safetensors weights"):
        export_checkpoint(str(ckpt), str(tmp_path / "out"), torchscript=True, example_size=32)


def _checkpoint(model: FinetuneClassifier, folder):
    trainer = Trainer(logger=False, max_steps=0, enable_progress_bar=False, default_root_dir=folder)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(folder / "model.ckpt")
    return folder / "model.ckpt"


# ------------------------------------------------------------------------------------------ without a family
def test_preprocessing_from_pretrained_cfg():
    """Sizes, statistics and interpolation come from the tag's pretrained_cfg, as timm's create_transform uses them."""
    for name, weights in [("timm/convnext_atto", None), ("timm/vit_small_patch14_dinov2.lvd142m", None), ("timm/resnet10t", "c3_in1k")]:
        arch = name[5:].split(".")[0] + (f".{weights}" if weights else "")
        cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name[5:] if weights is None else arch).to_dict())
        reference = timm.data.create_transform(**cfg)
        pre = default_preprocessing(name, weights)
        resize = next(t for t in reference.transforms if type(t).__name__ == "Resize")
        crop = next(t for t in reference.transforms if type(t).__name__ == "CenterCrop")
        assert (pre.resize_size, pre.crop_size) == (resize.size if isinstance(resize.size, int) else resize.size[0], crop.size[0])
        assert pre.mean == pytest.approx(cfg["mean"]) and pre.std == pytest.approx(cfg["std"])
        assert pre.interpolation.value == cfg["interpolation"]
    assert default_preprocessing("timm/vit_small_patch14_dinov2.lvd142m", None).crop_size == 518
    assert default_preprocessing("timm/vit_base_patch16_clip_224.openai", None).mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert default_preprocessing("timm/convnext_atto", None).interpolation == v2.InterpolationMode.BICUBIC


def test_unknown_names_and_tags_get_suggestions():
    with pytest.raises(ValueError, match=r"Unknown timm backbone 'timm/convnext_atoo'.*timm/convnext_atto"):
        check_backbone_name("timm/convnext_atoo")
    with pytest.raises(ValueError, match=r"'in22k' is not a pretrained tag of timm's convnext_atto; tags: d2_in1k"):
        create_backbone("timm/convnext_atto", "in22k")
    with pytest.raises(ValueError, match=r"already names the tag 'd2_in1k'"):
        create_backbone("timm/convnext_atto.d2_in1k", "other")


def test_weights_file_of_another_variant_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"3 tensor\(s\) of .* do not fit timm's ResNet:\n  layer2\.0\.downsample\.1\.weight: \(128,\) in the file, \(128, 64, 1, 1\) in the model",
    ):
        create_backbone("timm/resnet10t", str(path))


def test_missing_timm_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ValueError, match=r'needs the timm package.*pip install -e "\.\[timm\]"'):
        check_backbone_name("timm/convnext_atto")
    with pytest.raises(ValueError, match="timm"):
        default_preprocessing("timm/convnext_atto", None)


def test_backbone_gives_pooled_features_and_stages():
    backbone, width = create_backbone("timm/resnet10t")
    assert width == 512 and backbone.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)
    assert [s[0] for s in backbone_stages(backbone)] == [
        "conv1.0.weight",
        "layer1.0.conv1.weight",
        "layer2.0.conv1.weight",
        "layer3.0.conv1.weight",
        "layer4.0.conv1.weight",
    ]


@pytest.mark.parametrize(
    ("name", "kwargs", "culprit"),
    [
        ("convnext_atto", {}, "backbone.stages.1.blocks.0.conv_dw"),
        ("deit_tiny_patch16_224", {"img_size": 32, **TINY_VIT}, "backbone.blocks.1.attn.proj"),
    ],
)
def test_gradient_stats_and_nan_guard_name_timm_modules(name, kwargs, culprit, tmp_path, one_thread):
    """GradientStats logs timm's layer paths; NanGuard names the timm module that first gave a NaN."""
    from lightning.pytorch.loggers import CSVLogger

    from lit_finetune.callbacks.gradient_stats import GradientStats
    from lit_finetune.callbacks.nan_guard import NanGuard

    model = FinetuneClassifier(NUM_CLASSES, backbone=f"timm/{name}", backbone_kwargs=kwargs)
    stats, guard = GradientStats(every_n_steps=1), NanGuard(dirpath=str(tmp_path), detect_anomaly=False)
    trainer = Trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[stats, guard],
        limit_val_batches=0,
    )
    layer = model.get_submodule(culprit)
    poison = layer.register_forward_hook(lambda m, args, out: out * float("nan") if trainer.global_step == 1 else out)
    trainer.fit(model, DataLoader(RandomImages(32), batch_size=4))
    poison.remove()
    assert any(key.endswith(f"grad/{culprit}/norm") for key in stats.last_logged)  # the prefix sorts the tags
    assert guard.culprit == culprit
    assert f"First module with a non-finite output: '{culprit}'" in guard.report


def test_frozen_fast_path_and_feature_cache_on_timm_features():
    """A frozen timm backbone runs in eval mode without autograd; cached pre-logits features feed the head."""
    model = FinetuneClassifier(NUM_CLASSES, backbone="timm/resnet10t", freeze="backbone", cache_features=True).train()
    stats = model.backbone.bn1.running_mean.clone()
    batch = {keys.IMAGE: torch.randn(4, 3, 32, 32), keys.INDEX: torch.arange(4)}
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    first = model._step_outputs(batch, "train")[keys.LOGITS]
    model._step_outputs(batch, "train")  # the cache is verified once against fresh features
    second = model._step_outputs(batch, "train")[keys.LOGITS]  # from the cache: the backbone does not run again
    assert len(calls) == 2 and first.requires_grad
    torch.testing.assert_close(first, second)
    assert torch.equal(model.backbone.bn1.running_mean, stats)  # eval mode: BatchNorm statistics did not move
    features = model(batch[keys.IMAGE], return_features=True)[keys.FEATURES]
    assert not features.requires_grad and features.shape == (4, 512)


def test_unfreeze_groups_with_layer_decay_keep_each_stage_apart():
    """With layer decay over timm's fine groups, a stage an unfreeze schedule holds shares no group with another stage."""
    model = FinetuneClassifier(NUM_CLASSES, backbone="timm/convnext_atto", layer_decay=0.8)
    stages = model.stages
    groups = parameter_groups(model, stages, layer_decay=0.8, keep_separate=["backbone.stage1"], layers=backbone_layers(model.backbone))
    stage1 = {id(p) for n, p in model.backbone.named_parameters() if n in set(stages[1])}
    holding = [g for g in groups if any(id(p) in stage1 for p in g["params"])]
    assert holding and all(all(id(p) in stage1 for p in g["params"]) for g in holding)
    assert {g["name"].removesuffix(".no_decay") for g in holding} == {"backbone.layer1", "backbone.layer2"}  # stages.0: 2 blocks
