"""Loading weights from files safely.

Weight files come from many places: torchvision's own ``.pth`` downloads, a colleague's
``torch.save(model.state_dict())``, a model wrapped in ``nn.DataParallel`` or compiled with
``torch.compile`` (``module.`` and ``_orig_mod.`` prefixes) or a Lightning checkpoint. This module
turns each of them into a plain ``state_dict`` without ever unpickling arbitrary objects unless the
user says the file is trusted.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes added by ``nn.DataParallel`` / DDP (``module.``) and ``torch.compile`` (``_orig_mod.``)."""


class UnsafeCheckpointError(RuntimeError):
    """Raised when a weight file holds pickled objects and the user has not trusted it."""


def strip_prefixes(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, Tensor]:
    """Remove wrapper prefixes from every key, repeatedly (``module._orig_mod.x`` -> ``x``).

    Example::

        >>> strip_prefixes({"module.fc.weight": torch.zeros(1)}).keys()
        dict_keys(['fc.weight'])
    """
    stripped = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        stripped[key] = value
    return stripped


def load_state_dict_file(path: str | Path, trust_pickle: bool = False, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a state_dict from a ``.pth``/``.pt``/``.ckpt``/``.safetensors`` file.

    Tensors are mapped to ``map_location`` (CPU by default, so GPU-saved files load on any machine).
    A Lightning checkpoint's ``state_dict`` entry is unwrapped. Wrapper prefixes are stripped.

    Args:
        path: the weight file.
        trust_pickle: allow files that hold a whole pickled ``nn.Module`` (``torch.save(model)``).
            Unpickling runs code from the file: only set this for files you trust.
        map_location: where to put the tensors.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file holds pickled objects and ``trust_pickle`` is False.
        ValueError: the file holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file '{path}' does not exist. Check the `weights` path.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return strip_prefixes(load_file(str(path), device=str(map_location)))
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"'{path}' holds pickled Python objects (for example a whole model saved with "
                "`torch.save(model)`), which could run arbitrary code when loaded, so it was refused. "
                "Save `model.state_dict()` instead, or, if you trust the file, pass `trust_pickle=True` "
                f"(`--model.trust_pickle true`). Details: {str(err).splitlines()[0]}"
            ) from err
        obj = torch.load(path, map_location=map_location, weights_only=False)
    return _extract_state_dict(obj, path)


def _extract_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a Lightning checkpoint
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"'{path}' does not hold a state_dict (a mapping of parameter names to tensors); "
            f"found {type(obj).__name__}. Save weights with `torch.save(model.state_dict(), path)`."
        )
    return strip_prefixes(obj)
