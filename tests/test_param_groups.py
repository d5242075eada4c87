"""Tests of lit_finetune.optim.param_groups: parts with the same hyperparameters share one group."""

import pytest
import torch
from torch import nn

from lit_finetune.models.backbones import create_backbone
from lit_finetune.models.stages import backbone_stages
from lit_finetune.optim.freezing import freeze, freeze_patterns
from lit_finetune.optim.param_groups import apply_lr_scales, parameter_groups


@pytest.fixture(scope="module")
def model() -> nn.Module:
    model = nn.Module()
    model.backbone, width = create_backbone("resnet18", None, num_classes=3)
    model.head = nn.Linear(width, 3)
    return model


def names_by_group(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    """Parameter names of each group, checking that every trainable parameter is in exactly one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    placed = [names[id(p)] for g in groups for p in g["params"]]
    assert len(placed) == len(set(placed))
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}


def is_no_decay(model: nn.Module, name: str) -> bool:
    return model.get_parameter(name).ndim == 1  # resnet: biases and BN parameters


def test_plain_recipe_is_one_group_per_weight_decay(model: nn.Module) -> None:
    groups = parameter_groups(model, backbone_stages(model.backbone))
    by_name = names_by_group(model, groups)
    everything = {n for n, _ in model.named_parameters()}
    assert list(by_name) == ["all", "all.no_decay"]
    assert by_name["all"] == {n for n in everything if not is_no_decay(model, n)}
    assert by_name["all.no_decay"] == {n for n in everything if is_no_decay(model, n)}
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0]
    assert "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0


def test_backbone_multiplier_splits_head_from_backbone(model: nn.Module) -> None:
    groups = parameter_groups(model, backbone_stages(model.backbone), backbone_lr_mult=0.1)
    by_name = names_by_group(model, groups)
    assert list(by_name) == ["head", "head.no_decay", "backbone", "backbone.no_decay"]
    assert by_name["head"] | by_name["head.no_decay"] == {"head.weight", "head.bias"}
    backbone = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    assert by_name["backbone"] | by_name["backbone.no_decay"] == backbone
    optimizer = torch.optim.SGD(groups, lr=0.2, weight_decay=1e-4)
    apply_lr_scales(optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.2, 0.02, 0.02])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0, 1e-4, 0.0]


def test_layer_decay_gives_every_stage_its_own_groups(model: nn.Module) -> None:
    stages = backbone_stages(model.backbone)
    groups = parameter_groups(model, stages, layer_decay=0.5)
    by_name = names_by_group(model, groups)
    expected = [f"{part}{suffix}" for part in ["head", *(f"backbone.stage{i}" for i in range(5))] for suffix in ("", ".no_decay")]
    assert list(by_name) == expected
    for i, stage in enumerate(stages):
        assert by_name[f"backbone.stage{i}"] | by_name[f"backbone.stage{i}.no_decay"] == {f"backbone.{n}" for n in stage}
    assert [g["lr_scale"] for g in groups[2::2]] == [0.5 ** (5 - i) for i in range(5)]


def test_frozen_parameters_are_left_out_of_the_merged_group() -> None:
    model = nn.Module()
    model.backbone, width = create_backbone("resnet18", None, num_classes=3)
    model.head = nn.Linear(width, 3)
    stages = backbone_stages(model.backbone)
    frozen = set(freeze(model, freeze_patterns(2, stages)))  # stem and layer1
    by_name = names_by_group(model, parameter_groups(model, stages, exclude=frozen))
    assert list(by_name) == ["all", "all.no_decay"]
    assert by_name["all"] | by_name["all.no_decay"] == {n for n, p in model.named_parameters() if p.requires_grad}


def test_kept_parts_have_groups_of_their_own(model: nn.Module) -> None:
    stages = backbone_stages(model.backbone)
    held = [f"backbone.stage{i}" for i in range(5)]  # what an unfreeze schedule holds
    by_name = names_by_group(model, parameter_groups(model, stages, keep_separate=held))
    assert list(by_name) == [f"{part}{suffix}" for part in ["head", *held] for suffix in ("", ".no_decay")]
    by_name = names_by_group(model, parameter_groups(model, stages, keep_separate=["backbone.stage2"]))
    assert list(by_name) == ["head+backbone.stage0-1+backbone.stage3-4", "head+backbone.stage0-1+backbone.stage3-4.no_decay",
                             "backbone.stage2", "backbone.stage2.no_decay"]  # fmt: skip
    assert by_name["backbone.stage2"] | by_name["backbone.stage2.no_decay"] == {f"backbone.{n}" for n in stages[2]}


def test_unknown_kept_part_is_an_error(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"keep_separate=\['backbone.stage9'\] names no part"):
        parameter_groups(model, backbone_stages(model.backbone), keep_separate=["backbone.stage9"])
