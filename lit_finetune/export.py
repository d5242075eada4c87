"""Export a training checkpoint for inference: ``lit-finetune export --ckpt_path last.ckpt --output_dir model/``.

A Lightning checkpoint holds the optimizer, the loop state and the callbacks' states as well as the
weights. An export keeps what inference needs:

- ``model.safetensors`` (or ``model.pt``, a plain ``state_dict`` loadable with ``weights_only=True``);
- ``model.json``: the model class and its arguments (backbone, number of classes, head), the task, the
  class names and the preprocessing (resize, crop, mean, std), so the model can be rebuilt and fed
  correctly; for segmentation also the palette, ``ignore_index`` and the binary threshold;
- optionally ``model.torchscript.pt`` (``torch.jit.trace``, deprecated by PyTorch but still widely
  deployed) and ``model.onnx`` (needs ``pip install onnx onnxscript``), both mapping normalized
  ``(N, 3, H, W)`` images to logits: ``(N, C)`` for classification, ``(N, C, H, W)`` masks' logits for
  segmentation. The ONNX batch size is dynamic; a segmentation model's height and width are too.

The model class comes from the checkpoint: the command line stores it in the hyperparameters
(``_class_path``), the modules store it themselves (``module_class``, for a plain ``Trainer.fit``);
checkpoints that hold neither are ``FinetuneClassifier``'s.

:func:`load_exported` rebuilds the model from the folder without the training checkpoint.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_finetune import keys
from lit_finetune.models.preprocessing import configured_preprocessing, weights_preprocessing
from lit_finetune.models.weights import atomic_save, load_checkpoint_file

EXPORT_VERSION = 1
CONFIG_NAME = "model.json"
DEFAULT_MODEL_CLASS = "lit_finetune.modules.classifier.FinetuneClassifier"
MODULE_CLASS_KEY = "module_class"
"""Checkpoint key where ``FinetuneClassifier`` and ``SegmentationModule`` store their import path."""
MIN_ONNX_SIDE = 33
"""Smallest height and width a segmentation ONNX model accepts: an encoder's deepest map (stride 32) must be
larger than 1x1, since ``torch.export`` treats a size of 1 as a constant."""
MIN_DENSE_EXAMPLE_SIDE = 64
"""Segmentation models are traced with examples of at least this side, for the same reason."""


class LogitsModel(nn.Module):
    """Wraps a ``FinetuneClassifier`` or ``SegmentationModule`` so that ``forward(images)`` returns the logits tensor (for tracing)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)[keys.LOGITS]


MOVED_CLASSES = {
    "lit_finetune.module.FinetuneClassifier": "lit_finetune.modules.classifier.FinetuneClassifier",
    "lit_finetune.segmentation.SegmentationModule": "lit_finetune.modules.segmentation.SegmentationModule",
}
"""Class paths that checkpoints written before the package was split into sub-packages still name."""


def _import(class_path: str) -> type:
    class_path = MOVED_CLASSES.get(class_path, class_path)
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"Cannot import the model class '{class_path}' ({err}): define it at the top level of a module that Python "
            "can import (on PYTHONPATH), then export again."
        ) from None


def module_class_path(checkpoint: dict[str, Any]) -> str:
    """Import path of the module a checkpoint was saved from.

    The command line's ``_class_path`` in the hyperparameters, else the ``module_class`` the module stored,
    else ``FinetuneClassifier`` (checkpoints written before modules stored their class).
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    return hparams.get("_class_path") or checkpoint.get(MODULE_CLASS_KEY) or DEFAULT_MODEL_CLASS


def _init_args(hparams: dict[str, Any]) -> dict[str, Any]:
    """The model's constructor arguments as plain data; pretrained weights are not downloaded again."""
    args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    args["weights"] = None  # the exported state_dict holds every weight
    if "weights_backbone" in args:  # torchvision segmentation models' ImageNet backbone
        args["weights_backbone"] = None
    return args


