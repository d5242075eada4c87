"""Tests of stages per family (lit_finetune.models.stages), freeze specs and BN holding (lit_finetune.optim.freezing), parameter groups."""

import pytest
import torch
from torch import nn

from lit_finetune.models.backbones import create_backbone
from lit_finetune.models.stages import backbone_stages
from lit_finetune.optim.freezing import freeze, freeze_patterns, hold_eval, is_held_in_eval, release_eval
from lit_finetune.optim.param_groups import apply_lr_scales, parameter_groups

# First module of each stage (relative to the backbone), by family, from the documented table.
EXPECTED_STAGE_STARTS = {
    "resnet18": ["conv1", "layer1", "layer2", "layer3", "layer4"],
    "regnet_y_400mf": ["stem", *(f"trunk_output.block{i}" for i in range(1, 5))],
    "shufflenet_v2_x0_5": ["conv1", "stage2", "stage3", "stage4", "conv5"],
    "googlenet": ["conv1", "inception3a", "inception4a", "inception5a"],
    "inception_v3": ["Conv2d_1a_3x3", "Mixed_5b", "Mixed_6a", "Mixed_7a"],
    "alexnet": ["features.0", "features.3", "features.6", "classifier.1"],
    "vgg11_bn": ["features.0", "features.4", "features.8", "features.15", "features.22", "classifier.0"],
    "densenet121": ["features.conv0", *(f"features.denseblock{i}" for i in range(1, 5))],
    "squeezenet1_1": ["features.0", "features.3", "features.6", "features.9"],
    "mobilenet_v3_small": [*(f"features.{i}" for i in range(13)), "classifier.0"],
    "mnasnet0_5": ["layers.0", *(f"layers.{i}" for i in range(8, 15))],
    "efficientnet_b0": [f"features.{i}" for i in range(9)],
    "convnext_tiny": ["features.0", "features.2", "features.4", "features.6"],
    "vit_b_16": ["class_token", *(f"encoder.layers.encoder_layer_{i}" for i in range(12)), "encoder.ln"],
    "swin_t": [f"features.{i}" for i in range(8)],
    "maxvit_t": ["stem", *(f"blocks.{i}" for i in range(4)), "classifier.2"],
}


def _starts_with_module(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _build(name: str) -> nn.Module:
    try:  # on the meta device: structure only, no weight initialization (fast)
        with torch.device("meta"):
            return create_backbone(name, None, num_classes=3)[0]
    except NotImplementedError:  # regnet computes its widths with tensors
        return create_backbone(name, None, num_classes=3)[0]


@pytest.mark.parametrize("name", list(EXPECTED_STAGE_STARTS))
def test_stages_partition_every_family_in_order(name: str) -> None:
    backbone = _build(name)
    stages = backbone_stages(backbone)
    starts = EXPECTED_STAGE_STARTS[name]
    assert len(stages) == len(starts)
    assert [_starts_with_module(stage[0], start) for stage, start in zip(stages, starts, strict=False)] == [True] * len(starts)
    flat = [n for stage in stages for n in stage]
    assert sorted(flat) == sorted(n for n, _ in backbone.named_parameters())  # each parameter exactly once
    # Stages are contiguous slices in registration order (input to output).
    assert flat == [n for n, _ in backbone.named_parameters()] or name in ("vit_b_16", "googlenet", "inception_v3")


def test_vit_stage_zero_is_the_embedding_and_last_is_the_final_norm() -> None:
    backbone, _ = create_backbone("vit_b_16", None, num_classes=3, model_kwargs={"image_size": 32})
    stages = backbone_stages(backbone)
    assert sorted(stages[0]) == ["class_token", "conv_proj.bias", "conv_proj.weight", "encoder.pos_embedding"]
    assert stages[-1] == ["encoder.ln.weight", "encoder.ln.bias"]


def test_fallback_uses_top_level_children() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(1))
            self.stem = nn.Conv2d(3, 4, 3)
            self.act = nn.ReLU()
            self.body = nn.Linear(4, 4)

    assert backbone_stages(Custom()) == [["token", "stem.weight", "stem.bias"], ["body.weight", "body.bias"]]


STAGES = [["conv1.weight"], ["layer1.0.weight"], ["layer2.0.weight"]]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("none", []),
        (0, []),
        ("backbone", ["backbone"]),
        (2, ["backbone.conv1.weight", "backbone.layer1.0.weight"]),
        (["backbone.layer1*"], ["backbone.layer1*"]),
    ],
)
def test_freeze_patterns(spec, expected) -> None:
    assert freeze_patterns(spec, STAGES) == expected


