"""Per-layer gradient statistics, weight norms and update-to-weight ratios.

Computed in ``on_before_optimizer_step`` (after AMP unscaling, before gradient clipping) with
foreach ops on the device, on logging steps only, and read back to the host once per logging step.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict, deque
from typing import Any, cast

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from lit_finetune.callbacks._tensorboard import find_tensorboard, log_scalars, tensorboard_writer

STATS = ("min", "mean", "max", "norm")


class GradientStats(Callback):
    """Log, per layer (module owning parameters), gradient min/mean/max/L2 norm, weight norm and update ratio.

    Scalars (every ``every_n_steps`` optimizer steps): ``zz-grad/<layer>/{min,mean,max,norm}``,
    ``zz-weight/<layer>/norm``, ``zz-update_ratio/<layer>`` (``||w_after - w_before|| / ||w_before||`` of that
    step) and ``zz-grad/global_norm`` (the norm of all gradients as one vector, the one gradient clipping
    uses). Gradient histograms go to TensorBoard as ``zz-grad_hist/<layer>`` every
    ``histogram_every_n_steps`` steps. A layer whose gradient norm falls below ``vanishing_threshold``
    or rises above ``exploding_factor`` times the running median of its last ``window`` logged norms is
    reported with a warning (once per layer and kind) and counted in ``zz-grad/num_vanishing_layers`` /
    ``zz-grad/num_exploding_layers``. Runs on rank zero only: gradients are identical on all ranks after
    the DDP all-reduce.

    Args:
        every_n_steps: log every n optimizer steps; None: the Trainer's ``log_every_n_steps``.
        histogram_every_n_steps: gradient histograms every n steps; None: 10 times the scalar interval;
            0: never.
        include: regular expression; only layers whose name matches it (``re.search``) are logged.
            None: all layers. The global norm always covers all parameters.
        vanishing_threshold: a layer gradient norm below this is reported as vanishing.
        exploding_factor: a layer gradient norm above this multiple of its running median is reported
            as exploding.
        window: number of logged steps in the running median.

    Raises:
        ValueError: an interval, threshold or window out of range, or an invalid ``include`` pattern.

    Example::

        trainer = Trainer(log_every_n_steps=20, callbacks=[GradientStats(include=r"^backbone\\.layer4|^head")])
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        histogram_every_n_steps: int | None = None,
        include: str | None = None,
        vanishing_threshold: float = 1e-8,
        exploding_factor: float = 10.0,
        window: int = 20,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be >= 1 or None (the Trainer's log_every_n_steps), got {every_n_steps}.")
        if histogram_every_n_steps is not None and histogram_every_n_steps < 0:
            raise ValueError(f"`histogram_every_n_steps` must be >= 0 (0 turns histograms off), got {histogram_every_n_steps}.")
        if vanishing_threshold < 0:
            raise ValueError(f"`vanishing_threshold` must be >= 0, got {vanishing_threshold}.")
        if exploding_factor <= 1:
            raise ValueError(f"`exploding_factor` must be > 1, got {exploding_factor}.")
        if window < 3:
            raise ValueError(f"`window` must be >= 3 to make a median, got {window}.")
        try:
            self._pattern = re.compile(include) if include is not None else None
        except re.error as err:
            raise ValueError(f"`include` is not a valid regular expression: {include!r} ({err}).") from err
        self.every_n_steps = every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.include = include
        self.vanishing_threshold = vanishing_threshold
        self.exploding_factor = exploding_factor
        self.window = window
        self.alerts: list[tuple[int, str, str, float]] = []
        """``(step, layer, "vanishing" | "exploding", norm)`` for every alert raised."""
        self.last_logged: dict[str, float] = {}
        """The scalars written at the last logging step."""
        self._history: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=self.window))
        self._warned: set[tuple[str, str]] = set()
        self._pending: dict[str, Any] | None = None

    # ------------------------------------------------------------------ intervals
    def _interval(self, trainer: Trainer) -> int:
        return self.every_n_steps or trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by the Trainer's logger connector

    def _histogram_interval(self, trainer: Trainer) -> int:
        if self.histogram_every_n_steps is None:
            return 10 * self._interval(trainer)
        return self.histogram_every_n_steps

    # ------------------------------------------------------------------ hooks
    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        step = trainer.global_step
        if trainer.global_rank != 0 or not trainer.loggers or step % self._interval(trainer) != 0:
            return
        layers = layer_parameters(pl_module)
        if not layers:
            return
        grads = [cast(Tensor, p.grad) for _, params in layers for p in params]  # layer_parameters keeps those with a gradient
        stats = gradient_stats(layers)
        weights = [p.detach() for _, params in layers for p in params]
        self._pending = {
            "step": step,
            "layers": layers,
            "stats": stats,
            "global_norm": global_grad_norm(pl_module),
            "before": torch._foreach_mul(weights, 1.0),  # a copy, to measure this step's update
        }
        hist = self._histogram_interval(trainer)
        if hist and step % hist == 0 and find_tensorboard(trainer) is not None:
            self._log_histograms(trainer, step, layers, grads)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        with torch.no_grad():
            ratio = update_ratios(pending["layers"], pending["before"])
            table = torch.cat([pending["stats"], ratio.unsqueeze(1)], dim=1)
            values = torch.cat([table.flatten(), pending["global_norm"].reshape(1).float()]).cpu().tolist()  # the one host transfer
        self._log(trainer, pending["step"], [name for name, _ in pending["layers"]], values)

    # ------------------------------------------------------------------ helpers
    def _selected(self, name: str) -> bool:
        return self._pattern is None or self._pattern.search(name) is not None

    def _log(self, trainer: Trainer, step: int, names: list[str], values: list[float]) -> None:
        width = len(STATS) + 2
        metrics: dict[str, float] = {"zz-grad/global_norm": values[-1]}
        vanishing = exploding = 0
        for i, name in enumerate(names):
            row = values[i * width : (i + 1) * width]
            norm = row[STATS.index("norm")]
            kind = self._check(name, norm)
            vanishing += kind == "vanishing"
            exploding += kind == "exploding"
            if kind:
                self.alerts.append((step, name, kind, norm))
                self._warn(step, name, kind, norm)
            if not self._selected(name):
                continue
            metrics.update({f"zz-grad/{name}/{stat}": row[j] for j, stat in enumerate(STATS)})
            metrics[f"zz-weight/{name}/norm"] = row[len(STATS)]
            metrics[f"zz-update_ratio/{name}"] = row[len(STATS) + 1]
        metrics["zz-grad/num_vanishing_layers"] = float(vanishing)
        metrics["zz-grad/num_exploding_layers"] = float(exploding)
        self.last_logged = metrics
        log_scalars(trainer, metrics, step)

    def _check(self, name: str, norm: float) -> str:
        history = self._history[name]
        kind = ""
        if math.isfinite(norm) and norm < self.vanishing_threshold:
            kind = "vanishing"
        elif len(history) >= 3:
            median = sorted(history)[len(history) // 2]
            if not math.isfinite(norm) or norm > self.exploding_factor * median:
                kind = "exploding"
        if math.isfinite(norm):
            history.append(norm)
        return kind

    def _warn(self, step: int, name: str, kind: str, norm: float) -> None:
        if (name, kind) in self._warned:
            return
        self._warned.add((name, kind))
        if kind == "vanishing":
            hint = f"below {self.vanishing_threshold:g}: is the layer frozen by mistake, or its input always zero?"
        else:
            hint = f"above {self.exploding_factor:g}x its running median: lower the learning rate or set `trainer.gradient_clip_val`."
        rank_zero_warn(f"GradientStats: step {step}, layer '{name}': gradient norm {norm:.3g} is {kind}, {hint}")

    def _log_histograms(self, trainer: Trainer, step: int, layers: list[tuple[str, list[nn.Parameter]]], grads: list[Tensor]) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads]).cpu()  # one transfer for all layers
        offset = 0
        for name, params in layers:
            size = sum(p.numel() for p in params)
            if self._selected(name):
                writer.add_histogram(f"zz-grad_hist/{name}", flat[offset : offset + size], step)
            offset += size


