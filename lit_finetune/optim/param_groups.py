"""Optimizer parameter groups: LR scales per backbone stage and no weight decay for norms and biases.

:func:`parameter_groups` gives each parameter an ``lr_scale`` relative to the head LR
(``backbone_lr_mult * layer_decay ** (n - i)`` for stage ``i`` of ``n``; 1 for the head) and puts
norm layers, biases (any 1-D parameter), position embeddings/tokens and what modules declare in a
``no_weight_decay()`` method (timm's models) in ``.no_decay`` groups with ``weight_decay=0``. Parts with the same hyperparameters share one group, so ``LearningRateMonitor``
logs one LR per distinct schedule, under the group's ``name`` (``lr-SGD/all``,
``lr-SGD/backbone.stage3``); see :func:`parameter_groups` for the names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Sequence
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torchvision.ops.misc import FrozenBatchNorm2d

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    _NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,  # includes torchvision's LayerNorm2d (convnext)
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    FrozenBatchNorm2d,
)
"""Module types whose parameters get no weight decay."""

NO_DECAY_NAMES = frozenset({"bias", "class_token", "pos_embedding", "relative_position_bias_table", "logit_scale", "absolute_pos_embed"})
"""Parameter names (last component) that get no weight decay: biases and, as in timm, tokens and position tables."""


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


def held_groups(trainer: Any) -> list[str]:
    """Parts that callbacks of ``trainer`` hold apart, to pass as ``keep_separate`` to :func:`parameter_groups`.

    A callback that schedules a part of the model on its own (``UnfreezeSchedule``) names those parts in a
    ``group_names()`` method; modules call this in ``parameter_groups()`` so that no group they hold is merged
    with others. ``[]`` without a trainer.
    """
    callbacks = getattr(trainer, "callbacks", None) or []
    return sorted({name for callback in callbacks if callable(getattr(callback, "group_names", None)) for name in callback.group_names()})


def parameter_groups(
    model: nn.Module,
    stages: Sequence[Sequence[str]],
    backbone_lr_mult: float = 1.0,
    layer_decay: float = 1.0,
    no_weight_decay_norm_bias: bool = True,
    exclude: Collection[str] = (),
    backbone_prefix: str = "backbone",
    keep_separate: Collection[str] = (),
    layers: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Named optimizer parameter groups, one per distinct (LR scale, weight decay).

    Each parameter belongs to a *part*, ``head`` (everything outside the backbone) or
    ``backbone.stage{i}``, which gives it an LR scale, and is split off into ``.no_decay`` when it
    gets no weight decay. Parts with the same LR scale share one group, named

    - ``all``: every part that has parameters (a plain recipe: ``all`` and ``all.no_decay``);
    - ``backbone``: every backbone stage, but not the head (``backbone_lr_mult != 1``, no layer decay);
    - the part's own name when it is alone (``head``, ``backbone.stage3``; with layer decay every
      stage has its own LR);
    - otherwise the parts joined by ``+``, runs of stages as ranges: ``head+backbone.stage0-3``;

    with ``.no_decay`` appended for the groups without weight decay. Parts in ``keep_separate``
    always get groups of their own (an unfreeze schedule needs those of the stages it holds).

    With ``layers`` (finer groups, each inside one stage: timm's fine ``group_matcher`` groups, see
    :func:`lit_finetune.models.stages.backbone_layers`) and ``layer_decay != 1``, the backbone parts are those
    layers, ``backbone.layer{j}`` (when they differ from the stages), and layer ``j`` of ``m`` gets ``backbone_lr_mult * layer_decay ** (m - j)``:
    the per-block decay of timm's ``param_groups_layer_decay``. A stage in ``keep_separate`` keeps its layers apart.

    Each group holds ``params``, ``name`` and ``lr_scale`` (its LR relative to the head LR); groups
    without weight decay also hold ``weight_decay=0.0``. Empty groups are left out. Groups come
    in the order of their first part (head, then stages from the input), decayed before ``.no_decay``.

    Args:
        model: The model; parameters outside the backbone form the ``head`` part.
        stages: Parameter names per backbone stage, relative to the backbone
            (:func:`lit_finetune.models.stages.backbone_stages`).
        backbone_lr_mult: LR of the backbone relative to the head (0 keeps it fixed through the optimizer).
        layer_decay: Layer-wise LR decay; stage ``i`` of ``n`` gets ``backbone_lr_mult * layer_decay ** (n - i)``.
        no_weight_decay_norm_bias: Put norm-layer parameters, biases, tokens and position tables, and the
            parameters that modules list in a ``no_weight_decay()`` method (timm's models), in ``.no_decay``
            groups with ``weight_decay=0``.
        exclude: Names of parameters to leave out (the frozen ones).
        backbone_prefix: Name of the backbone inside ``model``.
        keep_separate: Parts (``"head"``, ``"backbone.stage{i}"``) that are never merged with others.
        layers: Parameter names per layer for layer-wise decay, relative to the backbone; None: the stages.

    Raises:
        ValueError: If ``keep_separate`` names a part that does not exist, or a layer spans two stages.

    Example::

        >>> import torchvision
        >>> from lit_finetune.models.stages import backbone_stages
        >>> model = nn.Module()
        >>> model.backbone, model.head = torchvision.models.resnet18(num_classes=4), nn.Linear(512, 4)
        >>> model.backbone.fc = nn.Identity()
        >>> stages = backbone_stages(model.backbone)
        >>> [g["name"] for g in parameter_groups(model, stages)]
        ['all', 'all.no_decay']
        >>> [(g["name"], g["lr_scale"]) for g in parameter_groups(model, stages, backbone_lr_mult=0.1)][::2]
        [('head', 1.0), ('backbone', 0.1)]
        >>> groups = parameter_groups(model, stages, layer_decay=0.5)
        >>> [(g["name"], g["lr_scale"]) for g in groups][:4]
        [('head', 1.0), ('head.no_decay', 1.0), ('backbone.stage0', 0.03125), ('backbone.stage0.no_decay', 0.03125)]
    """
    stage_names = ["head"] + [f"{backbone_prefix}.stage{i}" for i in range(len(stages))]
    unknown = sorted(set(keep_separate) - set(stage_names))
    if unknown:
        raise ValueError(
            f"keep_separate={unknown} names no part; the parts are 'head' and '{backbone_prefix}.stage0'..'{stage_names[-1]}'."
        )
    if layers is not None and layer_decay != 1.0 and [list(layer) for layer in layers] != [list(stage) for stage in stages]:
        parts, names = layers, ["head"] + [f"{backbone_prefix}.layer{j}" for j in range(len(layers))]
        stage_of = _stage_of_layers(stages, layers)
        separate = {j + 1 for j, i in enumerate(stage_of) if stage_names[i + 1] in keep_separate} | (
            {0} if "head" in keep_separate else set()
        )
    else:
        parts, names = stages, stage_names
        separate = {index for index, name in enumerate(names) if name in keep_separate}
    scales = [1.0, *stage_lr_scales(len(parts), backbone_lr_mult, layer_decay)]
    buckets = _buckets(model, parts, no_weight_decay_norm_bias, exclude, backbone_prefix)
    merged: dict[tuple[Any, float, bool], list[int]] = {}  # (part or None, LR scale, decay) -> parts
    for index, decay in sorted(buckets, key=lambda key: (key[0], not key[1])):
        alone = index if index in separate else None
        merged.setdefault((alone, scales[index], decay), []).append(index)
    groups = []
    for (_, scale, decay), members in sorted(merged.items(), key=lambda item: (item[1][0], not item[0][2])):
        present = [index for index, d in buckets if d == decay]
        group: dict[str, Any] = {
            "params": [p for index in members for p in buckets[index, decay]],
            "name": _group_name(members, present, names),
            "lr_scale": scale,
        }
        if not decay:
            group.update(name=group["name"] + ".no_decay", weight_decay=0.0)
        groups.append(group)
    return groups


