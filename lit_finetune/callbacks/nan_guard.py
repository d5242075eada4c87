"""Stop (or skip) a training step whose loss or gradients are NaN or infinite, and say where they came from.

A clean step costs the global gradient norm (foreach ops on the device) and one flag read. On a real
non-finite value the batch and a checkpoint of the weights before the step are saved, the batch is
replayed with forward hooks on every module to find the first one whose output is non-finite (and,
optionally, under ``torch.autograd.detect_anomaly`` to find the backward function that failed), and
a report is written.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lit_finetune import keys
from lit_finetune.callbacks._tensorboard import tensorboard_writer
from lit_finetune.callbacks.gradient_stats import global_grad_norm

log = logging.getLogger(__name__)


def _tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor inside nested tuples, lists, dicts and dataclass-like outputs."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _is_finite(value: Any) -> bool:
    return all(bool(t.isfinite().all()) for t in _tensors(value) if t.is_floating_point() or t.is_complex())


def describe(t: Tensor) -> str:
    """Shape, range and NaN/Inf counts of a tensor, for reports."""
    if not t.is_floating_point():
        return f"shape {tuple(t.shape)} {t.dtype}"
    t = t.detach().float()
    finite = t[t.isfinite()]
    text = f"shape {tuple(t.shape)}, {int(t.isnan().sum())} NaN, {int(t.isinf().sum())} Inf of {t.numel()}"
    if finite.numel():
        text += f"; finite values in [{finite.min().item():.4g}, {finite.max().item():.4g}], mean {finite.mean().item():.4g}"
    return text


def running_stats(model: nn.Module) -> list[Tensor]:
    """The buffers a training-mode forward pass updates: running statistics of normalization layers in
    training mode (``running_mean``, ``running_var``, ``num_batches_tracked`` of BatchNorm/InstanceNorm)."""
    stats = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.training and module.track_running_stats:
            stats += [b for b in (module.running_mean, module.running_var, module.num_batches_tracked) if b is not None]
    return stats


class NanGuard(Callback):
    """Catch non-finite losses and gradients the step they appear, and report which module made them.

    Each step the loss (every micro-batch under gradient accumulation) and the global gradient norm
    are checked on the device; the host reads one flag (under DDP, the flag is OR-reduced over ranks
    so that all ranks act together). With AMP's gradient scaler, infinite gradients with a finite loss
    are the scaler's normal overflow: such steps are skipped by the scaler and only counted; a warning
    comes after ``max_amp_skips`` of them in a row.

    On a real non-finite value the callback:

    1. saves the batch (``nan_batch_step<N>.pt``) and a checkpoint of the weights before this step
       (``nan_step<N>.ckpt``) to ``dirpath``, after restoring the running statistics of normalization
       layers in training mode (``running_stats``) to their values before the step's forward pass. Those
       are the buffers a forward pass updates; each step copies them (one fused copy into tensors kept
       from the previous step) instead of cloning every buffer. A custom module that changes other
       buffers in its forward pass keeps its changed values in the checkpoint;
    2. replays the batch in training mode with a forward hook on every module and names the first
       module whose output is non-finite, with statistics of its inputs and weights; with
       ``detect_anomaly`` the loss is also back-propagated under ``torch.autograd.detect_anomaly`` (into
       fresh tensors: ``.grad`` is not touched) to name the backward function that failed. Buffers
       (BatchNorm statistics) and training flags are restored and every hook is removed, also on error;
    3. drops the step's gradients so the optimizer does not apply them, writes ``nan_report_step<N>.txt``
       (and the text ``zz-nan_guard/report`` to TensorBoard), and stops training (``action="stop"``) or
       goes on with the next batch (``action="skip"``).

    The replay calls ``forward``, ``prepare_target`` and ``compute_loss`` of a ``FinetuneClassifier``; for
    other modules it replays ``forward`` on ``batch["image"]`` only.

    Args:
        action: ``"stop"`` training after the report, or ``"skip"`` the batch and continue.
        detect_anomaly: also replay the backward pass under ``torch.autograd.detect_anomaly``.
        dirpath: folder of the batch, checkpoint and report; None: ``<log_dir>/nan_guard``.
        max_amp_skips: consecutive AMP-skipped steps tolerated before a warning.

    Raises:
        ValueError: unknown ``action`` or ``max_amp_skips < 1``.

    Example::

        trainer = Trainer(callbacks=[NanGuard(action="stop")])
        trainer.fit(model, datamodule=dm)
        print(trainer.callbacks[0].report)  # None when every step was finite
    """

    def __init__(
        self,
        action: Literal["stop", "skip"] = "stop",
        detect_anomaly: bool = True,
        dirpath: str | None = None,
        max_amp_skips: int = 3,
    ) -> None:
        super().__init__()
        if action not in ("stop", "skip"):
            raise ValueError(f"`action` must be 'stop' or 'skip', got {action!r}.")
        if max_amp_skips < 1:
            raise ValueError(f"`max_amp_skips` must be >= 1, got {max_amp_skips}.")
        self.action = action
        self.detect_anomaly = detect_anomaly
        self.dirpath = dirpath
        self.max_amp_skips = max_amp_skips
        self.report: str | None = None
        """The text of the last report, or None."""
        self.report_path: Path | None = None
        self.checkpoint_path: Path | None = None
        self.batch_path: Path | None = None
        self.culprit: str | None = None
        """Name of the first module with a non-finite output in the last replay ("" for the root module)."""
        self.amp_skips = 0
        self._batch: Any = None
        self._batch_idx = -1
        self._bad_loss: Tensor | None = None
        self._loss: Tensor | None = None
        self._buffers: list[Tensor] = []
        self._live: list[Tensor] = []

    # ------------------------------------------------------------------ hooks
    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx
        # Running statistics change in the forward pass: keep this step's starting values so that a non-finite
        # forward does not leak into the checkpoint or, with action="skip", into later steps. Other buffers do
        # not change in a forward pass and are not copied.
        live = running_stats(pl_module)
        with torch.no_grad():
            if len(live) != len(self._live) or any(a is not b for a, b in zip(live, self._live, strict=False)):
                self._buffers, self._live = [b.detach().clone() for b in live], live  # first step, or layers (un)frozen
            elif live:
                torch._foreach_copy_(self._buffers, live)  # one fused copy into the tensors of the last step

    @override
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        bad = ~loss.detach().isfinite().all()
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        self._loss = loss.detach()

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        grad_norm = global_grad_norm(pl_module).to(pl_module.device)
        bad_loss = self._bad_loss if self._bad_loss is not None else torch.zeros((), dtype=torch.bool, device=pl_module.device)
        self._bad_loss = None
        flags = torch.stack([bad_loss.to(grad_norm.device), ~grad_norm.isfinite()]).float()
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
        loss_flag, grad_flag = (v > 0 for v in flags.tolist())  # the one host read of a clean step
        if not (loss_flag or grad_flag):
            self.amp_skips = 0
            return
        if grad_flag and not loss_flag and getattr(trainer.precision_plugin, "scaler", None) is not None:
            self._amp_skip(trainer)
            return
        self._handle(trainer, pl_module, grad_norm)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batch, self._buffers, self._live = None, [], []  # keep nothing alive after training

    # ------------------------------------------------------------------ non-finite handling
    def _amp_skip(self, trainer: Trainer) -> None:
        self.amp_skips += 1
        if self.amp_skips == self.max_amp_skips:
            rank_zero_warn(
                f"NanGuard: {self.amp_skips} optimizer steps in a row were skipped by the AMP gradient scaler "
                f"(infinite gradients at step {trainer.global_step}). The loss scale keeps shrinking: try "
                "`precision: bf16-mixed`, a lower learning rate or gradient clipping."
            )

    def _handle(self, trainer: Trainer, pl_module: LightningModule, grad_norm: Tensor) -> None:
        step = trainer.global_step
        folder = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "nan_guard")
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for buffer, saved in zip(self._live, self._buffers, strict=False):
                buffer.copy_(saved)
        self.batch_path = folder / f"nan_batch_step{step}{suffix}.pt"
        torch.save(_to_cpu(self._batch), self.batch_path)
        self.checkpoint_path = folder / f"nan_step{step}.ckpt"
        trainer.save_checkpoint(self.checkpoint_path)  # the weights before this step; a collective under DDP
        replay = self._replay(pl_module, self._batch)
        pl_module.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
        self.report = self._report(trainer, replay, grad_norm)
        self.report_path = folder / f"nan_report_step{step}{suffix}.txt"
        self.report_path.write_text(self.report)
        log.error(self.report)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_text("zz-nan_guard/report", "    " + self.report.replace("\n", "\n    "), step)
        if self.action == "stop":
            trainer.should_stop = True

    def _replay(self, pl_module: LightningModule, batch: Any) -> dict[str, Any]:
        """Run the batch again with a forward hook on every module; hooks, buffers and modes are restored."""
        found: dict[str, Any] = {}

        def hook(name: str, module: nn.Module, args: tuple, output: Any) -> None:
            if "module" not in found and not _is_finite(output):
                found.update(module=name, type=type(module).__name__)
                found.update(inputs=[describe(t) for t in _tensors(args)], output=[describe(t) for t in _tensors(output)])
                found["weights"] = {n: describe(p) for n, p in module.named_parameters(recurse=False) if not bool(p.isfinite().all())}

        buffers = {name: b.detach().clone() for name, b in pl_module.named_buffers()}
        modes = {m: m.training for m in pl_module.modules()}
        handles = [
            m.register_forward_hook(lambda mod, args, out, _n=name: hook(_n, mod, args, out)) for name, m in pl_module.named_modules()
        ]
        result: dict[str, Any] = {"found": found}
        try:
            pl_module.train()
            with torch.inference_mode(False), torch.enable_grad():
                images = batch[keys.IMAGE].clone()
                result["input_finite"] = _is_finite(images)
                result.update(self._forward_backward(pl_module, images, batch))
        except Exception as err:  # noqa: BLE001 - a report beats a second crash
            result["replay_error"] = f"{type(err).__name__}: {err}"
        finally:
            for handle in handles:
                handle.remove()
            with torch.no_grad():
                for name, b in pl_module.named_buffers():
                    b.copy_(buffers[name])
            for module, training in modes.items():
                module.training = training  # the flag alone: `train()` would recurse into children already restored
        self.culprit = found.get("module")
        return result

    def _forward_backward(self, pl_module: LightningModule, images: Tensor, batch: Any) -> dict[str, Any]:
        result: dict[str, Any] = {}
        anomaly = torch.autograd.detect_anomaly(check_nan=True) if self.detect_anomaly else nullcontext()
        with anomaly:
            outputs = pl_module(images)
            if not (hasattr(pl_module, "compute_loss") and hasattr(pl_module, "prepare_target")):
                return result
            # compute_loss: present (checked above)
            loss = pl_module.compute_loss(outputs, pl_module.prepare_target(batch[keys.TARGET])).mean()  # type: ignore[operator]
            result["loss"] = float(loss.detach())
            if self.detect_anomaly and loss.requires_grad:
                params = [p for p in pl_module.parameters() if p.requires_grad]
                with warnings.catch_warnings(record=True) as caught:  # the forward traceback comes as a warning
                    warnings.simplefilter("always")
                    try:
                        torch.autograd.grad(loss, params, allow_unused=True)
                    except RuntimeError as err:
                        result["backward_error"] = str(err).strip().splitlines()[0]
                        result["backward_origin"] = _forward_origin(caught)
        return result

    def _report(self, trainer: Trainer, replay: dict[str, Any], grad_norm: Tensor) -> str:
        batch = self._batch
        indices = batch[keys.INDEX].tolist() if isinstance(batch, dict) and keys.INDEX in batch else "unknown"
        loss = float(self._loss) if self._loss is not None else float("nan")
        lines = [
            f"NanGuard: non-finite value at epoch {trainer.current_epoch}, global step {trainer.global_step}, "
            f"batch {self._batch_idx} of the epoch (rank {trainer.global_rank}).",
            f"Loss {loss:.6g}, global gradient norm {float(grad_norm):.6g}.",
            f"Batch dataset indices: {indices}",
            f"Batch saved to {self.batch_path}; weights before this step saved to {self.checkpoint_path}.",
        ]
        found = replay["found"]
        if found:
            lines.append(f"First module with a non-finite output: '{found['module']}' ({found['type']}).")
            lines += [f"  input {i}: {text}" for i, text in enumerate(found["inputs"])]
            lines += [f"  output {i}: {text}" for i, text in enumerate(found["output"])]
            lines += [f"  weight {n}: {text}" for n, text in found["weights"].items()]
        elif "replay_error" not in replay:
            lines.append(f"The replayed forward pass was finite (replayed loss {replay.get('loss', float('nan')):.6g}).")
        if "backward_error" in replay:
            lines.append(f"Backward pass under detect_anomaly: {replay['backward_error']}")
            if replay.get("backward_origin"):
                lines.append(f"  created in the forward pass at: {replay['backward_origin']}")
        if "replay_error" in replay:
            lines.append(f"The replay itself failed: {replay['replay_error']}")
        lines.append("What to try: " + self._advice(replay))
        outcome = "training stopped" if self.action == "stop" else "batch skipped, training goes on"
        lines.append(f"Action: {outcome}; this step's gradients were dropped.")
        return "\n".join(lines)

    @staticmethod
    def _advice(replay: dict[str, Any]) -> str:
        found = replay["found"]
        if replay.get("input_finite") is False:
            return "the input images themselves are not finite: check the data and the transforms of the saved batch indices."
        if found and found["weights"]:
            return "the weights of that module are already non-finite: resume from an earlier checkpoint with a lower learning rate."
        if found:
            return (
                f"'{found['module']}' turned finite inputs into NaN/Inf: lower the learning rate, set `trainer.gradient_clip_val`, "
                "use `precision: bf16-mixed` instead of 16-mixed, or guard that operation (eps in divisions, logs and square roots)."
            )
        if "backward_error" in replay:
            return (
                "the forward pass is finite but the backward pass is not: look at the named backward function (divisions, sqrt at 0, log)."
            )
        return (
            "the forward pass is finite when replayed: "
            "check the loss inputs (targets out of range, log of 0) and the randomness of the step."
        )


def _forward_origin(caught: list[warnings.WarningMessage]) -> str:
    """The innermost frame of the forward call that ``detect_anomaly`` reports with a failing backward."""
    for item in caught:
        text = str(item.message)
        if "Traceback of forward call" in text:
            frames = [line.strip() for line in text.splitlines() if line.strip().startswith("File ")]
            return frames[-1] if frames else ""
    return ""


def _to_cpu(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return batch.detach().cpu()
    if isinstance(batch, dict):
        return {k: _to_cpu(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_cpu(v) for v in batch)
    return batch
