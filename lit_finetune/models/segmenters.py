"""Segmentation networks as plain ``nn.Module``s (usable without Lightning): ``forward(images)`` returns ``{"logits": (N, C, H, W)}``.

Two kinds, both with a ``backbone`` (the feature extractor that freezing, stages and layer-wise LR
decay count in) and a ``head`` (everything else, trained at the head LR):

- :class:`TorchvisionSegmenter`: torchvision's segmentation models by name (``fcn_resnet50``,
  ``deeplabv3_resnet50``, ``lraspp_mobilenet_v3_large``, ...), with their COCO/VOC ``weights`` or
  ImageNet ``weights_backbone``; the final layers of the classifier (and of the auxiliary classifier)
  are rebuilt for ``num_classes``. In training, ``aux_logits`` holds the auxiliary head's output.
- :class:`EncoderDecoderSegmenter`: any torchvision classification backbone (``resnet18``,
  ``efficientnet_b0``, ``convnext_tiny``, ``mobilenet_v3_large``, ``regnet_y_400mf``, ...) as the encoder,
  through ``torchvision.models.feature_extraction.create_feature_extractor`` at each stride, and a small
  U-Net decoder, so that ImageNet weights of every convolutional family serve segmentation.

:func:`build_segmenter` picks the kind from the name.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.fx import GraphModule
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.segmentation.lraspp import LRASPPHead

from lit_finetune import keys
from lit_finetune.models.backbones import available_backbones, check_backbone_name, create_backbone, is_weights_file, resolve_weights
from lit_finetune.models.network import BackboneHeadNetwork
from lit_finetune.models.stages import _find_rule, backbone_stages, register_stages
from lit_finetune.models.timm_backbones import create_timm_encoder, is_timm_name
from lit_finetune.models.weights import load_state_dict_file, load_weights

PROBE_SIZE = 128
"""Side of the blank image run once through an encoder to find its strides."""
TOKEN_FAMILIES = ("vit_", "swin")
"""Families whose stage outputs are token sequences or channels-last maps, not ``(N, C, H, W)`` maps."""


def segmentation_models() -> list[str]:
    """Names of torchvision's segmentation models (``torchvision.models.list_models(module=torchvision.models.segmentation)``)."""
    return list_models(module=torchvision.models.segmentation)


def is_torchvision_segmenter(name: str) -> bool:
    """Whether ``name`` is one of torchvision's segmentation models (else it is taken as an encoder)."""
    return name in segmentation_models()


# ---------------------------------------------------------------------------------------- torchvision models
@register_stages(IntermediateLayerGetter)
def _intermediate_stages(model: nn.Module) -> list[list[str]]:
    """Stages of a torchvision segmentation backbone: the ResNet grouping, else one stage per child."""
    names = [name for name, _ in model.named_children()]
    if "layer1" in names:
        return [["conv1", "bn1"], *([name] for name in names if name.startswith("layer"))]
    return [[name] for name in names]


@register_stages(GraphModule)
def _traced_stages(model: nn.Module) -> list[list[str]]:
    """Stages of an encoder traced by ``create_feature_extractor``: those of the classifier it came from."""
    names = getattr(model, "stage_names", None)
    return names if names is not None else [[name] for name, _ in model.named_children()]


def _final_convs(model: nn.Module, num_classes: int) -> list[str]:
    """Names of the class-producing 1x1 convolutions of the classifier and auxiliary classifier."""
    return [
        name
        for name, module in model.named_modules()
        if name.startswith(("classifier.", "aux_classifier.")) and isinstance(module, nn.Conv2d) and module.out_channels == num_classes
    ]


def _replace_conv(model: nn.Module, name: str, out_channels: int) -> None:
    old: Any = model.get_submodule(name)  # a final Conv2d (its kernel_size and stride are typed tuple[int, ...])
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, nn.Conv2d(old.in_channels, out_channels, old.kernel_size, old.stride))


