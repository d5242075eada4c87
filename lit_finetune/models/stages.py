"""Stages of torchvision backbones.

A *stage* is a contiguous slice of a backbone, from the input (stage 0, the stem) to the output.
Freezing the first ``k`` stages, layer-wise LR decay and unfreeze schedules all count in stages.
:func:`backbone_stages` knows every torchvision classification family (see ``docs/finetuning.md``
for the table) and falls back to the model's top-level children in order; :func:`register_stages`
adds a rule for another class. timm models (and their ``features_only`` encoders) use the coarse groups
of their own ``group_matcher``; :func:`backbone_layers` gives the fine groups that layer-wise LR decay
counts in (one per block, as timm's ``param_groups_layer_decay``; the stages for torchvision models).
Stages without parameters are dropped, so every stage holds at least one parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torchvision.models as tvm
from torch import nn

StageRule = Callable[[nn.Module], list[list[str]]]
# The rules take `Any`: each reads the attributes (`features`, `encoder.layers`...) of its own torchvision class.

_STAGE_RULES: dict[type[nn.Module], StageRule] = {}


def register_stages(*model_classes: type[nn.Module]) -> Callable[[StageRule], StageRule]:
    """Decorator that registers a stage rule for ``model_classes`` (and their subclasses).

    A rule returns, for a model, a list of stages from input to output; each stage is a list of
    module or parameter names (relative to the model) whose parameters belong to it.

    Example::

        >>> @register_stages(nn.Sequential)
        ... def _sequential_stages(model):
        ...     return [[name] for name, _ in model.named_children()]
    """

    def decorator(rule: StageRule) -> StageRule:
        for cls in model_classes:
            _STAGE_RULES[cls] = rule
        return rule

    return decorator


def _children(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name, _ in module.named_children()]


def _split_at_pooling(features: nn.Sequential, prefix: str) -> list[list[str]]:
    """Blocks of ``features`` that each end with a max-pooling layer (the last block may not)."""
    stages: list[list[str]] = [[]]
    for name, layer in features.named_children():
        stages[-1].append(f"{prefix}.{name}")
        if isinstance(layer, nn.MaxPool2d):
            stages.append([])
    return stages


@register_stages(tvm.ResNet)
def _resnet_stages(model: nn.Module) -> list[list[str]]:
    return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"], ["fc"]]


@register_stages(tvm.RegNet)
def _regnet_stages(model: Any) -> list[list[str]]:
    return [["stem"], *([name] for name in _children(model.trunk_output, "trunk_output")), ["fc"]]


@register_stages(tvm.ShuffleNetV2)
def _shufflenet_stages(model: nn.Module) -> list[list[str]]:
    return [["conv1"], ["stage2"], ["stage3"], ["stage4"], ["conv5"], ["fc"]]


@register_stages(tvm.GoogLeNet)
def _googlenet_stages(model: nn.Module) -> list[list[str]]:
    inception4 = ["inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "aux1", "aux2"]
    return [["conv1", "conv2", "conv3"], ["inception3a", "inception3b"], inception4, ["inception5a", "inception5b"], ["fc"]]


@register_stages(tvm.Inception3)
def _inception_stages(model: nn.Module) -> list[list[str]]:
    stem = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    mixed6 = ["Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "AuxLogits"]  # the aux head branches off 6e
    return [stem, ["Mixed_5b", "Mixed_5c", "Mixed_5d"], mixed6, ["Mixed_7a", "Mixed_7b", "Mixed_7c"], ["fc"]]


@register_stages(tvm.AlexNet, tvm.VGG, tvm.SqueezeNet)
def _pooling_stages(model: Any) -> list[list[str]]:
    return [*_split_at_pooling(model.features, "features"), ["classifier"]]


@register_stages(tvm.DenseNet)
def _densenet_stages(model: Any) -> list[list[str]]:
    stages: list[list[str]] = [[]]
    for name in _children(model.features, "features"):
        if ".denseblock" in name:
            stages.append([])
        stages[-1].append(name)
    return [*stages, ["classifier"]]


@register_stages(tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet)
def _features_stages(model: Any) -> list[list[str]]:
    return [*([name] for name in _children(model.features, "features")), ["classifier"]]


@register_stages(tvm.MNASNet)
def _mnasnet_stages(model: Any) -> list[list[str]]:
    stages: list[list[str]] = [[]]
    for name, layer in model.layers.named_children():
        if isinstance(layer, nn.Sequential):  # a stack of inverted residual blocks
            stages.extend([[f"layers.{name}"], []])
        else:
            stages[-1].append(f"layers.{name}")
    return [*stages, ["classifier"]]


@register_stages(tvm.ConvNeXt)
def _convnext_stages(model: Any) -> list[list[str]]:
    names = _children(model.features, "features")
    stages = [names[i : i + 2] for i in range(0, len(names), 2)]  # (stem or downsampling, blocks)
    stages[-1].append("classifier")  # its remaining LayerNorm2d normalizes the last stage's output
    return stages


@register_stages(tvm.VisionTransformer)
def _vit_stages(model: Any) -> list[list[str]]:
    embedding = ["conv_proj", "class_token", "encoder.pos_embedding"]
    return [embedding, *([name] for name in _children(model.encoder.layers, "encoder.layers")), ["encoder.ln", "heads"]]


@register_stages(tvm.SwinTransformer)
def _swin_stages(model: Any) -> list[list[str]]:
    stages = [[name] for name in _children(model.features, "features")]
    stages[-1] += ["norm", "head"]
    return stages


@register_stages(tvm.MaxVit)
def _maxvit_stages(model: Any) -> list[list[str]]:
    return [["stem"], *([name] for name in _children(model.blocks, "blocks")), ["classifier"]]


def _fallback_stages(model: nn.Module) -> list[list[str]]:
    direct = [name for name, _ in model.named_parameters(recurse=False)]
    children = [[name] for name, _ in model.named_children()]
    if children:
        children[0] = direct + children[0]
        return children
    return [direct]


def _find_rule(model: nn.Module) -> StageRule:
    for cls in type(model).__mro__:
        if cls in _STAGE_RULES:
            return _STAGE_RULES[cls]
    from lit_finetune.models.timm_backbones import is_timm_model, timm_stages

    return timm_stages if is_timm_model(model) else _fallback_stages


def _owner(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def backbone_stages(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of each stage of ``backbone``, from the input (stem) to the output.

    Args:
        backbone: A torchvision classification model (with or without its final layer) or any module.

    Returns:
        One list of parameter names (relative to ``backbone``) per stage; no stage is empty and
        every parameter is in exactly one stage.

    Raises:
        ValueError: If the rule for this model leaves parameters out (a changed architecture):
            register a rule for it with :func:`register_stages`.

    Example::

        >>> import torchvision
        >>> stages = backbone_stages(torchvision.models.resnet18())
        >>> len(stages), stages[0], stages[1][0]
        (6, ['conv1.weight', 'bn1.weight', 'bn1.bias'], 'layer1.0.conv1.weight')
    """
    return _cover(backbone, _find_rule(backbone)(backbone))