def preprocessing_of(checkpoint: dict[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Resize/crop sizes and normalization the model was trained with (from the data module's hyperparameters).

    A model whose task is dense (segmentation) gets :func:`segmentation_preprocessing_of`.
    """
    if model is not None and getattr(getattr(model, "task", None), "dense", False):
        return segmentation_preprocessing_of(checkpoint)
    hparams = checkpoint.get("hyper_parameters", {})
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if data:
        pre = configured_preprocessing(
            data.get("backbone"), data.get("weights"), data.get("image_size"), data.get("resize_size"), data.get("mean"), data.get("std")
        )
    else:
        pre = weights_preprocessing(hparams.get("backbone"), hparams.get("weights"))
    return {
        "resize_size": pre.resize_size,
        "crop_size": pre.crop_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "interpolation": pre.interpolation.value,
        "steps": ["resize short side to resize_size", "center crop crop_size", "scale to [0, 1]", "normalize with mean and std"],
    }


def segmentation_preprocessing_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Evaluation size and normalization of a segmentation model (``SegmentationDataModule``'s options).

    ``resize_size``: the side of the square images are resized to (None: full resolution, no resize);
    ``crop_size``: the training crop's side (the example size of TorchScript/ONNX exports). Without data
    module hyperparameters (a plain ``Trainer.fit``): the weights' size and statistics, or the module's
    ``image_mean``/``image_std`` when set.
    """
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if data:
        pre = configured_preprocessing(
            data.get("backbone"), data.get("weights"), data.get("image_size"), None, data.get("mean"), data.get("std"), square=True
        )
        eval_size = data.get("eval_size", "image_size")
        resize = pre.crop_size if eval_size == "image_size" else eval_size
        mean, std = pre.mean, pre.std
    else:
        hparams = checkpoint.get("hyper_parameters") or {}
        pre = weights_preprocessing(hparams.get("backbone"), hparams.get("weights"), unknown_names=True)
        resize, mean, std = pre.crop_size, hparams.get("image_mean") or pre.mean, hparams.get("image_std") or pre.std
    resize_step = f"resize to {resize}x{resize}" if resize is not None else "keep the image's size (full resolution)"
    return {
        "resize_size": resize,
        "crop_size": pre.crop_size,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "interpolation": pre.interpolation.value,
        "steps": [
            resize_step,
            "scale to [0, 1]",
            "normalize with mean and std",
            "logits (N, C, H, W) at the input size: resize them to the image's size (bilinear), then argmax (binary: sigmoid > threshold)",
        ],
    }


def task_info(model: nn.Module) -> dict[str, Any]:
    """``task`` and, for segmentation, ``mode``, ``ignore_index`` and ``threshold`` from the model's task object."""
    task: Any = getattr(model, "task", None)
    # hparams: those of a LightningModule
    info: dict[str, Any] = {"task": getattr(task, "name", None) or model.hparams.get("task", "multiclass")}  # type: ignore[operator, union-attr]
    if getattr(task, "dense", False):
        from lit_finetune.data.masks import default_palette

        palette = getattr(model, "palette", None) or default_palette(max(task.num_classes, 2))  # what the mask writer falls back to
        info.update(
            {"mode": task.mode, "ignore_index": task.ignore_index, "threshold": task.threshold, "palette": [list(c) for c in palette]}
        )
    return info


def model_from_checkpoint(ckpt_path: str | Path, trust_pickle: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the module stored in a training checkpoint (eval mode, CPU) and return it with the checkpoint.

    The checkpoint is read with ``weights_only=True`` (unless ``trust_pickle``); the backbone is built
    without pretrained weights (nothing is downloaded) and then filled from the checkpoint.

    Raises:
        ValueError: the file is not a Lightning checkpoint of a model, or its model class cannot be imported.
    """
    checkpoint = load_checkpoint_file(ckpt_path, trust_pickle=trust_pickle)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"'{ckpt_path}' is not a Lightning checkpoint of a model (no `state_dict` and `hyper_parameters`).")
    hparams = checkpoint["hyper_parameters"]
    model_class = _import(module_class_path(checkpoint))
    model = model_class(**_init_args(hparams))
    model.on_load_checkpoint(checkpoint)  # reconciles the loss's buffers, which come from the config
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def export_checkpoint(
    ckpt_path: str,
    output_dir: str,
    format: Literal["safetensors", "state_dict"] = "safetensors",
    torchscript: bool = False,
    onnx: bool = False,
    trust_pickle: bool = False,
    example_size: int | None = None,
) -> dict[str, str]:
    """Write the weights, ``model.json`` and optional TorchScript/ONNX files of a checkpoint to ``output_dir``.

    Args:
        ckpt_path: a Lightning checkpoint written by ``lit-finetune fit`` (``last.ckpt``, ``epoch03-....ckpt``).
        output_dir: folder to write (created if missing; files in it are replaced).
        format: ``"safetensors"`` (``model.safetensors``) or ``"state_dict"`` (``model.pt`` via ``torch.save``).
        torchscript: also write ``model.torchscript.pt`` (traced; ``torch.jit.load`` runs it without this library).
        onnx: also write ``model.onnx`` with a dynamic batch dimension (needs ``onnx`` and ``onnxscript``).
        trust_pickle: allow a checkpoint holding pickled objects (only for files you trust).
        example_size: side of the square example images that TorchScript and ONNX are traced with; None: the
            preprocessing's crop size (segmentation: at least 64). The ONNX batch size is dynamic (and, for
            segmentation, height and width, from 33 px up); a traced TorchScript classifier expects this size.

    Returns:
        The written files by kind: ``weights``, ``config`` and, when asked, ``torchscript``, ``onnx``.

    Raises:
        ValueError: the file is not a Lightning checkpoint of a model, its model class cannot be imported, an
            unknown ``format`` or an ``example_size`` below 1.
        ImportError: ``onnx=True`` without the ``onnx``/``onnxscript`` packages.

    Example::

        export_checkpoint("runs/quickstart/version_0/checkpoints/last.ckpt", "exported/digits", torchscript=True)
        model, config = load_exported("exported/digits")
    """
    if format not in ("safetensors", "state_dict"):
        raise ValueError(f"Unknown export format {format!r}: choose 'safetensors' or 'state_dict'.")
    if example_size is not None and example_size < 1:
        raise ValueError(f"`example_size` must be a positive number of pixels (or None for the preprocessing's size), got {example_size}.")
    if onnx:
        for package in ("onnx", "onnxscript"):
            if importlib.util.find_spec(package) is None:
                raise ImportError(f"ONNX export needs the `{package}` package: `pip install onnx onnxscript`.")
    model, checkpoint = model_from_checkpoint(ckpt_path, trust_pickle)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("loss.")}
    files = {"weights": str(out / ("model.safetensors" if format == "safetensors" else "model.pt"))}
    if format == "safetensors":
        from safetensors.torch import save_file

        save_file(state, files["weights"])
    else:
        atomic_save(state, files["weights"])
    pre = preprocessing_of(checkpoint, model)
    info = task_info(model)
    side = example_size or pre["crop_size"]
    if getattr(model.task, "dense", False):
        side = max(side, MIN_DENSE_EXAMPLE_SIDE)
    example = torch.zeros(2, 3, side, side)
    # Lightning's own switch that lets tracers read `trainer` on a module that has none (as in `to_torchscript`).
    model._jit_is_scripting = True  # type: ignore[assignment]  # a LightningModule attribute
    logits_model = LogitsModel(model).eval()  # the wrapper too: a new module starts in training mode
    if torchscript:
        files["torchscript"] = str(out / "model.torchscript.pt")
        with warnings.catch_warnings():
            # torch >= 2.9 marks torch.jit deprecated; the file is still what `torch.jit.load` users need.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated", category=FutureWarning)
            # The tracer probes every attribute of every submodule, the metrics' deprecated `update_called` too.
            warnings.filterwarnings("ignore", message=r"This property will be removed in 2\.0\.0", category=DeprecationWarning)
            _trace(logits_model, example, model).save(files["torchscript"])
    if onnx:
        files["onnx"] = str(out / "model.onnx")
        dims = {0: torch.export.Dim("batch", min=1)}
        if getattr(model.task, "dense", False):  # masks of any image size
            dims.update({2: torch.export.Dim("height", min=MIN_ONNX_SIDE), 3: torch.export.Dim("width", min=MIN_ONNX_SIDE)})
        torch.onnx.export(
            logits_model,
            (example,),
            files["onnx"],
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": dims},
            verbose=False,  # no progress lines per export stage
        )
    hparams = checkpoint["hyper_parameters"]
    config = {
        "export_version": EXPORT_VERSION,
        "model_class": module_class_path(checkpoint),
        "init_args": _init_args(hparams),
        "class_names": checkpoint.get("class_names") or hparams.get("class_names"),
        **info,
        "preprocessing": pre,
        "files": {kind: Path(path).name for kind, path in files.items()},
        "source": {"checkpoint": str(ckpt_path), "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")},
    }
    files["config"] = str(out / CONFIG_NAME)
    Path(files["config"]).write_text(json.dumps(config, indent=2) + "\n")
    return files


def _trace(logits_model: nn.Module, example: Tensor, model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the model, or an error that names the backbone and the exports that still work.

    Raises:
        RuntimeError: the backbone does not trace (some timm families use Python control flow on values).
    """
    try:
        return torch.jit.trace(logits_model, example)
    except Exception as err:  # the tracer raises many kinds; all mean "this model does not trace"
        backbone = getattr(model, "backbone_name", type(model).__name__)
        raise RuntimeError(
            f"TorchScript tracing of backbone '{backbone}' failed: {str(err).splitlines()[0].rstrip('.') if str(err) else type(err).__name__}. "
            "Export without `--torchscript`: the safetensors weights (with model.json) always work, and ONNX (`--onnx`) may."
        ) from err


def load_exported(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model (eval mode, CPU) from ``model.json`` and its weights file; return it and the config.

    Raises:
        FileNotFoundError: ``folder`` has no ``model.json``.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"'{folder}' holds no {CONFIG_NAME}: export a checkpoint with `lit-finetune export`.")
    config = json.loads(config_path.read_text())
    model = _import(config["model_class"])(**config["init_args"])
    weights = folder / config["files"]["weights"]
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith("loss.")] + list(unexpected)
    if wrong:
        raise ValueError(f"'{weights}' does not fit {config['model_class']}: {wrong[:10]}")
    return model.eval(), config


def main(args: list[str] | None = None) -> int:
    """``lit-finetune export --ckpt_path CKPT --output_dir DIR [--format ...] [--torchscript true] [--onnx true]``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="lit-finetune export", description="Export a training checkpoint for inference: weights, model.json, TorchScript/ONNX."
    )
    parser.add_function_arguments(export_checkpoint)
    cfg = parser.parse_args(args)
    files = export_checkpoint(**cfg.as_dict())
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
