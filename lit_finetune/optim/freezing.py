"""Freeze specs and freezing, with BatchNorm layers of the frozen part held in eval mode.

A freeze spec is ``"none"``, ``"backbone"`` (everything but the head), an int ``k`` (the first
``k`` stages of :func:`lit_finetune.models.stages.backbone_stages`) or a list of glob patterns over module
or parameter names (``["backbone.layer1*", "backbone.conv1"]``). :func:`freeze` turns a spec into
``requires_grad=False`` and, with ``train_bn=False``, holds BatchNorm layers of the frozen part in
eval mode (:func:`hold_eval`) so their running statistics never move.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

FreezeSpec = int | str | list[str]  # int first: `--model.freeze 2` on the command line is the number 2
"""``"none"``, ``"backbone"``, the number of leading stages, or a list of module/parameter-name globs."""


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
            owner = module._forward_pre_hooks.pop(key).__self__  # type: ignore[attr-defined]  # the bound method hold_eval registered
            for post_key, hook in list(module._forward_hooks.items()):
                if getattr(hook, "__self__", None) is owner:
                    module._forward_hooks.pop(post_key)


def is_held_in_eval(module: nn.Module) -> bool:
    """Whether :func:`hold_eval` holds ``module`` in eval mode."""
    return bool(_eval_hooks(module))
