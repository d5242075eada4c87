"""Stages of torchvision backbones, freeze specs, and optimizer parameter groups.

Stages
    A *stage* is a contiguous slice of a backbone, from the input (stage 0, the stem) to the
    output. Freezing the first ``k`` stages, layer-wise LR decay and unfreeze schedules all count
    in stages. :func:`backbone_stages` knows every torchvision classification family (see
    ``docs/finetuning.md`` for the table) and falls back to the model's top-level children in
    order; :func:`register_stages` adds a rule for another class. Stages without parameters are
    dropped, so every stage holds at least one parameter.

Freeze specs
    ``"none"``, ``"backbone"`` (everything but the head), an int ``k`` (the first ``k`` stages) or a
    list of glob patterns over module or parameter names (``["backbone.layer1*", "backbone.conv1"]``).
    :func:`freeze` turns a spec into ``requires_grad=False`` and, with ``train_bn=False``, holds
    BatchNorm layers of the frozen part in eval mode so their running statistics never move.

Parameter groups
    :func:`parameter_groups` builds named groups (``head``, ``head.no_decay``, ``backbone.stage3``,
    ``backbone.stage3.no_decay``, ...) with an ``lr_scale`` relative to the head LR:
    ``backbone_lr_mult * layer_decay ** (n - i)`` for stage ``i`` of ``n``. Norm layers, biases (any
    1-D parameter) and position embeddings/tokens go to ``.no_decay`` groups with ``weight_decay=0``.
    ``LearningRateMonitor`` logs each group under its ``name`` (``lr-SGD/backbone.stage3``).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Optional, Union

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torchvision.ops.misc import FrozenBatchNorm2d

log = logging.getLogger(__name__)

FreezeSpec = Union[int, str, list[str]]  # int first: `--model.freeze 2` on the command line is the number 2
"""``"none"``, ``"backbone"``, the number of leading stages, or a list of module/parameter-name globs."""

StageRule = Callable[[nn.Module], list[list[str]]]

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    _NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,  # includes torchvision's LayerNorm2d (convnext)
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    FrozenBatchNorm2d,
)
"""Module types whose parameters get no weight decay."""

NO_DECAY_NAMES = frozenset(
    {"bias", "class_token", "pos_embedding", "relative_position_bias_table", "logit_scale", "absolute_pos_embed"}
)
"""Parameter names (last component) that get no weight decay: biases and, as in timm, tokens and position tables."""

_STAGE_RULES: dict[type[nn.Module], StageRule] = {}


# ---------------------------------------------------------------------------------------- stages
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
def _regnet_stages(model: nn.Module) -> list[list[str]]:
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
def _pooling_stages(model: nn.Module) -> list[list[str]]:
    return [*_split_at_pooling(model.features, "features"), ["classifier"]]


@register_stages(tvm.DenseNet)
def _densenet_stages(model: nn.Module) -> list[list[str]]:
    stages: list[list[str]] = [[]]
    for name in _children(model.features, "features"):
        if ".denseblock" in name:
            stages.append([])
        stages[-1].append(name)
    return [*stages, ["classifier"]]


@register_stages(tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet)
def _features_stages(model: nn.Module) -> list[list[str]]:
    return [*([name] for name in _children(model.features, "features")), ["classifier"]]


@register_stages(tvm.MNASNet)
def _mnasnet_stages(model: nn.Module) -> list[list[str]]:
    stages: list[list[str]] = [[]]
    for name, layer in model.layers.named_children():
        if isinstance(layer, nn.Sequential):  # a stack of inverted residual blocks
            stages.extend([[f"layers.{name}"], []])
        else:
            stages[-1].append(f"layers.{name}")
    return [*stages, ["classifier"]]


@register_stages(tvm.ConvNeXt)
def _convnext_stages(model: nn.Module) -> list[list[str]]:
    names = _children(model.features, "features")
    stages = [names[i : i + 2] for i in range(0, len(names), 2)]  # (stem or downsampling, blocks)
    stages[-1].append("classifier")  # its remaining LayerNorm2d normalizes the last stage's output
    return stages


@register_stages(tvm.VisionTransformer)
def _vit_stages(model: nn.Module) -> list[list[str]]:
    embedding = ["conv_proj", "class_token", "encoder.pos_embedding"]
    return [embedding, *([name] for name in _children(model.encoder.layers, "encoder.layers")), ["encoder.ln", "heads"]]


@register_stages(tvm.SwinTransformer)
def _swin_stages(model: nn.Module) -> list[list[str]]:
    stages = [[name] for name in _children(model.features, "features")]
    stages[-1] += ["norm", "head"]
    return stages


@register_stages(tvm.MaxVit)
def _maxvit_stages(model: nn.Module) -> list[list[str]]:
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
    return _fallback_stages


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
    rule = _find_rule(backbone)
    names = [name for name, _ in backbone.named_parameters()]
    stages = [[name for name in names if _owner(name, prefixes)] for prefixes in rule(backbone)]
    stages = [stage for stage in stages if stage]
    assigned = [name for stage in stages for name in stage]
    missing = sorted(set(names) - set(assigned))
    if missing or len(assigned) != len(set(assigned)):
        raise ValueError(
            f"The stage rule for {type(backbone).__name__} does not cover its parameters exactly once "
            f"(left out: {missing[:5]}). Register a rule with lit_finetune.finetuning.register_stages."
        )
    return stages


# ------------------------------------------------------------------------------------ freezing
def _name_and_ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def matches_any(name: str, patterns: Collection[str]) -> bool:
    """Whether ``name`` or one of its parent module names matches one of the glob ``patterns``.

    Example::

        >>> matches_any("backbone.layer1.0.conv1.weight", ["backbone.layer1"])
        True
        >>> matches_any("backbone.layer10.weight", ["backbone.layer1"])
        False
    """
    return any(fnmatch.fnmatchcase(part, pattern) for part in _name_and_ancestors(name) for pattern in patterns)


def freeze_patterns(spec: FreezeSpec, stages: Sequence[Sequence[str]], backbone_prefix: str = "backbone") -> list[str]:
    """Name patterns that a freeze spec covers.

    Args:
        spec: ``"none"``, ``"backbone"``, the number ``k`` of leading stages, or a list of globs.
        stages: Parameter names per backbone stage (as :func:`backbone_stages` returns them).
        backbone_prefix: Name of the backbone inside the model the patterns apply to.

    Raises:
        ValueError: If the spec is not understood or ``k`` is outside ``[0, len(stages)]``.

    Example::

        >>> freeze_patterns(1, [["conv1.weight"], ["layer1.0.weight"]])
        ['backbone.conv1.weight']
    """
    if isinstance(spec, bool):
        raise ValueError(f"freeze={spec!r}: use 'backbone' or 'none' rather than a boolean.")
    if isinstance(spec, int):
        if not 0 <= spec <= len(stages):
            raise ValueError(
                f"freeze={spec} asks for the first {spec} stages, but the backbone has {len(stages)} stages; "
                f"use 0..{len(stages)} ({len(stages)} freezes the whole backbone)."
            )
        return [f"{backbone_prefix}.{name}" for stage in stages[:spec] for name in stage]
    if isinstance(spec, str) and spec.isdigit():
        return freeze_patterns(int(spec), stages, backbone_prefix)
    if isinstance(spec, str):
        if spec == "none":
            return []
        if spec == "backbone":
            return [backbone_prefix]
        raise ValueError(
            f"freeze={spec!r} is not understood: use 'none', 'backbone', a number of leading stages (e.g. 2) "
            "or a list of name patterns (e.g. ['backbone.layer1*'])."
        )
    return list(spec)


def _batchnorms(model: nn.Module, patterns: Collection[str]) -> list[nn.Module]:
    """BatchNorm layers inside the part that ``patterns`` cover (the layer or its parameters match)."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        and any(matches_any(n, patterns) for n in [name, *(f"{name}.{p}" for p, _ in module.named_parameters())])
    ]


