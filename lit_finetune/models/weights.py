"""Loading weights from files safely, reporting what did not fit, and writing checkpoints atomically.

Weight files come from many places: torchvision's own ``.pth`` downloads, a colleague's
``torch.save(model.state_dict())``, ``.safetensors`` files, a model wrapped in ``nn.DataParallel`` /
DDP or compiled with ``torch.compile`` (``module.`` and ``_orig_mod.`` prefixes), or a Lightning
checkpoint (``.ckpt``, whose ``state_dict`` of a ``FinetuneClassifier`` has ``backbone.`` and ``head.``
keys). This module turns each of them into a plain ``state_dict``, always with ``weights_only=True``:
a file holding a whole pickled module is refused unless the user says the file is trusted.
Tensors saved on a GPU are mapped to the CPU by default, so any file loads on any machine.

``AtomicCheckpointIO`` writes each checkpoint to a temporary file next to its target, flushes it to
disk and renames it into place, so a process killed while saving leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from torch import Tensor, nn

from lit_finetune.models.heads import find_final_layer

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes added by ``nn.DataParallel`` / DDP (``module.``) and ``torch.compile`` (``_orig_mod.``)."""
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
"""Entries under which checkpoints of various trainers keep the model's state_dict."""
AUX_HEAD_PREFIXES = ("AuxLogits.fc.", "backbone.AuxLogits.fc.", "aux1.fc2.", "backbone.aux1.fc2.", "aux2.fc2.", "backbone.aux2.fc2.")
"""Final layers of inception_v3's and googlenet's auxiliary heads, which are rebuilt or removed."""


class UnsafeCheckpointError(RuntimeError):
    """Raised when a weight file holds pickled objects and the user has not trusted it."""


# ---------------------------------------------------------------------------------------------- reading
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
                    key = key[len(prefix) :]
                    changed = True
        stripped[key] = value
    return stripped


def select_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys under ``prefix`` (``"backbone."``) with the prefix removed; other keys are dropped."""
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def is_module_layout(state_dict: Mapping[str, Tensor]) -> bool:
    """True for the state_dict of a ``FinetuneClassifier``: every key under ``backbone.``, ``head.`` or ``loss.``."""
    return (
        bool(state_dict)
        and any(k.startswith("backbone.") for k in state_dict)
        and all(k.startswith(("backbone.", "head.", "loss.")) for k in state_dict)
    )


def load_checkpoint_file(path: str | Path, trust_pickle: bool = False, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and a clear refusal of pickled objects.

    Args:
        path: a ``.pth``/``.pt``/``.ckpt``/``.bin`` file.
        trust_pickle: allow a file that holds pickled Python objects (a whole ``nn.Module``). Unpickling
            runs code from the file: only set this for files you trust.
        map_location: where to put the tensors (CPU by default, so GPU-saved files load without a GPU).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file holds pickled objects and ``trust_pickle`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file '{path}' does not exist. Check the path.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"'{path}' holds pickled Python objects (for example a whole model saved with "
                "`torch.save(model)`), which could run arbitrary code when loaded, so it was refused. "
                "Save `model.state_dict()` instead, or, if you trust the file, pass `trust_pickle=True` "
                f"(`--model.trust_pickle true`). Details: {str(err).splitlines()[0]}"
            ) from err
        log.warning("Unpickling '%s' because trust_pickle=True: this runs code stored in the file.", path)
        return torch.load(path, map_location=map_location, weights_only=False)


def load_state_dict_file(
    path: str | Path,
    trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
    backbone_keys: bool = True,
) -> dict[str, Tensor]:
    """Read a state_dict from a ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file.

    Tensors are mapped to ``map_location``. A checkpoint's ``state_dict`` (Lightning), ``model_state_dict``
    or ``model`` entry is unwrapped, and wrapper prefixes (``module.``, ``_orig_mod.``) are stripped.

    Args:
        path: the weight file.
        trust_pickle: allow files that hold a whole pickled ``nn.Module`` (``torch.save(model)``).
            Unpickling runs code from the file: only set this for files you trust.
        map_location: where to put the tensors.
        backbone_keys: for a state_dict of a ``FinetuneClassifier`` (keys ``backbone.*`` and ``head.*``),
            return the backbone's part under torchvision's own names (``layer1.0.conv1.weight``), as
            ``create_backbone`` expects; the head is dropped (it is replaced). False keeps the keys as saved.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file holds pickled objects and ``trust_pickle`` is False.
        ValueError: the file holds no state_dict.

    Example::

        state = load_state_dict_file("runs/quickstart/version_0/checkpoints/last.ckpt")
        torchvision.models.resnet18().load_state_dict(state, strict=False)
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"Weights file '{path}' does not exist. Check the path.")
        from safetensors.torch import load_file

        state = strip_prefixes(load_file(str(path), device=str(map_location)))
    else:
        state = _extract_state_dict(load_checkpoint_file(path, trust_pickle, map_location), path)
    if backbone_keys and is_module_layout(state):
        state = select_prefix(state, "backbone.")
    return state


