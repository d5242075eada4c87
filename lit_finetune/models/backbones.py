"""Creating torchvision backbones: names, weights, local weight files and head surgery.

Names that start with ``timm/`` are timm models (:mod:`lit_finetune.models.timm_backbones`): the functions
here hand them over, so every caller treats both sources alike.

A backbone is a torchvision classification model whose final classification layer has been
replaced by ``nn.Identity``, so that calling it returns the pooled features the head sees.
The final layer is found the same way for every family: it is the last ``nn.Linear`` or
``nn.Conv2d`` registered in the model (``fc`` for resnet/regnet/shufflenet/googlenet/inception,
the last layer of ``classifier`` for alexnet/vgg/mobilenet/efficientnet/mnasnet/convnext/maxvit,
``classifier`` for densenet, the final 1x1 conv for squeezenet, ``heads.head`` for vit and
``head`` for swin).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeGuard

import torchvision
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from lit_finetune.models.heads import feature_size, find_final_layer, set_submodule
from lit_finetune.models.timm_backbones import check_timm_name, create_timm_backbone, is_timm_name
from lit_finetune.models.weights import WeightsReport, load_weights

MIN_INPUT_SIZE = {"inception_v3": 75}
"""Smallest input side that each listed family accepts (others work from 32 px). inception_v3's
auxiliary head, used in training, needs 299 px: turn it off (``aux_logits=False``) for smaller inputs."""
DEFAULT_INPUT_SIZE = {"inception_v3": 299}
"""Crop size used when no weights name one (others use 224)."""


def available_backbones() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    return list_models(module=torchvision.models)


def check_backbone_name(name: str) -> None:
    """Raise a ``ValueError`` that suggests close names when ``name`` is not a torchvision classifier
    (nor, for ``timm/<name>``, a timm model: see :func:`~lit_finetune.models.timm_backbones.check_timm_name`).

    Example::

        check_backbone_name("resnet18")   # fine
        check_backbone_name("resnet181")  # ValueError: Unknown backbone 'resnet181'. Did you mean: resnet18, resnet101, ...?
    """
    if is_timm_name(name):
        check_timm_name(name)
        return
    names = available_backbones()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}?" if close else "See `torchvision.models.list_models()`."
    raise ValueError(f"Unknown backbone '{name}'. {hint} ({len(names)} torchvision classification models are available.)")


def is_weights_file(weights: str | None) -> TypeGuard[str]:
    """True when ``weights`` names a local file rather than a torchvision weights enum member."""
    return weights is not None and (Path(weights).suffix in {".pth", ".pt", ".ckpt", ".bin", ".safetensors"} or Path(weights).exists())


def resolve_weights(backbone: str, weights: str | None) -> WeightsEnum | None:
    """Turn a weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``, or ``"ResNet18_Weights.IMAGENET1K_V1"``) into its enum.

    Returns None for None, for local files and for timm backbones (whose weights are tags, see
    :func:`~lit_finetune.models.timm_backbones.resolve_timm_weights`).

    Raises:
        ValueError: the name is not one of the backbone's weights.
    """
    if weights is None or is_weights_file(weights) or is_timm_name(backbone):
        return None
    enum = get_model_weights(backbone)
    member = weights.split(".")[-1]
    if member not in enum.__members__:
        raise ValueError(
            f"'{weights}' is neither a weights name of {backbone} nor an existing file. "
            f"Names: {', '.join(enum.__members__)}; or give a path to a .pth/.pt/.safetensors state_dict."
        )
    return enum[member]


def load_weights_file(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> WeightsReport:
    """Load a local weights file into a freshly built torchvision model (before head surgery).

    Head tensors of another shape (a file fine-tuned on other classes) are skipped, since the head is
    replaced anyway; any other shape mismatch is an error that lists every such key with a hint, and
    so are backbone tensors that the file lacks. Keys the model does not have are reported.

    Raises:
        ValueError: a backbone tensor has another shape or is missing, or no key of the file matches the model.
    """
    report = load_weights(model, path, trust_pickle=trust_pickle)
    head_name, _ = find_final_layer(model)
    optional = (head_name + ".", "aux1.", "aux2.", "AuxLogits.")
    backbone_missing = [k for k in report.missing if not k.startswith(optional) and not k.endswith("num_batches_tracked")]
    if backbone_missing:
        raise ValueError(
            f"Weights file '{path}' lacks {len(backbone_missing)} backbone tensors of this model, e.g. "
            f"{', '.join(backbone_missing[:5])}: they would stay randomly initialised. Is the file for another variant? "
            "To load part of a model on purpose, override `FinetuneClassifier.build_backbone`."
        )
    return report


def create_backbone(
    name: str,
    weights: str | None = None,
    num_classes: int = 1000,
    trust_pickle: bool = False,
    aux_logits: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, int]:
    """Build ``name`` with ``weights``, strip its final layer and return ``(backbone, feature_size)``.

    Args:
        name: a torchvision classification model name, e.g. ``"resnet18"``, or ``timm/<name>`` (a timm model,
            ``timm/convnext_atto``: built by :func:`~lit_finetune.models.timm_backbones.create_timm_backbone`).
        weights: None (random init), a weights name of the model (``"DEFAULT"``, ``"IMAGENET1K_V1"``; for timm
            ``"DEFAULT"`` or a pretrained tag such as ``"in1k"``) downloaded by torchvision or timm, or a path to a
            local state_dict file.
        num_classes: the auxiliary head of inception_v3 is rebuilt for this many classes.
        trust_pickle: allow a local file that holds a whole pickled model.
        aux_logits: keep inception_v3's auxiliary head (googlenet's are always removed).
        model_kwargs: extra arguments of the torchvision builder, e.g. ``{"image_size": 64}`` for vit
            without weights (timm: of ``timm.create_model``, e.g. ``{"img_size": 64}``).

    Raises:
        ValueError: unknown name, unknown weights name, or a file that does not fit.
    """
    check_backbone_name(name)
    if is_timm_name(name):
        return create_timm_backbone(name, weights, trust_pickle=trust_pickle, model_kwargs=model_kwargs)
    enum = resolve_weights(name, weights)
    kwargs = dict(model_kwargs or {})
    if name in ("googlenet", "inception_v3"):
        # Build with the auxiliary heads so torchvision's state dicts (which hold them) load cleanly.
        kwargs.update({"aux_logits": True} if enum is not None else {"aux_logits": True, "init_weights": True})
    model = get_model(name, weights=enum, **kwargs)
    if is_weights_file(weights):
        report = load_weights_file(model, weights, trust_pickle=trust_pickle)
        rank_zero_info(f"Loaded {weights} into {name}:\n{report}")
    head_name, head = find_final_layer(model)
    in_features = feature_size(head)
    set_submodule(model, head_name, nn.Identity())
    if name == "googlenet":
        model.aux_logits, model.aux1, model.aux2 = False, None, None
    if name == "inception_v3":
        if aux_logits:
            model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, num_classes)
        else:
            model.aux_logits, model.AuxLogits = False, None
    return model, in_features