def freeze(model: nn.Module, patterns: Collection[str], train_bn: bool = False) -> list[str]:
    """Set ``requires_grad=False`` on the parameters that ``patterns`` cover; return their names.

    Args:
        model: The model (names are relative to it, e.g. ``backbone.layer1.0.conv1.weight``).
        patterns: Glob patterns from :func:`freeze_patterns`.
        train_bn: ``True``: BatchNorm layers in the frozen part stay trainable and keep updating
            their running statistics (fastai's default). ``False``: their parameters are frozen too
            and they run in eval mode whatever ``train()`` calls happen, so their statistics stay put.

    Raises:
        ValueError: If a pattern matches no parameter.
    """
    unused = [p for p in patterns if not any(matches_any(n, [p]) for n, _ in model.named_parameters())]
    if unused:
        example = next(iter(model.state_dict()), "")
        raise ValueError(f"Freeze patterns {unused} match no parameter; names look like '{example}'.")
    keep = {id(p) for bn in _batchnorms(model, patterns) for p in bn.parameters()} if train_bn else set()
    frozen = []
    for name, param in model.named_parameters():
        if matches_any(name, patterns) and id(param) not in keep:
            param.requires_grad_(False)
            frozen.append(name)
    if not train_bn:
        hold_eval(_batchnorms(model, patterns))
    return frozen