def _stage_of_layers(stages: Sequence[Sequence[str]], layers: Sequence[Sequence[str]]) -> list[int]:
    """The stage index of each layer; each layer must lie inside one stage."""
    stage_of_param = {name: i for i, stage in enumerate(stages) for name in stage}
    result: list[int] = []
    for j, layer in enumerate(layers):
        owners = {stage_of_param.get(name, -1) for name in layer}
        if len(owners) != 1 or -1 in owners:
            raise ValueError(f"Layer {j} ({list(layer)[:3]}...) does not lie inside one backbone stage: give layers that split the stages.")
        result.append(owners.pop())
    return result


def declared_no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that modules declare free of weight decay with a ``no_weight_decay()`` method.

    That is timm's convention (``{"pos_embed", "cls_token", "reg_token"}`` on a ViT); names are relative to the
    declaring module and may be globs, as timm's optimizer factory reads them.
    """
    declared: set[str] = set()
    for module_name, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if not callable(method):
            continue
        try:
            patterns = set(method())
        except TypeError:  # a method of another meaning, with arguments
            continue
        prefix = f"{module_name}." if module_name else ""
        declared |= {prefix + name for name, _ in module.named_parameters() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    return declared


def _buckets(
    model: nn.Module, stages: Sequence[Sequence[str]], split_decay: bool, exclude: Collection[str], backbone_prefix: str
) -> dict[tuple[int, bool], list[nn.Parameter]]:
    """Parameters by (part, decay): part 0 is the head, part ``i + 1`` backbone stage (or layer) ``i``."""
    stage_of = {f"{backbone_prefix}.{name}": i for i, stage in enumerate(stages) for name in stage}
    declared = declared_no_weight_decay(model) if split_decay else set()
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(prefix=module_name, recurse=False):
            if param_name in exclude or id(param) in seen:
                continue
            seen.add(id(param))
            index = stage_of.get(param_name, -1) + 1
            exempt = no_weight_decay(module, param_name.rsplit(".", 1)[-1], param) or param_name in declared
            buckets.setdefault((index, not (split_decay and exempt)), []).append(param)
    return buckets


def _group_name(parts: Sequence[int], present: Sequence[int], names: Sequence[str]) -> str:
    """Name of a group of ``parts`` (indices into ``names``) when ``present`` parts have such parameters."""
    if len(parts) == 1:
        return names[parts[0]]
    if set(parts) == set(present):
        return "all"
    if set(parts) == set(present) - {0}:
        return names[1].rsplit(".", 1)[0]  # the backbone prefix
    labels = ["head"] if 0 in parts else []
    runs: list[list[int]] = []
    for index in (i for i in parts if i > 0):
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    for run in runs:
        first, last = names[run[0]], names[run[-1]]
        number = last[len(last.rstrip("0123456789")) :]  # backbone.stage3 -> 3, backbone.layer12 -> 12
        labels.append(first if len(run) == 1 else f"{first}-{number}")
    return "+".join(labels)


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