def _extract_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    for key in NESTED_STATE_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if isinstance(obj, nn.Module):  # {"model": <pickled module>} from a trusted file
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"'{path}' does not hold a state_dict (a mapping of parameter names to tensors); "
            f"found {type(obj).__name__}. Save weights with `torch.save(model.state_dict(), path)`."
        )
    return strip_prefixes(obj)


# ---------------------------------------------------------------------------------------------- fitting
@dataclass
class ShapeMismatch:
    """A key present in both the file and the model with different shapes, and what that likely means."""

    key: str
    file_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    hint: str

    def __str__(self) -> str:
        return f"{self.key}: {self.file_shape} in the file, {self.model_shape} in the model ({self.hint})"


@dataclass
class WeightsReport:
    """What matched, what was missing, unexpected or of another shape when weights were compared."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    head_mismatches: list[ShapeMismatch] = field(default_factory=list)
    mismatches: list[ShapeMismatch] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        lines += [f"skipped {m}" for m in self.head_mismatches]
        lines += [f"MISMATCH {m}" for m in self.mismatches]
        if self.missing:
            lines.append(f"missing {len(self.missing)} keys (left at their initial values): {', '.join(self.missing[:10])}")
        if self.unexpected:
            lines.append(f"unexpected {len(self.unexpected)} keys (ignored): {', '.join(self.unexpected[:10])}")
        return "\n".join(lines)


def _mismatch_hint(key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...], is_head: bool) -> str:
    if is_head and len(file_shape) == len(model_shape) and file_shape[1:] == model_shape[1:]:
        return f"the head has {file_shape[0]} outputs in the file, you asked for {model_shape[0]}: the head is replaced, this is fine"
    if is_head:
        return "the head is replaced, this is fine"
    if len(file_shape) == 4 and len(model_shape) == 4 and file_shape[0] == model_shape[0] and file_shape[1] != model_shape[1]:
        return f"the file's layer takes {file_shape[1]} input channels, the model's {model_shape[1]}"
    return "is the file for another architecture or variant (e.g. resnet34 weights for a resnet18)?"


def head_prefixes_of(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the layers that are replaced when fine-tuning ``model``: a shape mismatch there is expected.

    For a ``FinetuneClassifier`` (``backbone`` + ``head``) that is the whole ``head``; for a torchvision
    model it is only its final layer (``fc.``, ``classifier.6.`` for vgg), the one ``create_backbone``
    replaces, plus the final layers of auxiliary heads. Hidden layers of a ``classifier`` block (vgg's
    ``classifier.0``) stay in the backbone, so a mismatch there is an error.

    Example::

        >>> import torchvision
        >>> head_prefixes_of(torchvision.models.vgg11())[0]
        'classifier.6.'
    """
    if isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(getattr(model, "head", None), nn.Module):
        return ("head.", *AUX_HEAD_PREFIXES)
    try:
        name, _ = find_final_layer(model)
    except ValueError:
        return AUX_HEAD_PREFIXES
    return (f"{name}.", *AUX_HEAD_PREFIXES)


def compare_state_dicts(
    model_state: Mapping[str, Tensor], file_state: Mapping[str, Tensor], head_prefixes: tuple[str, ...] = ()
) -> WeightsReport:
    """Compare a file's state_dict with a model's, key by key, with a hint for each shape mismatch.

    Args:
        model_state: the model's state_dict.
        file_state: the file's state_dict.
        head_prefixes: key prefixes of the replaced head (see ``head_prefixes_of``): mismatches there
            go to ``head_mismatches``, all others to ``mismatches``.

    Example::

        >>> report = compare_state_dicts({"fc.weight": torch.zeros(4, 8)}, {"fc.weight": torch.zeros(1000, 8)}, ("fc.",))
        >>> print(report.head_mismatches[0].hint)
        the head has 1000 outputs in the file, you asked for 4: the head is replaced, this is fine
    """
    report = WeightsReport()
    for key, value in file_state.items():
        if key not in model_state:
            report.unexpected.append(key)
            continue
        file_shape, model_shape = tuple(value.shape), tuple(model_state[key].shape)
        if file_shape == model_shape:
            report.loaded.append(key)
            continue
        is_head = key.startswith(head_prefixes)
        mismatch = ShapeMismatch(key, file_shape, model_shape, _mismatch_hint(key, file_shape, model_shape, is_head))
        (report.head_mismatches if is_head else report.mismatches).append(mismatch)
    mismatched = {m.key for m in report.head_mismatches}
    report.missing = [k for k in model_state if k not in file_state and k not in mismatched]
    return report