class _EvalDuringForward:
    """Forward hooks that run a module in eval mode and restore its mode afterwards."""

    def __init__(self) -> None:
        self.was_training = False

    def before(self, module: nn.Module, args: Any) -> None:
        self.was_training = module.training
        module.training = False

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        module.training = self.was_training


def _eval_hooks(module: nn.Module) -> list[int]:
    return [key for key, hook in module._forward_pre_hooks.items() if isinstance(getattr(hook, "__self__", None), _EvalDuringForward)]


def hold_eval(modules: Iterable[nn.Module]) -> None:
    """Run ``modules`` in eval mode from now on, whatever ``train()`` calls happen (idempotent).

    The module's ``training`` flag is left alone (so Lightning sees no module in eval mode); only
    its forward runs with ``training=False``. Undo with :func:`release_eval`.
    """
    for module in modules:
        if not _eval_hooks(module):
            hooks = _EvalDuringForward()
            module.register_forward_pre_hook(hooks.before)
            module.register_forward_hook(hooks.after)


def release_eval(modules: Iterable[nn.Module]) -> None:
    """Undo :func:`hold_eval`."""
    for module in modules:
        for key in _eval_hooks(module):
            owner = module._forward_pre_hooks.pop(key).__self__
            for post_key, hook in list(module._forward_hooks.items()):
                if getattr(hook, "__self__", None) is owner:
                    module._forward_hooks.pop(post_key)


def is_held_in_eval(module: nn.Module) -> bool:
    """Whether :func:`hold_eval` holds ``module`` in eval mode."""
    return bool(_eval_hooks(module))


# ---------------------------------------------------------------------------- parameter groups
def no_weight_decay(module: nn.Module, param_name: str, param: nn.Parameter) -> bool:
    """Whether ``param`` of ``module`` gets no weight decay: norm layers, biases and any other 1-D
    parameter (``in_proj_bias`` of attention), tokens and position tables (``param_name`` is the last name part)."""
    return isinstance(module, NORM_LAYERS) or param.ndim <= 1 or param_name in NO_DECAY_NAMES


def stage_lr_scales(num_stages: int, backbone_lr_mult: float = 1.0, layer_decay: float = 1.0) -> list[float]:
    """LR of each backbone stage relative to the head: ``backbone_lr_mult * layer_decay ** (n - i)``.

    Example::

        >>> stage_lr_scales(3, backbone_lr_mult=0.5, layer_decay=0.5)
        [0.0625, 0.125, 0.25]
    """
    return [backbone_lr_mult * layer_decay ** (num_stages - i) for i in range(num_stages)]