def layer_parameters(module: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Parameters that have a gradient, grouped by the module that owns them, in definition order."""
    layers: dict[str, list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if param.grad is not None:
            layers.setdefault(name.rpartition(".")[0] or name, []).append(param)
    return list(layers.items())


@torch.no_grad()
def gradient_stats(layers: list[tuple[str, list[nn.Parameter]]]) -> Tensor:
    """``(L, 5)`` float32 table on the device: gradient min, mean, max, L2 norm and weight L2 norm per layer."""
    params = [p for _, ps in layers for p in ps]
    grads = [cast(Tensor, p.grad) for p in params]  # layer_parameters keeps those with a gradient
    owner = torch.tensor([i for i, (_, ps) in enumerate(layers) for _ in ps], device=grads[0].device)
    numel = torch.tensor([p.numel() for p in params], device=grads[0].device, dtype=torch.float32)
    n = len(layers)
    grad_sq = torch.stack(torch._foreach_norm(grads)).float().square()
    weight_sq = torch.stack(torch._foreach_norm([p.detach() for p in params])).float().square()
    maxes = torch.stack(torch._foreach_max(grads)).float()
    mins = -torch.stack(torch._foreach_max(torch._foreach_neg(grads))).float()
    sums = torch.stack([g.sum() for g in grads]).float()
    zeros = torch.zeros(n, device=owner.device)
    layer_min = torch.full((n,), float("inf"), device=owner.device).scatter_reduce(0, owner, mins, "amin")
    layer_max = torch.full((n,), -float("inf"), device=owner.device).scatter_reduce(0, owner, maxes, "amax")
    layer_mean = zeros.index_add(0, owner, sums) / zeros.index_add(0, owner, numel)
    grad_norm_ = zeros.index_add(0, owner, grad_sq).sqrt()
    weight_norm = zeros.index_add(0, owner, weight_sq).sqrt()
    return torch.stack([layer_min, layer_mean, layer_max, grad_norm_, weight_norm], dim=1)


@torch.no_grad()
def update_ratios(layers: list[tuple[str, list[nn.Parameter]]], before: list[Tensor]) -> Tensor:
    """``||w_after - w_before|| / ||w_before||`` per layer, on the device."""
    params = [p.detach() for _, ps in layers for p in ps]
    owner = torch.tensor([i for i, (_, ps) in enumerate(layers) for _ in ps], device=params[0].device)
    delta_sq = torch.stack(torch._foreach_norm(torch._foreach_sub(params, before))).float().square()
    before_sq = torch.stack(torch._foreach_norm(before)).float().square()
    zeros = torch.zeros(len(layers), device=owner.device)
    return (zeros.index_add(0, owner, delta_sq) / zeros.index_add(0, owner, before_sq).clamp_min(1e-30)).sqrt()


@torch.no_grad()
def global_grad_norm(module: nn.Module) -> Tensor:
    """L2 norm of all gradients of ``module`` as one vector (a 0-d tensor on the device; NaN/Inf propagate)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