def _align_keys(model_keys: set[str], state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pick the naming (as saved, without ``backbone.``, with ``backbone.``) that matches the most model keys."""
    candidates = [state, select_prefix(state, "backbone."), {f"backbone.{k}": v for k, v in state.items()}]
    return max(candidates, key=lambda c: len(model_keys & c.keys()))


def load_weights(
    model: nn.Module,
    weights: str | Path | Mapping[str, Tensor],
    strict: bool = False,
    trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> WeightsReport:
    """Load a weights file (any format above) or a state_dict into ``model`` and report every key.

    Keys are matched as saved, or with the ``backbone.`` prefix removed or added, whichever fits the
    model best: a torchvision file loads into a ``FinetuneClassifier`` and a ``FinetuneClassifier``
    checkpoint loads into a torchvision model. Tensors of the final layer (``head_prefixes_of``) of
    another shape are skipped (that layer is replaced); any other shape mismatch, hidden layers of a
    ``classifier`` block included, is an error that lists every such key with a hint.

    Args:
        model: the model to fill.
        weights: a file path or a state_dict.
        strict: also fail on missing or unexpected keys.
        trust_pickle: allow a file holding a whole pickled module.
        map_location: where the file's tensors are loaded before being copied into the model.

    Raises:
        ValueError: shapes that do not fit outside the head, no key in common, or (``strict``) missing
            or unexpected keys.

    Example::

        model = FinetuneClassifier(num_classes=4, backbone="resnet18")
        report = load_weights(model, "resnet18-f37072fd.pth")   # torchvision's ImageNet file
        print(report)  # ... skipped head.fc.weight: (1000, 512) in the file, (4, 512) in the model (...)
    """
    if isinstance(weights, Mapping):
        state = strip_prefixes(weights)
    else:
        state = load_state_dict_file(weights, trust_pickle, map_location, backbone_keys=False)
    own = model.state_dict()
    state = _align_keys(set(own), state)
    report = compare_state_dicts(own, state, head_prefixes_of(model))
    source = "the state_dict" if isinstance(weights, Mapping) else f"'{weights}'"
    if report.mismatches:
        details = "\n  ".join(str(m) for m in report.mismatches)
        raise ValueError(f"{len(report.mismatches)} tensor(s) of {source} do not fit {type(model).__name__}:\n  {details}")
    if not report.loaded:
        raise ValueError(
            f"No key of {source} matches {type(model).__name__} ({len(state)} keys, e.g. {list(state)[:3]}; "
            f"the model expects e.g. {list(own)[:3]}). Is it a state_dict of this architecture?"
        )
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"{source} does not match {type(model).__name__} exactly (strict=True):\n{report}")
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


# ---------------------------------------------------------------------------------------------- writing
def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every OS / filesystem
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of writers to ``path`` that were killed (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -4]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the target's folder, fsync, then rename over ``path``.

    A rename within one folder is atomic: readers see the old file or the new one, never a partial one,
    even if the writer is killed or the machine loses power mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local checkpoints written atomically in their own folder.

    Lightning (2.x) serializes into memory and lets fsspec write a temporary file in the system temp
    folder, then moves it into place. When that folder is on another filesystem (a tmpfs ``/tmp``, a
    container's overlay, a network drive for ``runs/``), the move is a copy onto the target, and a
    process killed during the copy leaves a truncated ``last.ckpt``; nothing is flushed to disk either,
    and a killed writer leaves its temporary file in ``/tmp``. This plugin writes the temporary file
    next to the target (``.last.ckpt.<pid>.tmp``), fsyncs it, renames it over the target and removes
    temporaries of killed writers. Remote paths (``s3://`` ...) keep Lightning's behaviour.

    Example::

        trainer = Trainer(plugins=[AtomicCheckpointIO()])

    The ``lit-finetune`` command uses it by default (``trainer.plugins``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        protocol = get_filesystem(path).protocol
        if storage_options is not None or "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)
