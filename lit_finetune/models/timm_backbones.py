"""timm backbones: ``backbone: timm/<name>`` for classification and as segmentation encoders.

A name is ``timm/<architecture>`` or ``timm/<architecture>.<tag>`` (``timm/convnext_atto``,
``timm/efficientnet_b0.ra_in1k``, ``timm/vit_small_patch14_dinov2.lvd142m``). timm (an optional extra,
``pip install -e ".[timm]"``) builds the model; this module gives the same parts the torchvision path has:

- :func:`create_timm_backbone`: the model with its classifier removed through timm's own
  ``reset_classifier(0)``, so that calling it returns the pooled pre-logits features
  (``forward_head(pre_logits=True)``) that the configurable head and the feature cache see.
- Weights (:func:`resolve_timm_weights`): ``None`` (random init), ``"DEFAULT"`` (the tag of the name or
  timm's default pretrained tag, fetched from the hub), a tag (``"in1k"``, ``"ra_in1k"``), or a local file
  read with the project's safe loading (``module.`` prefixes stripped, a shape mismatch is an error).
- :func:`timm_preprocessing`: input size, mean/std, interpolation and crop fraction from the model's
  ``pretrained_cfg`` (``timm.data.resolve_data_config``), the counterpart of torchvision weights' ``transforms()``.
- :func:`timm_stages` / :func:`timm_layers`: stages from timm's ``group_matcher`` (coarse groups for
  freezing and unfreeze schedules, fine groups for layer-wise LR decay, as timm's ``param_groups_layer_decay``).
- :func:`create_timm_encoder`: a ``features_only`` encoder (``FeatureGetterNet``: ``forward_intermediates``),
  channels and strides from ``feature_info``; ViTs give their intermediate blocks as ``(N, C, h, w)`` maps
  with class and register tokens dropped.
- :func:`timm_gradcam_layer`: the Grad-CAM layer of token models (the last block's ``norm1``).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchvision.transforms import v2

from lit_finetune.models.weights import compare_state_dicts, load_state_dict_file

TIMM_PREFIX = "timm/"
"""Backbone names that start with this are timm models."""
INSTALL_HINT = 'pip install -e ".[timm]"'
INTERPOLATIONS = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}
"""timm's interpolation names (``pretrained_cfg["interpolation"]``) as torchvision modes."""