class TorchvisionSegmenter(BackboneHeadNetwork):
    """One of torchvision's segmentation models with its output layers rebuilt for ``num_classes``.

    Args:
        name: ``fcn_resnet50``, ``fcn_resnet101``, ``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
            ``deeplabv3_mobilenet_v3_large`` or ``lraspp_mobilenet_v3_large``.
        num_classes: output maps (binary segmentation: 1).
        weights: None, a weights name of the model (``"DEFAULT"``, ``"COCO_WITH_VOC_LABELS_V1"``; downloaded
            by torchvision) or a local state_dict file of the whole torchvision model. The final layers are
            rebuilt afterwards.
        weights_backbone: None or an ImageNet weights name of the backbone (``"DEFAULT"``, ``"IMAGENET1K_V1"``),
            used when ``weights`` is None.
        aux_loss: keep the auxiliary classifier (fcn, deeplabv3 with a ResNet): its logits are returned in training.
        channels_last: convert inputs to the channels-last memory format.
        trust_pickle: allow a local file holding a whole pickled model.

    Raises:
        ValueError: an unknown name or weights name, or a weights file that does not fit.

    Example::

        net = TorchvisionSegmenter("lraspp_mobilenet_v3_large", num_classes=3)
        net(torch.randn(1, 3, 64, 64))["logits"].shape  # (1, 3, 64, 64)
    """

    head: nn.ModuleDict  # "classifier" and, where the model has one, "aux_classifier"

    def __init__(
        self,
        name: str,
        num_classes: int,
        weights: str | None = None,
        weights_backbone: str | None = None,
        aux_loss: bool = True,
        channels_last: bool = False,
        trust_pickle: bool = False,
    ) -> None:
        super().__init__()
        if not is_torchvision_segmenter(name):
            raise ValueError(f"'{name}' is not a torchvision segmentation model; choose one of {segmentation_models()}.")
        self.name = name
        self.channels_last = channels_last
        enum = resolve_weights(name, weights)
        aux = aux_loss and not name.startswith("lraspp")
        if enum is not None or is_weights_file(weights):
            # Built with the layout of the weights (their class count and auxiliary head), then rebuilt.
            classes = len((enum or get_model_weights(name).DEFAULT).meta["categories"])
            model = get_model(name, weights=enum, weights_backbone=None, num_classes=classes, **({"aux_loss": True} if aux else {}))
            finals = _final_convs(model, classes)
            if is_weights_file(weights):
                self._load_file(model, weights, finals, trust_pickle)
            for conv in finals:
                _replace_conv(model, conv, num_classes)
            if not aux and getattr(model, "aux_classifier", None) is not None:
                model.aux_classifier = None
        else:
            backbone_enum = resolve_weights(_backbone_family(name), weights_backbone) if weights_backbone else None
            model = get_model(
                name, weights=None, weights_backbone=backbone_enum, num_classes=num_classes, **({"aux_loss": True} if aux else {})
            )
        self.backbone = model.backbone
        self.head = nn.ModuleDict({"classifier": model.classifier})
        if getattr(model, "aux_classifier", None) is not None:
            self.head["aux_classifier"] = model.aux_classifier
        self.__dict__["model"] = model  # torchvision's forward, not registered twice

    @staticmethod
    def _load_file(model: nn.Module, path: str, finals: Sequence[str], trust_pickle: bool) -> None:
        state = load_state_dict_file(path, trust_pickle)
        own = model.state_dict()
        # Final layers of another class count are rebuilt anyway: leave them out.
        prefixes = tuple(f"{name}." for name in finals)
        state = {k: v for k, v in state.items() if not (k.startswith(prefixes) and k in own and own[k].shape != v.shape)}
        report = load_weights(model, state)
        missing = [k for k in report.missing if k.startswith("backbone.") and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(
                f"Weights file '{path}' lacks {len(missing)} backbone tensors of {type(model).__name__}, e.g. {missing[:5]}: "
                "is it a state_dict of this torchvision segmentation model?"
            )
        rank_zero_info(f"Loaded {path}:\n{report}")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        size = images.shape[-2:]
        features = self.features(images)
        classifier = self.head["classifier"]
        # LR-ASPP's head reads two feature maps ("low", "high"); the others read "out".
        logits = classifier(features) if isinstance(classifier, LRASPPHead) else classifier(features["out"])
        out = {keys.LOGITS: F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.training and "aux_classifier" in self.head and "aux" in features:
            out[keys.AUX_LOGITS] = F.interpolate(
                self.head["aux_classifier"](features["aux"]), size=size, mode="bilinear", align_corners=False
            )
        return out


def _backbone_family(name: str) -> str:
    """The classification model a segmentation model's backbone comes from (``deeplabv3_resnet50`` -> ``resnet50``)."""
    return name.split("_", 1)[1]


# ---------------------------------------------------------------------------------------- encoder + decoder
def _stage_outputs(model: nn.Module) -> list[str]:
    """Module names whose outputs may serve as skip features: those the family's stage rule lists, in order."""
    return [name for stage in _find_rule(model)(model) for name in stage]


@torch.no_grad()
def pyramid_nodes(model: nn.Module, probe_size: int = PROBE_SIZE) -> list[tuple[str, int, int]]:
    """``(module name, stride, channels)`` of the last stage output at each stride, finest first.

    A blank image is run once through ``model`` (a torchvision classifier) with hooks on the modules that
    its stage rule names (:mod:`lit_finetune.models.stages`).

    Raises:
        ValueError: no stage gives an ``(N, C, H, W)`` map.
    """
    modules = dict(model.named_modules())
    names = [n for n in _stage_outputs(model) if n in modules]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        modules[n].register_forward_hook(
            lambda m, a, out, _n=n: shapes.__setitem__(_n, tuple(out.shape)) if isinstance(out, Tensor) else None
        )
        for n in names
    ]
    modes = [m.training for m in model.modules()]
    try:
        model.eval()
        model(torch.zeros(1, 3, probe_size, probe_size))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in zip(model.modules(), modes, strict=False):
            m.training = mode
    by_stride: dict[int, tuple[str, int, int]] = {}
    for n in names:
        shape = shapes.get(n)
        if shape is None or len(shape) != 4 or shape[-1] < 1 or shape[-1] != shape[-2]:
            continue
        stride = round(probe_size / shape[-1])
        by_stride[stride] = (n, stride, shape[1])  # the last module at each stride wins
    if not by_stride:
        raise ValueError(f"No stage of {type(model).__name__} gives a (N, C, H, W) feature map: it cannot serve as an encoder.")
    return [by_stride[s] for s in sorted(by_stride)]


class DecoderBlock(nn.Module):
    """Upsample to the skip feature's size, concatenate it, then two 3x3 conv-BN-ReLU layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """A U-Net decoder: from the coarsest feature map up through each finer one, then a 1x1 classifier.

    Args:
        channels: channels of the encoder features, finest first.
        decoder_channels: output channels of the decoder blocks, coarsest block first; one per finer
            level (extra entries are unused, missing ones repeat the last).
        num_classes: output maps.
        dropout: dropout before the classifier.
    """

    def __init__(self, channels: Sequence[int], decoder_channels: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not decoder_channels or min(decoder_channels) < 1:
            raise ValueError(f"`decoder_channels` must be a non-empty list of positive widths, got {list(decoder_channels)}.")
        widths = [decoder_channels[min(i, len(decoder_channels) - 1)] for i in range(len(channels) - 1)]
        blocks, width = [], channels[-1]
        for skip, out in zip(reversed(channels[:-1]), widths, strict=False):
            blocks.append(DecoderBlock(width, skip, out))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=False):
            x = block(x, skip)
        return self.classifier(self.dropout(x))


class EncoderDecoderSegmenter(BackboneHeadNetwork):
    """A torchvision classification backbone (or a timm model) as the encoder and a U-Net decoder; logits at the input size.

    The encoder is ``create_feature_extractor(model, nodes)``: the last stage output at each stride
    (resnet18: ``bn1``, ``layer1`` ... ``layer4`` at strides 2 to 32), a traced module that keeps the
    backbone's parameter names, so stages, freezing and layer-wise LR decay apply to it as to the
    classifier. A ``timm/<name>`` encoder is timm's ``features_only`` model (``FeatureGetterNet`` over
    ``forward_intermediates``; channels and strides from its ``feature_info``): each stage of a CNN, four
    evenly spaced blocks of a ViT as maps at the patch stride (class and register tokens dropped); its
    parameters keep timm's names under ``backbone.model.``, and its stages are the model's ``group_matcher``
    groups. The decoder's logits (at the finest stride) are upsampled bilinearly to the input size.

    Args:
        backbone: a torchvision classification model with 2-D feature maps (not vit/swin), or ``timm/<name>``
            (CNNs and ViTs; see :mod:`lit_finetune.models.timm_backbones`).
        num_classes: output maps (binary segmentation: 1).
        weights: None, a weights name of the backbone (``"DEFAULT"``, ``"IMAGENET1K_V1"``) or a local file.
        decoder_channels: widths of the decoder blocks, coarsest first.
        decoder_dropout: dropout before the final 1x1 convolution.
        channels_last: convert inputs to the channels-last memory format.
        trust_pickle: allow a local weights file holding a whole pickled model.
        backbone_kwargs: extra arguments of the torchvision builder (timm: of ``timm.create_model``).

    Raises:
        ValueError: an unknown or token-based (torchvision) backbone, unknown weights, or a file that does not fit.

    Example::

        net = EncoderDecoderSegmenter("resnet18", num_classes=4, decoder_channels=[64, 32, 16, 16])
        net(torch.randn(2, 3, 64, 64))["logits"].shape  # (2, 4, 64, 64)
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        weights: str | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32),
        decoder_dropout: float = 0.0,
        channels_last: bool = False,
        trust_pickle: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_backbone_name(backbone)
        self.name = backbone
        self.channels_last = channels_last
        if is_timm_name(backbone):  # timm's features_only encoder: channels and strides from its feature_info
            self.backbone, channels, self.strides = create_timm_encoder(backbone, weights, trust_pickle, backbone_kwargs)
            self.head = UNetDecoder(channels, decoder_channels, num_classes, decoder_dropout)
            return
        if backbone.startswith(TOKEN_FAMILIES):
            raise ValueError(
                f"'{backbone}' gives tokens, not (N, C, H, W) feature maps: pick a convolutional encoder (resnet, efficientnet, convnext, mobilenet, regnet, ...)."
            )
        model, _ = create_backbone(backbone, weights, trust_pickle=trust_pickle, aux_logits=False, model_kwargs=backbone_kwargs)
        nodes = pyramid_nodes(model)
        self.strides = [stride for _, stride, _ in nodes]
        stages = backbone_stages(model)
        self.backbone = create_feature_extractor(model, {name: str(i) for i, (name, _, _) in enumerate(nodes)})
        kept = {name for name, _ in self.backbone.named_parameters()}
        # The traced encoder keeps the classifier's parameter names: its stages are the classifier's (see _traced_stages).
        # stage_names: read by backbone_stages
        self.backbone.stage_names = [kept_stage for stage in stages if (kept_stage := [name for name in stage if name in kept])]  # type: ignore[assignment]
        self.head = UNetDecoder([channels for _, _, channels in nodes], decoder_channels, num_classes, decoder_dropout)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        features = self.features(images)
        maps = features if isinstance(features, list) else [features[str(i)] for i in range(len(features))]
        logits = self.head(maps)
        return {keys.LOGITS: F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)}


