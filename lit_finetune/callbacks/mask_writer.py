"""Write the masks that ``trainer.predict`` produces for a segmentation model as palette PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from PIL import Image
from torch.nn import functional as F
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.images.palette import default_palette, palette_image
from lit_finetune.images.read import load_rgb


class SegmentationMaskWriter(BasePredictionWriter):
    """Write one mask per image: ``<output_dir>/<image stem>.png``, a palette PNG at the image's own size.

    The logits of each image (``(C, h, w)`` at the model's input size, cropped to ``input_size`` when the batch
    was padded to one size) are resized to the image file's size
    (``original_size`` of the predict output; bilinear), and the module's task turns them into class indices
    (``pl_module.task.predict(logits).pred``: the argmax, or sigmoid > 0.5 for one-channel binary logits). The
    PNG's pixel values are class indices (mode ``P``: any image viewer shows them in the data's colours, and
    ``numpy.asarray(Image.open(f))`` reads the indices back). With ``overlay``, the image with the classes other
    than 0 (background) tinted is written to ``<output_dir>/overlays/<image stem>.png`` as well.

    Masks are written batch by batch, so nothing accumulates in memory. Under DDP each process writes the
    masks of its own images (the predict sampler gives each image to one process, so no file is written twice).
    Two images of the same stem (in different folders) give ``<stem>.png`` and ``<stem>_<index>.png``.

    Args:
        output_dir: the folder of the masks; None: ``masks/`` in the trainer's log folder (with the CLI's
            ``predict --ckpt_path best``: ``<run>/predict/best/masks/``).
        overlay: also write the images with their predicted masks blended in.
        alpha: opacity of the mask colours in overlays.
        palette: one RGB colour per class; None: the module's ``palette`` (kept in its checkpoint), else the data
            module's, else Pascal VOC's colours.

    Raises:
        ValueError: ``alpha`` is not in [0, 1].

    Example::

        trainer = Trainer(callbacks=[SegmentationMaskWriter("predicted_masks", overlay=True)])
        trainer.predict(model, datamodule=SegmentationDataModule("data/my_masks", predict_root="data/new_images"))
    """

    def __init__(
        self, output_dir: str | None = None, overlay: bool = False, alpha: float = 0.5, palette: list[tuple[int, int, int]] | None = None
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
        self.output_dir = output_dir
        self.overlay = overlay
        self.alpha = alpha
        self.palette = palette
        self.written: list[Path] = []
        self._names: set[str] = set()

    def folder(self, trainer: Trainer) -> Path:
        """Where the masks go."""
        return Path(self.output_dir) if self.output_dir else Path(trainer.log_dir or trainer.default_root_dir) / "masks"

    def _palette(self, trainer: Trainer, pl_module: LightningModule, channels: int) -> list[tuple[int, int, int]]:
        for palette in (self.palette, getattr(pl_module, "palette", None), getattr(getattr(trainer, "datamodule", None), "palette", None)):
            if palette:
                return cast(list[tuple[int, int, int]], [tuple(int(v) for v in color) for color in palette])
        return default_palette(max(channels, 2))

    def _name(self, path: str, index: int) -> str:
        name = Path(path).stem
        if name in self._names:
            name = f"{name}_{index}"
        self._names.add(name)
        return name

    @override
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.written, self._names = [], set()

    @override
    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        task: Any = getattr(pl_module, "task", None)
        if not callable(getattr(task, "predict", None)):
            raise TypeError(
                f"SegmentationMaskWriter needs a module whose `task.predict(logits)` gives masks; {type(pl_module).__name__} has none."
            )
        logits = prediction[keys.LOGITS]
        sizes = prediction.get(keys.ORIGINAL_SIZE)
        inputs = prediction.get(keys.INPUT_SIZE)
        folder = self.folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        palette = self._palette(trainer, pl_module, logits.shape[1])
        for i, (index, path) in enumerate(zip(torch.as_tensor(prediction[keys.INDEX]).tolist(), prediction[keys.PATH], strict=False)):
            size = tuple(int(v) for v in sizes[i]) if sizes is not None else tuple(logits.shape[-2:])
            crop = logits[i : i + 1] if inputs is None else logits[i : i + 1, :, : int(inputs[i][0]), : int(inputs[i][1])]  # padding off
            resized = F.interpolate(crop.float(), size=size, mode="bilinear", align_corners=False)
            mask = task.predict(resized).pred[0].cpu().numpy()
            name = self._name(path, index)
            target = folder / f"{name}.png"
            palette_image(mask, palette).save(target)
            self.written.append(target)
            if self.overlay:
                (folder / "overlays").mkdir(exist_ok=True)
                blend(load_rgb(path), mask, palette, self.alpha).save(folder / "overlays" / f"{name}.png")

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank_zero_info(f"{len(self.written)} predicted masks written to {self.folder(trainer)}")


def blend(image: Image.Image, mask: np.ndarray, palette: list[tuple[int, int, int]], alpha: float) -> Image.Image:
    """``image`` with the pixels of every class but 0 (background) tinted with its palette colour."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    colors = np.zeros((256, 3), dtype=np.float32)
    colors[: min(len(palette), 256)] = np.asarray(palette[:256], dtype=np.float32)
    tint = (mask > 0)[..., None]
    mixed = np.where(tint, (1 - alpha) * pixels + alpha * colors[mask.clip(0, 255)], pixels)
    return Image.fromarray(mixed.round().astype(np.uint8), mode="RGB")