def parameter_groups(
    model: nn.Module,
    stages: Sequence[Sequence[str]],
    backbone_lr_mult: float = 1.0,
    layer_decay: float = 1.0,
    no_weight_decay_norm_bias: bool = True,
    exclude: Collection[str] = (),
    backbone_prefix: str = "backbone",
) -> list[dict[str, Any]]:
    """Named optimizer parameter groups: the head, then each backbone stage, split by weight decay.

    Each group holds ``params``, ``name`` and ``lr_scale`` (its LR relative to the head LR); groups
    without weight decay also hold ``weight_decay=0.0``. Empty groups are left out.

    Args:
        model: The model; parameters outside the backbone form the ``head`` groups.
        stages: Parameter names per backbone stage, relative to the backbone (:func:`backbone_stages`).
        backbone_lr_mult: LR of the backbone relative to the head (0 keeps it fixed through the optimizer).
        layer_decay: Layer-wise LR decay; stage ``i`` of ``n`` gets ``backbone_lr_mult * layer_decay ** (n - i)``.
        no_weight_decay_norm_bias: Put norm-layer parameters, biases, tokens and position tables in
            ``.no_decay`` groups with ``weight_decay=0``.
        exclude: Names of parameters to leave out (the frozen ones).
        backbone_prefix: Name of the backbone inside ``model``.

    Example::

        >>> import torchvision
        >>> model = nn.Module()
        >>> model.backbone, model.head = torchvision.models.resnet18(num_classes=4), nn.Linear(512, 4)
        >>> model.backbone.fc = nn.Identity()
        >>> groups = parameter_groups(model, backbone_stages(model.backbone), layer_decay=0.5)
        >>> [(g["name"], g["lr_scale"]) for g in groups][:4]
        [('head', 1.0), ('head.no_decay', 1.0), ('backbone.stage0', 0.03125), ('backbone.stage0.no_decay', 0.03125)]
    """
    stage_of = {f"{backbone_prefix}.{name}": i for i, stage in enumerate(stages) for name in stage}
    scales = stage_lr_scales(len(stages), backbone_lr_mult, layer_decay)
    names = ["head"] + [f"{backbone_prefix}.stage{i}" for i in range(len(stages))]
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(prefix=module_name, recurse=False):
            if param_name in exclude or id(param) in seen:
                continue
            seen.add(id(param))
            index = stage_of.get(param_name, -1) + 1
            decay = not (no_weight_decay_norm_bias and no_weight_decay(module, param_name.rsplit(".", 1)[-1], param))
            buckets.setdefault((index, decay), []).append(param)
    groups = []
    for (index, decay), params in sorted(buckets.items(), key=lambda item: (item[0][0], not item[0][1])):
        group = {"params": params, "name": names[index], "lr_scale": 1.0 if index == 0 else scales[index - 1]}
        if not decay:
            group.update(name=group["name"] + ".no_decay", weight_decay=0.0)
        groups.append(group)
    return groups


def apply_lr_scales(optimizer: Any, base_lr: float | None = None) -> None:
    """Set ``lr = base_lr * lr_scale`` on every group of ``optimizer`` that has an ``lr_scale``.

    Args:
        optimizer: A ``torch.optim`` optimizer built on :func:`parameter_groups`.
        base_lr: The head LR; None takes the optimizer's default ``lr``.
    """
    base = optimizer.defaults["lr"] if base_lr is None else base_lr
    for group in optimizer.param_groups:
        if "lr_scale" in group:
            group["lr"] = base * group["lr_scale"]