def backbone_layers(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of each *layer* that layer-wise LR decay counts in, from the input to the output.

    timm models: the fine groups of their ``group_matcher`` (a ConvNeXt's blocks, a ViT's blocks), the groups
    timm's own ``param_groups_layer_decay`` decays over; each lies within one stage. Other models: their stages.

    Raises:
        ValueError: as :func:`backbone_stages`.
    """
    from lit_finetune.models.timm_backbones import is_timm_model, timm_layers, timm_stages

    if is_timm_model(backbone) and _find_rule(backbone) is timm_stages:
        return _cover(backbone, timm_layers(backbone))
    return backbone_stages(backbone)


def _cover(backbone: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """Parameter names of each group (module or parameter name prefixes); every parameter exactly once."""
    names = [name for name, _ in backbone.named_parameters()]
    stages = [[name for name in names if _owner(name, prefixes)] for prefixes in groups]
    stages = [stage for stage in stages if stage]
    assigned = [name for stage in stages for name in stage]
    missing = sorted(set(names) - set(assigned))
    if missing or len(assigned) != len(set(assigned)):
        raise ValueError(
            f"The stage rule for {type(backbone).__name__} does not cover its parameters exactly once "
            f"(left out: {missing[:5]}). Register a rule with lit_finetune.models.stages.register_stages."
        )
    return stages
