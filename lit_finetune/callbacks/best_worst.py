"""Pictures of the samples with the highest and lowest loss, every few epochs.

The module's step outputs already carry per-sample losses, so selection costs a running top-k on
the device: a few thumbnails and their labels are kept, never whole batches, and nothing is read
back to the host until the epoch ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.callbacks._images import caption_tiles, denormalize, fit_size, tile_grid
from lit_finetune.callbacks._masks import overlay_masks, shrink_masks
from lit_finetune.callbacks._tensorboard import has_tensorboard, tensorboard_writer
from lit_finetune.tasks import task_of

Stage = Literal["train", "val"]
MAX_K = 32
MAX_TILE_SIZE = 256


class _RunningTopK:
    """The ``k`` samples with the largest key seen so far, kept on the device (fixed shapes, no syncs)."""

    def __init__(self, k: int, largest: bool) -> None:
        self.k = k
        self.sign = 1.0 if largest else -1.0
        self.state: dict[str, Tensor] | None = None

    def reset(self) -> None:
        self.state = None

    def _key(self, score: Tensor) -> Tensor:
        # NaN ranks first among the highest losses and never among the lowest.
        return torch.where(score.isnan(), torch.full_like(score, self.sign * float("inf")), self.sign * score)

    def update(self, score: Tensor, make_payload: Callable[[Tensor], dict[str, Tensor]]) -> None:
        """Offer one batch: ``make_payload(positions)`` builds thumbnails and labels of the chosen samples only."""
        key = self._key(score.float())
        top = key.topk(min(self.k, key.numel()))
        candidates = {"key": top.values, **make_payload(top.indices)}
        if self.state is None:
            self.state = self._empty(candidates)
        merged = {name: torch.cat([self.state[name], value]) for name, value in candidates.items()}
        keep = merged["key"].topk(self.k).indices
        self.state = {name: value[keep] for name, value in merged.items()}

    def _empty(self, like: dict[str, Tensor]) -> dict[str, Tensor]:
        state = {name: value.new_zeros((self.k, *value.shape[1:])) for name, value in like.items()}
        state["key"].fill_(-float("inf"))
        state[keys.INDEX].fill_(-1)
        return state


class BestWorstSamples(Callback):
    """Log a grid of the ``k`` samples with the highest and the ``k`` with the lowest loss per stage.

    Each tile is the de-normalized input as the model saw it (train tiles are augmented), captioned
    with the true class, the predicted class, its probability and the loss (or score). For segmentation
    (a task with per-pixel targets) each sample gets three tiles: the image, the true mask and the
    predicted mask blended over it, in the module's ``palette`` (else Pascal VOC's colours), unlabeled
    pixels in neutral gray; mask thumbnails are kept instead of logits. Under DDP each
    rank keeps its own top-k; at epoch end the candidates are gathered and rank zero logs one grid per
    kind: ``zz-best_worst/<stage>/worst`` and ``zz-best_worst/<stage>/best``, plus the chosen dataset indices as
    text (``zz-best_worst/<stage>/indices``). The first batch of the epoch with a non-finite loss, if any,
    is logged as ``zz-best_worst/<stage>/nonfinite``. Logged tiles are at most ``tile_size`` pixels wide,
    and at most ``3 * k`` of them per stage and epoch.

    Args:
        k: samples per grid (1 to 32).
        every_n_epochs: select and log on every n-th epoch.
        stages: ``"train"`` and/or ``"val"``.
        score_fn: per-sample score computed from the step outputs (a dict with ``sample_loss``, ``logits``,
            ``target``, ``index``); higher is worse. None: the per-sample loss.
        tile_size: longer side of each tile in pixels (smaller inputs are enlarged, larger ones shrunk).
        capture_nonfinite: also keep the first batch whose loss is NaN or infinite.

    Raises:
        ValueError: ``k``, ``every_n_epochs`` or ``tile_size`` out of range, or an unknown stage.

    Example::

        trainer = Trainer(callbacks=[BestWorstSamples(k=8, stages=["val"])])
        # YAML: trainer.callbacks: [{class_path: lit_finetune.callbacks.best_worst.BestWorstSamples, init_args: {k: 8}}]
    """

    needs_sample_losses = True
    """The module's steps return per-sample losses (``sample_loss``) only when a callback of the trainer says so."""

    def __init__(
        self,
        k: int = 8,
        every_n_epochs: int = 1,
        stages: Sequence[Stage] = ("train", "val"),
        score_fn: Callable[[dict[str, Tensor]], Tensor] | None = None,
        tile_size: int = 96,
        capture_nonfinite: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= k <= MAX_K:
            raise ValueError(f"`k` must be between 1 and {MAX_K} (it bounds the images logged), got {k}.")
        if every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be >= 1, got {every_n_epochs}.")
        if not 8 <= tile_size <= MAX_TILE_SIZE:
            raise ValueError(f"`tile_size` must be between 8 and {MAX_TILE_SIZE} pixels, got {tile_size}.")
        unknown = [s for s in stages if s not in ("train", "val")]
        if unknown or not stages:
            raise ValueError(f"`stages` must be a non-empty list of 'train' and 'val', got {list(stages)}.")
        self.k = k
        self.every_n_epochs = every_n_epochs
        self.stages = tuple(dict.fromkeys(stages))
        self.score_fn = score_fn
        self.tile_size = tile_size
        self.capture_nonfinite = capture_nonfinite
        self._enabled = True
        self._top: dict[str, dict[str, _RunningTopK]]
        self._top = {stage: {"worst": _RunningTopK(k, largest=True), "best": _RunningTopK(k, largest=False)} for stage in self.stages}
        self._nonfinite: dict[str, dict[str, Tensor] | None] = {stage: None for stage in self.stages}
        self.selected: dict[str, dict[str, list[tuple[int, float]]]] = {}
        """Per stage and kind, the ``(dataset index, score)`` pairs logged last, best first in each kind."""

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._enabled = has_tensorboard(trainer, type(self).__name__)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset("train")

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset("val")

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._update("train", trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._update("val", trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log("train", trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log("val", trainer, pl_module)

    # ------------------------------------------------------------------ selection
    def _active(self, stage: str, trainer: Trainer) -> bool:
        return self._enabled and stage in self.stages and not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def _reset(self, stage: str) -> None:
        if stage in self.stages:
            for top in self._top[stage].values():
                top.reset()
            self._nonfinite[stage] = None

    @torch.no_grad()
    def _update(self, stage: str, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._active(stage, trainer) or not isinstance(outputs, dict) or keys.SAMPLE_LOSS not in outputs:
            return
        score = (self.score_fn(outputs) if self.score_fn is not None else outputs[keys.SAMPLE_LOSS]).detach().reshape(-1)
        images = batch[keys.IMAGE].detach()
        task = task_of(pl_module, type(self).__name__)
        logits = outputs[keys.LOGITS].detach().float()
        if task.dense:  # masks: keep thumbnails of the true and predicted masks, never full-size logits
            target = outputs[keys.TARGET].detach()
            target = (task.prepare_target(target) if target.ndim > 2 else target).long()
            predicted = task.predicted_mask(logits)  # type: ignore[attr-defined]  # a dense task: SegmentationTask

            def payload(pos: Tensor) -> dict[str, Tensor]:
                return {
                    "image": self._shrink(images[pos]),
                    "target": shrink_masks(target[pos], self.tile_size),
                    "pred_mask": shrink_masks(predicted[pos], self.tile_size),
                    "score": score[pos].float(),
                    keys.INDEX: outputs[keys.INDEX][pos].long(),
                }
        else:
            target = outputs[keys.TARGET].detach().reshape(len(score), -1).float()

            def payload(pos: Tensor) -> dict[str, Tensor]:
                return {
                    "image": self._shrink(images[pos]),
                    "target": target[pos],
                    "logits": logits[pos],
                    "score": score[pos].float(),
                    keys.INDEX: outputs[keys.INDEX][pos].long(),
                }

        for top in self._top[stage].values():
            top.update(score, payload)
        if self.capture_nonfinite:
            self._capture_nonfinite(stage, score, payload, batch_idx)

    def _shrink(self, images: Tensor) -> Tensor:
        """Keep thumbnails no larger than the tile (small inputs are enlarged only when logged)."""
        return fit_size(images, self.tile_size).float() if max(images.shape[-2:]) > self.tile_size else images.float()

    def _capture_nonfinite(self, stage: str, score: Tensor, payload: Callable[[Tensor], dict[str, Tensor]], batch_idx: int) -> None:
        # Branch-free, so that a clean step costs no host sync: the buffer is overwritten only once.
        bad = ~score.isfinite()
        order = torch.argsort(bad.int(), descending=True, stable=True)[: self.k]
        current = payload(order)
        current["bad"] = bad[order]
        current["batch_idx"] = torch.full_like(order, batch_idx)
        current["taken"] = bad.any().reshape(1)
        if len(order) < self.k:  # pad a short batch so that shapes never change
            current = {n: torch.cat([v, v.new_zeros((self.k - len(v), *v.shape[1:]))]) if n != "taken" else v for n, v in current.items()}
            current[keys.INDEX][len(order) :] = -1
        held = self._nonfinite[stage]
        if held is None:
            self._nonfinite[stage] = current
            return
        take = current["taken"] & ~held["taken"]
        self._nonfinite[stage] = {
            n: torch.where(take.view(-1, *[1] * (v.dim() - 1)), current[n], v) if n != "taken" else v | current[n] for n, v in held.items()
        }

    # ------------------------------------------------------------------ logging
    def _gather(self, trainer: Trainer, state: dict[str, Tensor]) -> dict[str, Tensor]:
        if trainer.world_size == 1:
            return state
        out = {}
        for name, value in state.items():
            # gloo cannot gather bool tensors
            gathered = trainer.strategy.all_gather(value.int() if value.dtype == torch.bool else value).flatten(0, 1)
            out[name] = gathered.bool() if value.dtype == torch.bool else gathered
        return out

    def _log(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(stage, trainer) or self._top[stage]["worst"].state is None:
            return
        writer = tensorboard_writer(trainer)
        chosen = {}
        for kind, top in self._top[stage].items():
            # Both kinds saw the batches of "worst" (checked above). Collective: every rank takes part.
            state = self._gather(trainer, cast(dict[str, Tensor], top.state))
            if writer is not None:
                chosen[kind] = self._final(state, top.k)
        nonfinite = None
        if self.capture_nonfinite and (held := self._nonfinite[stage]) is not None:
            gathered = self._gather(trainer, {n: v for n, v in held.items() if n != "taken"})
            taken = self._gather(trainer, {"taken": held["taken"]})["taken"]
            nonfinite = (gathered, taken)
        if writer is None:
            return
        step = trainer.global_step
        self.selected[stage] = {}
        lines = []
        for kind, state in chosen.items():
            self.selected[stage][kind] = list(zip(state[keys.INDEX].tolist(), state["score"].tolist(), strict=False))
            writer.add_image(f"zz-best_worst/{stage}/{kind}", self._grid(state, pl_module), step)
            lines.append(f"{kind}: " + ", ".join(f"{i} ({s:.4g})" for i, s in self.selected[stage][kind]))
        writer.add_text(f"zz-best_worst/{stage}/indices", "  \n".join(lines), step)
        if nonfinite is not None:
            self._log_nonfinite(stage, writer, step, pl_module, *nonfinite)

    def _final(self, state: dict[str, Tensor], k: int) -> dict[str, Tensor]:
        """Best ``k`` of the gathered candidates, on the CPU, without empty slots or DDP duplicates."""
        state = {n: v.cpu() for n, v in state.items()}
        order = state["key"].argsort(descending=True, stable=True)
        seen, keep = set(), []
        for pos in order.tolist():
            index = int(state[keys.INDEX][pos])
            if index >= 0 and index not in seen and state["key"][pos] > -float("inf"):
                seen.add(index)
                keep.append(pos)
        keep_t = torch.tensor(keep[:k], dtype=torch.long)
        return {n: v[keep_t] for n, v in state.items()}

    def _grid(self, state: dict[str, Tensor], pl_module: LightningModule) -> Tensor:
        task = task_of(pl_module, type(self).__name__)
        mean, std = pl_module.image_mean, pl_module.image_std
        if task.dense:
            return self._mask_grid(task, state, pl_module)
        prediction = task.predict(state["logits"])
        captions = [
            [
                f"true {task.target_text(state['target'][i])}",
                f"pred {task.prediction_text(prediction, i)}",
                f"loss {float(state['score'][i]) + 0.0:.3g}",  # + 0.0: no "-0"
            ]
            for i in range(len(state["score"]))
        ]
        # image_mean, image_std: the task module's normalization tuples
        return tile_grid(caption_tiles(fit_size(denormalize(state["image"], mean, std), self.tile_size), captions))  # type: ignore[arg-type]

    def _mask_grid(self, task: Any, state: dict[str, Tensor], pl_module: LightningModule) -> Tensor:
        """Three tiles per sample: the image, the true mask over it and the predicted mask over it (unlabeled pixels gray)."""
        # image_mean, image_std: the task module's normalization tuples
        images = fit_size(denormalize(state["image"], pl_module.image_mean, pl_module.image_std), self.tile_size).cpu()  # type: ignore[arg-type]
        palette, ignore = getattr(pl_module, "palette", None), task.ignore_index
        tiles, captions = [], []
        for i in range(len(state["score"])):
            image = images[i : i + 1]
            tiles += [
                image,
                overlay_masks(image, state["target"][i : i + 1], palette, ignore),
                overlay_masks(image, state["pred_mask"][i : i + 1], palette, ignore),
            ]
            captions += [
                [f"loss {float(state['score'][i]) + 0.0:.3g}", f"#{int(state[keys.INDEX][i])}"],
                ["true", task.target_text(state["target"][i])],
                ["pred", task.target_text(state["pred_mask"][i])],
            ]
        return tile_grid(caption_tiles(torch.cat(tiles), captions), ncol=6)

    def _log_nonfinite(
        self, stage: str, writer: Any, step: int, pl_module: LightningModule, gathered: dict[str, Tensor], taken: Tensor
    ) -> None:
        taken = taken.cpu()
        if not bool(taken.any()):
            return
        rank = int(taken.nonzero()[0, 0])
        state = {n: v.reshape(len(taken), self.k, *v.shape[1:])[rank].cpu() for n, v in gathered.items()}
        valid = state[keys.INDEX] >= 0
        state = {n: v[valid] for n, v in state.items()}
        writer.add_image(f"zz-best_worst/{stage}/nonfinite", self._grid(state, pl_module), step)
        bad = state[keys.INDEX][state["bad"]].tolist()
        writer.add_text(
            f"zz-best_worst/{stage}/nonfinite",
            f"First batch with a non-finite loss: batch {int(state['batch_idx'][0])} (rank {rank}); dataset indices {bad}.",
            step,
        )