# ------------------------------------------------------------------------------ feature cache
class FeatureCache:
    """Pooled backbone features by dataset index, computed on first sight (linear probing).

    Valid only while the backbone is frozen and the transforms are deterministic: the owner checks
    :meth:`verify` once on a batch seen before.

    Example::

        >>> cache = FeatureCache()
        >>> index = torch.tensor([3, 0])
        >>> cache.lookup(index, lambda missing: torch.ones(int(missing.sum()), 2)).shape
        torch.Size([2, 2])
        >>> cache.lookup(index, lambda missing: 1 / 0).sum().item()  # no second computation
        4.0
    """

    def __init__(self) -> None:
        self.features: Optional[Tensor] = None
        self.filled: Optional[Tensor] = None
        self.verified = False

    def clear(self) -> None:
        """Forget every cached feature."""
        self.features, self.filled, self.verified = None, None, False

    def __len__(self) -> int:
        return 0 if self.filled is None else int(self.filled.sum())

    def _reserve(self, size: int, like: Tensor) -> None:
        if self.features is None:
            self.features = like.new_empty((size, *like.shape[1:]))
            self.filled = torch.zeros(size, dtype=torch.bool, device=like.device)
        elif size > len(self.features):
            grown = self.features.new_empty((max(size, 2 * len(self.features)), *self.features.shape[1:]))
            grown[: len(self.features)] = self.features
            filled = torch.zeros(len(grown), dtype=torch.bool, device=self.filled.device)
            filled[: len(self.filled)] = self.filled
            self.features, self.filled = grown, filled

    def is_cached(self, index: Tensor) -> Tensor:
        """Boolean mask of the samples of ``index`` that are in the cache."""
        if self.filled is None:
            return torch.zeros(len(index), dtype=torch.bool, device=index.device)
        known = index < len(self.filled)
        known[known.clone()] = self.filled[index[known]]
        return known

    def lookup(self, index: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """Features of the samples ``index``; ``compute(missing_mask)`` gives those not cached yet."""
        missing = ~self.is_cached(index)
        if missing.any():
            new = compute(missing)
            self._reserve(int(index.max()) + 1, new)
            self.features[index[missing]] = new
            self.filled[index[missing]] = True
        return self.features[index]

    def verify(self, index: Tensor, features: Tensor, rtol: float = 1e-3, atol: float = 1e-4) -> None:
        """Check freshly computed ``features`` against the cache (once).

        Raises:
            RuntimeError: If they differ: the transforms are random or the backbone changed.
        """
        cached = self.features[index]
        if not torch.allclose(cached.float(), features.float(), rtol=rtol, atol=atol):
            worst = (cached.float() - features.float()).abs().max().item()
            raise RuntimeError(
                f"cache_features: the features of samples {index[:4].tolist()} changed since they were cached "
                f"(max difference {worst:.3g}). Caching needs deterministic train/val transforms (no random "
                "augmentation) and a frozen backbone; turn augmentation off or set cache_features=False."
            )
        self.verified = True


# ------------------------------------------------------------------------------ LR finder
def suggest_lr(
    trainer: Any,
    model: Any,
    datamodule: Any = None,
    train_dataloaders: Any = None,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_training: int = 100,
    early_stop_threshold: Optional[float] = 4.0,
    attr_name: str = "head_lr",
    plot_path: Optional[str] = None,
) -> Optional[float]:
    """Run Lightning's LR finder (``Tuner.lr_find``) and set ``model.<attr_name>`` to its suggestion.

    During the sweep every parameter group gets the same LR (Lightning's finder does so); the
    suggestion becomes the head LR and the backbone groups keep their multipliers and layer decay
    when the optimizer is built again for training.

    Args:
        trainer: The ``Trainer`` that will fit (its state is restored after the sweep).
        model: A ``FinetuneClassifier`` (anything with the attribute ``attr_name``).
        datamodule: The data (or give ``train_dataloaders``).
        train_dataloaders: Training data when there is no data module.
        min_lr: Smallest LR of the sweep.
        max_lr: Largest LR of the sweep.
        num_training: Number of sweep steps.
        early_stop_threshold: Stop the sweep when the loss exceeds this multiple of the best loss; None: never.
        attr_name: Attribute that receives the suggestion.
        plot_path: Where to save the loss-vs-LR plot (``.png``), if given.

    Returns:
        The suggested LR, or None when the finder found none.
    """
    from lightning.pytorch.tuner import Tuner

    finder = Tuner(trainer).lr_find(
        model,
        train_dataloaders=train_dataloaders,
        datamodule=datamodule,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_training,
        early_stop_threshold=early_stop_threshold,
        attr_name=attr_name,
    )
    if finder is None:
        return None
    if plot_path is not None:
        finder.plot(suggest=True).savefig(plot_path)
    suggestion = finder.suggestion()
    log.info("LR finder suggests %s = %s", attr_name, suggestion)
    return suggestion