def build_segmenter(
    name: str,
    num_classes: int,
    weights: str | None = None,
    weights_backbone: str | None = None,
    aux_loss: bool = True,
    decoder_channels: Sequence[int] = (256, 128, 64, 32),
    decoder_dropout: float = 0.0,
    channels_last: bool = False,
    trust_pickle: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
) -> TorchvisionSegmenter | EncoderDecoderSegmenter:
    """A torchvision segmentation model (by its name) or an encoder-decoder on a classification backbone.

    Raises:
        ValueError: options that the chosen kind does not take, or any error of the builders.

    Example::

        build_segmenter("deeplabv3_mobilenet_v3_large", 5, weights_backbone="IMAGENET1K_V1")
        build_segmenter("efficientnet_b0", 5, weights="DEFAULT")
    """
    if not is_torchvision_segmenter(name) and name not in available_backbones() and not is_timm_name(name):
        close = difflib.get_close_matches(name, segmentation_models() + available_backbones(), n=5, cutoff=0.5)
        hint = f"Did you mean: {', '.join(close)}?" if close else "See `torchvision.models.list_models()`."
        raise ValueError(f"Unknown segmentation model or encoder '{name}'. {hint} Segmentation models: {', '.join(segmentation_models())}.")
    if is_torchvision_segmenter(name):
        if backbone_kwargs:
            raise ValueError(f"`backbone_kwargs` apply to encoder backbones, not to torchvision's segmentation model '{name}'.")
        return TorchvisionSegmenter(name, num_classes, weights, weights_backbone, aux_loss, channels_last, trust_pickle)
    if weights_backbone is not None:
        raise ValueError(
            f"`weights_backbone` is for torchvision's segmentation models; '{name}' is an encoder: give its weights in `weights`."
        )
    return EncoderDecoderSegmenter(
        name, num_classes, weights, decoder_channels, decoder_dropout, channels_last, trust_pickle, backbone_kwargs
    )
