"""Which export formats and segmentation encoders work for each tested timm family (a table for docs/backbones.md).

For each family (the tiny variants of tests/test_timm_backbones.py, random init, nothing downloaded) this
builds a ``FinetuneClassifier``, saves a checkpoint and exports it with TorchScript and ONNX, comparing the
logits of each file with the module's (onnxruntime for ONNX), and builds a segmentation encoder
(``EncoderDecoderSegmenter``) whose logits must come out at the input size. Prints a markdown table:
``ok``, or the first line of the error.

    python benchmarks/timm_families.py [--families resnet10t convnext_atto ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_finetune import keys
from lit_finetune.export import export_checkpoint
from lit_finetune.models.segmenters import build_segmenter
from lit_finetune.modules.classifier import FinetuneClassifier

TINY_VIT = {"depth": 2}
FAMILIES = {  # the variants of tests/test_timm_backbones.py: timm.create_model arguments, input side
    "resnet10t": ({}, 32),
    "convnext_atto": ({}, 32),
    "tinynet_e": ({}, 32),
    "mobilenetv3_small_050": ({}, 32),
    "regnetx_002": ({}, 32),
    "fastvit_t8": ({}, 32),
    "deit_tiny_patch16_224": ({"img_size": 32, **TINY_VIT}, 32),
    "eva02_tiny_patch14_224": ({"img_size": 28, **TINY_VIT}, 28),
    "vit_small_patch14_reg4_dinov2": ({"img_size": 28, "embed_dim": 64, "num_heads": 2, **TINY_VIT}, 28),
}


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as err:  # noqa: BLE001 - the table reports every failure
        return f"fails: {type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"


def family_row(name: str, kwargs: dict, size: int, folder: Path) -> dict[str, str]:
    model = FinetuneClassifier(3, backbone=f"timm/{name}", backbone_kwargs=kwargs).eval()
    trainer = Trainer(logger=False, max_steps=0, enable_progress_bar=False, default_root_dir=folder)
    trainer.strategy.connect(model)
    ckpt = folder / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(images)[keys.LOGITS]

    def torchscript() -> None:
        files = export_checkpoint(str(ckpt), str(folder / "ts"), torchscript=True, example_size=size)
        torch.testing.assert_close(torch.jit.load(files["torchscript"])(images), expected, rtol=1e-4, atol=1e-4)

    def onnx() -> None:
        import onnxruntime

        files = export_checkpoint(str(ckpt), str(folder / "onnx"), onnx=True, example_size=size)
        session = onnxruntime.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"images": images.numpy()})[0]), expected, rtol=1e-3, atol=1e-4)

    def encoder() -> None:
        net = build_segmenter(f"timm/{name}", 3, decoder_channels=[16, 16, 8, 8], backbone_kwargs=kwargs or None).eval()
        with torch.no_grad():
            assert net(images)[keys.LOGITS].shape == (2, 3, size, size)

    return {"torchscript": _check(torchscript), "onnx": _check(onnx), "encoder": _check(encoder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print("| family | TorchScript (traced) | ONNX | segmentation encoder |\n|---|---|---|---|")
    for name in args.families:
        kwargs, size = FAMILIES[name]
        with tempfile.TemporaryDirectory() as tmp:
            row = family_row(name, kwargs, size, Path(tmp))
        print(f"| `timm/{name}` {kwargs or ''} | {row['torchscript']} | {row['onnx']} | {row['encoder']} |", flush=True)


if __name__ == "__main__":
    main()
