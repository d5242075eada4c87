"""Former home of the fine-tuning helpers, kept so that existing imports keep working.

Each name now lives in the module of its concern:

- :mod:`lit_finetune.stages`: ``register_stages``, ``backbone_stages``, ``StageRule``;
- :mod:`lit_finetune.freezing`: ``FreezeSpec``, ``freeze_patterns``, ``freeze``, ``matches_any``,
  ``hold_eval``, ``release_eval``, ``is_held_in_eval``;
- :mod:`lit_finetune.param_groups`: ``parameter_groups``, ``apply_lr_scales``, ``stage_lr_scales``,
  ``no_weight_decay``, ``NORM_LAYERS``, ``NO_DECAY_NAMES``;
- :mod:`lit_finetune.feature_cache`: ``FeatureCache``;
- :mod:`lit_finetune.lr_finder`: ``suggest_lr``.
"""

from lit_finetune.feature_cache import FeatureCache
from lit_finetune.freezing import FreezeSpec, freeze, freeze_patterns, hold_eval, is_held_in_eval, matches_any, release_eval
from lit_finetune.lr_finder import suggest_lr
from lit_finetune.param_groups import NO_DECAY_NAMES, NORM_LAYERS, apply_lr_scales, no_weight_decay, parameter_groups, stage_lr_scales
from lit_finetune.stages import StageRule, backbone_stages, register_stages

__all__ = [
    "NORM_LAYERS",
    "NO_DECAY_NAMES",
    "FeatureCache",
    "FreezeSpec",
    "StageRule",
    "apply_lr_scales",
    "backbone_stages",
    "freeze",
    "freeze_patterns",
    "hold_eval",
    "is_held_in_eval",
    "matches_any",
    "no_weight_decay",
    "parameter_groups",
    "register_stages",
    "release_eval",
    "stage_lr_scales",
    "suggest_lr",
]