def is_timm_name(name: str | None) -> bool:
    """True for a ``timm/<name>`` backbone name."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def import_timm(name: str = "timm/...") -> Any:
    """The ``timm`` module.

    Raises:
        ValueError: timm is not installed (with the command that installs it).
    """
    try:
        import timm
    except ImportError as err:
        raise ValueError(
            f"Backbone '{name}' needs the timm package, which is not installed: `{INSTALL_HINT}` (or `pip install 'timm>=1.0'`)."
        ) from err
    return timm


def split_timm_name(name: str) -> tuple[str, str | None]:
    """``"timm/vit_small_patch14_dinov2.lvd142m"`` -> ``("vit_small_patch14_dinov2", "lvd142m")``; no tag -> None."""
    arch, _, tag = name[len(TIMM_PREFIX) :].partition(".")
    return arch, tag or None


def check_timm_name(name: str) -> None:
    """Raise a ``ValueError`` with close names when ``name`` (``timm/<architecture>[.<tag>]``) is not a timm model.

    Raises:
        ValueError: timm is missing, the architecture is unknown (close names from ``timm.list_models``), or the
            tag is not one of its pretrained tags.
    """
    timm = import_timm(name)
    arch, tag = split_timm_name(name)
    names = timm.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
        hint = f"Did you mean: {', '.join(TIMM_PREFIX + c for c in close)}?" if close else "See `timm.list_models('<pattern>*')`."
        raise ValueError(f"Unknown timm backbone '{name}'. {hint} ({len(names)} timm architectures are available.)")
    if tag is not None:
        _check_tag(arch, tag)


def pretrained_tags(arch: str) -> list[str]:
    """The pretrained tags timm knows for ``arch`` (``["d2_in1k"]`` for ``convnext_atto``)."""
    timm = import_timm(TIMM_PREFIX + arch)
    return [full.partition(".")[2] for full in timm.list_pretrained(f"{arch}.*")]


def _check_tag(arch: str, tag: str) -> None:
    tags = pretrained_tags(arch)
    if tag not in tags:
        raise ValueError(
            f"'{tag}' is not a pretrained tag of timm's {arch}; tags: {', '.join(tags) or 'none'}. "
            "Give one of them, DEFAULT, null (random init) or a path to a weights file."
        )


def is_weights_path(weights: str | None) -> bool:
    """True when ``weights`` names a local file rather than DEFAULT or a tag."""
    return weights is not None and (Path(weights).suffix in {".pth", ".pt", ".ckpt", ".bin", ".safetensors"} or Path(weights).exists())


def resolve_timm_weights(name: str, weights: str | None) -> tuple[str, bool]:
    """The timm model name (``arch.tag``) to build and whether timm loads its pretrained weights.

    ``None`` and local files: ``pretrained=False`` (a file is loaded afterwards). ``"DEFAULT"``: the name's tag or
    timm's default one. Any other string is a tag of the architecture.

    Raises:
        ValueError: an unknown name or tag, or a tag that contradicts the tag in the name.

    Example::

        >>> resolve_timm_weights("timm/convnext_atto", "DEFAULT")
        ('convnext_atto', True)
        >>> resolve_timm_weights("timm/convnext_atto", "d2_in1k")
        ('convnext_atto.d2_in1k', True)
    """
    check_timm_name(name)
    arch, tag = split_timm_name(name)
    model_name = arch if tag is None else f"{arch}.{tag}"
    if weights is None or is_weights_path(weights):
        return model_name, False
    if weights == "DEFAULT":
        return model_name, True
    if tag is not None and weights != tag:
        raise ValueError(f"Backbone '{name}' already names the tag '{tag}'; weights '{weights}' asks for another. Give the tag once.")
    _check_tag(arch, weights)
    return f"{arch}.{weights}", True


def timm_preprocessing(name: str, weights: str | None) -> tuple[int, int, tuple[float, ...], tuple[float, ...], v2.InterpolationMode]:
    """``(resize_size, crop_size, mean, std, interpolation)`` from the ``pretrained_cfg`` of the name's tag
    (``weights`` as a tag, else the name's, else timm's default), read without building the model.

    As in ``timm.data.create_transform``: the crop is the config's input size, the short side is resized to
    ``floor(crop / crop_pct)``. Random init and local files use the architecture's default configuration.
    """
    import_timm(name)
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    model_name, _ = resolve_timm_weights(name, weights if weights != "DEFAULT" else None)
    cfg = get_pretrained_cfg(model_name)
    config = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {"input_size": (3, 224, 224)})
    crop = int(config["input_size"][-1])
    resize = math.floor(crop / float(config.get("crop_pct") or 0.875))
    interpolation = INTERPOLATIONS.get(str(config.get("interpolation")), v2.InterpolationMode.BICUBIC)
    return resize, crop, tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"]), interpolation


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the model's classifier (``pretrained_cfg["classifier"]``: ``fc``, ``head.fc``, ``head``)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def load_timm_weights_file(model: nn.Module, path: str, trust_pickle: bool = False) -> str:
    """Load a local file into a timm model built with its classifier; return the report as text.

    The file is read with :func:`~lit_finetune.models.weights.load_state_dict_file` (``weights_only``, ``module.``
    and ``_orig_mod.`` stripped, a ``FinetuneClassifier`` checkpoint's ``backbone.`` part). Classifier tensors of
    another shape are skipped (the classifier is removed anyway).

    Raises:
        ValueError: a tensor outside the classifier has another shape, or backbone tensors are missing.
    """
    state = load_state_dict_file(path, trust_pickle)
    own = model.state_dict()
    head = _classifier_prefixes(model)
    report = compare_state_dicts(own, state, head)
    if report.mismatches:
        details = "\n  ".join(str(m) for m in report.mismatches)
        raise ValueError(f"{len(report.mismatches)} tensor(s) of '{path}' do not fit timm's {type(model).__name__}:\n  {details}")
    missing = [k for k in report.missing if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"Weights file '{path}' lacks {len(missing)} backbone tensors of this timm model, e.g. {', '.join(missing[:5])}: "
            "they would stay randomly initialised. Is the file for another variant (or other `backbone_kwargs`)?"
        )
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return str(report)


def build_timm_model(
    name: str, weights: str | None, trust_pickle: bool = False, model_kwargs: dict[str, Any] | None = None, **extra: Any
) -> nn.Module:
    """The timm model of ``name`` with ``weights`` (see :func:`resolve_timm_weights`), its classifier still on."""
    timm = import_timm(name)
    model_name, pretrained = resolve_timm_weights(name, weights)
    model = timm.create_model(model_name, pretrained=pretrained, **dict(model_kwargs or {}), **extra)
    if weights is not None and is_weights_path(weights):
        rank_zero_info(f"Loaded {weights} into {name}:\n{load_timm_weights_file(model, weights, trust_pickle)}")
    return model


def create_timm_backbone(
    name: str, weights: str | None = None, trust_pickle: bool = False, model_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, int]:
    """Build a timm model, remove its classifier (``reset_classifier(0)``) and return ``(backbone, feature_size)``.

    The backbone maps images to the pooled pre-logits features (``forward_head(pre_logits=True)``), of width
    ``head_hidden_size`` (``num_features`` for models without a pre-logits layer).

    Args:
        name: ``timm/<architecture>[.<tag>]``.
        weights: None, ``"DEFAULT"``, a pretrained tag, or a local weights file.
        trust_pickle: allow a local file that holds a whole pickled model.
        model_kwargs: extra arguments of ``timm.create_model`` (``{"img_size": 64}``, ``{"drop_path_rate": 0.1}``).

    Raises:
        ValueError: timm missing, an unknown name or tag, or a file that does not fit.

    Example::

        backbone, width = create_timm_backbone("timm/convnext_atto")
        backbone(torch.randn(2, 3, 64, 64)).shape  # (2, 320)
    """
    model: Any = build_timm_model(name, weights, trust_pickle, model_kwargs)  # timm's models, typed as nn.Module
    model.reset_classifier(0)
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(width)


# ------------------------------------------------------------------------------------------ stages
def _groups(model: nn.Module, coarse: bool) -> list[list[str]]:
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher")  # noqa: B009 - timm's method, absent from nn.Module's type
    groups = group_parameters(model, matcher(coarse=coarse))
    return [names for _, names in sorted(groups.items()) if names]


def _inner(model: nn.Module) -> tuple[nn.Module, str]:
    """A ``features_only`` wrapper's timm model and the prefix of its names (``model.``); else the model itself."""
    inner = getattr(model, "model", None)
    if (
        not callable(getattr(model, "group_matcher", None))
        and isinstance(inner, nn.Module)
        and callable(getattr(inner, "group_matcher", None))
    ):
        return inner, "model."
    return model, ""


def is_timm_model(model: nn.Module) -> bool:
    """True for a timm model (or a ``features_only`` wrapper of one) that declares its parameter groups (``group_matcher``)."""
    inner, _ = _inner(model)
    return type(inner).__module__.startswith("timm.") and callable(getattr(inner, "group_matcher", None))


def timm_stages(model: nn.Module) -> list[list[str]]:
    """Stages of a timm model: the coarse groups of its ``group_matcher`` (stem, each stage or block, final norm)."""
    inner, prefix = _inner(model)
    return [[prefix + name for name in group] for group in _groups(inner, coarse=True)]


def timm_layers(model: nn.Module) -> list[list[str]]:
    """Fine groups of a timm model's ``group_matcher`` (one per block), for layer-wise LR decay as timm's scripts do it."""
    inner, prefix = _inner(model)
    return [[prefix + name for name in group] for group in _groups(inner, coarse=False)]


# ------------------------------------------------------------------------------------------ Grad-CAM
def timm_gradcam_layer(backbone: nn.Module) -> tuple[str, Literal["tokens"]] | None:
    """``("backbone.blocks.<last>.norm1", "tokens")`` for token models (ViT, DeiT, EVA, DINOv2); None for CNNs.

    Their tokens are reshaped to a grid after the ``num_prefix_tokens`` class and register tokens.
    """
    blocks = getattr(backbone, "blocks", None)
    if getattr(backbone, "num_prefix_tokens", None) is None or not isinstance(blocks, nn.Sequential | nn.ModuleList) or not len(blocks):
        return None
    last = len(blocks) - 1
    if not hasattr(blocks[last], "norm1"):
        return None
    return f"backbone.blocks.{last}.norm1", "tokens"


# ------------------------------------------------------------------------------------------ encoders
def vit_feature_indices(depth: int, count: int = 4) -> list[int]:
    """Blocks whose outputs a ViT encoder gives: ``count`` evenly spaced, the last included (depth 12: 2, 5, 8, 11)."""
    count = min(count, depth)
    return [round((i + 1) * depth / count) - 1 for i in range(count)]


def create_timm_encoder(
    name: str, weights: str | None = None, trust_pickle: bool = False, model_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, list[int], list[int]]:
    """A ``features_only`` timm encoder and the channels and strides of its outputs (``feature_info``), finest first.

    The model is built as a classifier (weights load as they do for classification), then wrapped in timm's
    ``FeatureGetterNet`` (``forward_intermediates``), which prunes the layers after the last output and keeps
    the model's parameter names under ``model.``. CNNs give one map per stage; token models (``num_prefix_tokens``)
    give four evenly spaced blocks as ``(N, C, h, w)`` maps (class and register tokens dropped), all at the patch stride.

    Raises:
        ValueError: timm missing, an unknown name, a file that does not fit, or a model without ``forward_intermediates``.
    """
    from timm.models._features import FeatureGetterNet  # what features_only=True builds for forward_intermediates models

    model: Any = build_timm_model(name, weights, trust_pickle, model_kwargs)
    if not callable(getattr(model, "forward_intermediates", None)):
        raise ValueError(  # noqa: TRY004 - a user error of the chosen backbone, reported as the CLI reports input errors
            f"timm's {name} has no `forward_intermediates`, so it cannot serve as a segmentation encoder; pick another family."
        )
    if getattr(model, "num_prefix_tokens", None) is not None and hasattr(model, "blocks"):
        indices: int | tuple[int, ...] = tuple(vit_feature_indices(len(model.blocks)))
    else:
        indices = len(model.feature_info)
    encoder = FeatureGetterNet(model, out_indices=indices, output_fmt="NCHW")
    return encoder, [int(c) for c in encoder.feature_info.channels()], [int(r) for r in encoder.feature_info.reduction()]