@pytest.mark.parametrize(("spec", "match"), [(4, "has 3 stages"), (-1, "first -1"), ("head", "not understood"), (True, "boolean")])
def test_freeze_patterns_errors(spec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        freeze_patterns(spec, STAGES)


def _model(name: str = "resnet18", **kwargs) -> nn.Module:
    model = nn.Module()
    model.backbone, width = create_backbone(name, None, num_classes=3, model_kwargs=kwargs)
    model.head = nn.Linear(width, 3)
    return model


@pytest.mark.parametrize("train_bn", [True, False])
def test_freeze_first_k_stages(train_bn: bool) -> None:
    model = _model()
    stages = backbone_stages(model.backbone)
    frozen = freeze(model, freeze_patterns(2, stages), train_bn=train_bn)
    in_first_two = {f"backbone.{n}" for stage in stages[:2] for n in stage}
    bn_params = {n for n in in_first_two if ".bn" in n or n.startswith("backbone.bn1")}
    assert set(frozen) == (in_first_two - bn_params if train_bn else in_first_two)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == set(frozen)
    assert is_held_in_eval(model.backbone.layer1[0].bn1) is not train_bn
    assert not is_held_in_eval(model.backbone.layer2[0].bn1)


def test_freeze_rejects_patterns_that_match_nothing() -> None:
    with pytest.raises(ValueError, match=r"\['backbone.layer9\*'\] match no parameter"):
        freeze(_model(), ["backbone.layer9*"])


def test_held_batchnorm_keeps_its_statistics_and_mode_flag() -> None:
    bn = nn.BatchNorm2d(3)
    before = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    hold_eval([bn])
    hold_eval([bn])  # idempotent
    bn.train()
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    out = bn(x)
    assert bn.training  # the flag is left alone: Lightning sees no module in eval mode
    assert torch.equal(out, nn.functional.batch_norm(x, *before[:2], bn.weight, bn.bias, False, 0.0, bn.eps))
    assert all(torch.equal(a, b) for a, b in zip(before, (bn.running_mean, bn.running_var, bn.num_batches_tracked), strict=False))
    release_eval([bn])
    assert not is_held_in_eval(bn) and not bn._forward_hooks
    bn(x)
    assert not torch.equal(bn.running_mean, before[0])


def _check_groups(model: nn.Module, groups: list[dict], expected: dict[str, tuple[set[str], float, float]]) -> None:
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    apply_lr_scales(optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {g["name"]: ({names[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert set(got) == set(expected)
    for name, (params, lr, weight_decay) in expected.items():
        assert got[name][0] == params, name
        assert got[name][1] == pytest.approx(lr, rel=1e-12), name
        assert got[name][2] == weight_decay, name


def test_parameter_groups_resnet() -> None:
    model = _model()
    stages = backbone_stages(model.backbone)
    frozen = set(freeze(model, freeze_patterns(1, stages)))  # the stem is frozen and left out
    groups = parameter_groups(model, stages, backbone_lr_mult=0.5, layer_decay=0.8, exclude=frozen)
    expected = {"head": ({"head.weight"}, 0.1, 1e-4), "head.no_decay": ({"head.bias"}, 0.1, 0.0)}
    for i in range(1, 5):  # stage i is layer i; conv weights (4-D) decay, BN weights and biases do not
        params = {n for n, p in model.named_parameters() if n.startswith(f"backbone.layer{i}.")}
        lr = 0.1 * 0.5 * 0.8 ** (5 - i)
        expected[f"backbone.stage{i}"] = ({n for n in params if model.get_parameter(n).ndim == 4}, lr, 1e-4)
        expected[f"backbone.stage{i}.no_decay"] = ({n for n in params if model.get_parameter(n).ndim == 1}, lr, 0.0)
    _check_groups(model, groups, expected)


def test_parameter_groups_vit() -> None:
    model = _model("vit_b_16", image_size=32)
    groups = parameter_groups(model, backbone_stages(model.backbone), layer_decay=0.65)

    def no_decay(name: str) -> bool:
        return model.get_parameter(name).ndim == 1 or name.endswith(("class_token", "pos_embedding"))

    def split(stage: str, params: set[str], lr: float) -> dict:
        return {
            stage: ({n for n in params if not no_decay(n)}, lr, 1e-4),
            f"{stage}.no_decay": ({n for n in params if no_decay(n)}, lr, 0.0),
        }

    expected = split("head", {"head.weight", "head.bias"}, 0.1)
    embedding = {"backbone.class_token", "backbone.conv_proj.weight", "backbone.conv_proj.bias", "backbone.encoder.pos_embedding"}
    expected.update(split("backbone.stage0", embedding, 0.1 * 0.65**14))
    for i in range(12):
        prefix = f"backbone.encoder.layers.encoder_layer_{i}."
        layer = {n for n, _ in model.named_parameters() if n.startswith(prefix)}
        expected.update(split(f"backbone.stage{i + 1}", layer, 0.1 * 0.65 ** (13 - i)))
    expected["backbone.stage13.no_decay"] = ({"backbone.encoder.ln.weight", "backbone.encoder.ln.bias"}, 0.1 * 0.65, 0.0)
    _check_groups(model, groups, expected)


def test_parameter_groups_without_norm_bias_split() -> None:
    model = _model()
    groups = parameter_groups(model, backbone_stages(model.backbone), no_weight_decay_norm_bias=False)
    assert [g["name"] for g in groups] == ["all"]  # one LR, one weight decay: one group
    assert "weight_decay" not in groups[0] and groups[0]["lr_scale"] == 1.0
    assert len(groups[0]["params"]) == len(list(model.parameters()))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()}
    separate = parameter_groups(model, backbone_stages(model.backbone), no_weight_decay_norm_bias=False, keep_separate=["backbone.stage4"])
    assert [g["name"] for g in separate] == ["head+backbone.stage0-3", "backbone.stage4"]
    assert {id(p) for p in separate[1]["params"]} == {id(p) for p in model.backbone.layer4.parameters()}
