"""LossMetric: differentiable batch loss, exact epoch value over uneven batches and under DDP."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lit_finetune.losses import (
    BCEDiceLoss,
    CEDiceLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LossMetric,
    SoftCrossEntropyLoss,
    TverskyLoss,
)

BATCH_SIZES = (4, 3, 1, 2)  # uneven, last batch smaller


def multiclass_data(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, 6, 6, generator=g) * 2
    target = torch.randint(0, 3, (n, 6, 6), generator=g)
    target[1, :3] = 255  # uneven numbers of valid pixels per sample
    target[2] = 255  # a fully ignored sample
    target[3][target[3] == 2] = 0  # a sample without class 2
    return logits, target


def binary_data(n: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, 6, 6, generator=g) * 2
    target = torch.randint(0, 2, (n, 1, 6, 6), generator=g)
    target[0] = 0  # empty mask
    return logits, target


def configs() -> list[tuple[str, nn.Module]]:
    mc = dict(task="multiclass", num_classes=3, ignore_index=255)
    return [
        ("multiclass", DiceLoss(**mc)),
        ("multiclass", DiceLoss(**mc, aggregation="per_sample", empty_target="zero")),
        ("multiclass", JaccardLoss(**mc, include_background=False, log_loss=True)),
        ("multiclass", TverskyLoss(**mc, alpha=0.3, beta=0.7, aggregation="per_sample")),
        ("multiclass", FocalLoss(**mc, class_weights=[1.0, 2.0, 3.0])),
        ("multiclass", FocalLoss(**mc, aggregation="per_sample")),
        ("multiclass", SoftCrossEntropyLoss(**mc, label_smoothing=0.1)),
        ("multiclass", CEDiceLoss(num_classes=3, ignore_index=255, aggregation="per_sample")),
        ("multiclass", CEDiceLoss(num_classes=3, ignore_index=255)),
        ("multiclass", nn.CrossEntropyLoss()),  # foreign, scalar: weighted by the batch size
        ("binary", DiceLoss(task="binary", smooth=1.0, empty_target="smooth", aggregation="per_sample")),
        ("binary", BCEDiceLoss(task="binary")),
        ("binary", nn.BCEWithLogitsLoss(reduction="none")),  # foreign, per element
    ]


def split(data: tuple[torch.Tensor, torch.Tensor], sizes: tuple[int, ...]):
    start = 0
    for size in sizes:
        yield data[0][start : start + size], data[1][start : start + size]
        start += size


def reference(loss: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of the concatenated data (the mean over samples for foreign losses)."""
    if isinstance(loss, nn.BCEWithLogitsLoss):
        return loss(logits, target.float()).mean()
    return loss(logits, target)


@pytest.mark.parametrize("index", range(len(configs())))
def test_compute_over_uneven_batches_equals_loss_on_concatenated_data(index):
    task, loss = configs()[index]
    logits, target = multiclass_data() if task == "multiclass" else binary_data()
    if isinstance(loss, nn.BCEWithLogitsLoss):
        target = target.float()
    if isinstance(loss, nn.CrossEntropyLoss):
        # A scalar mean is exact only when every sample weighs the same: no ignored pixels.
        target = target.clamp_max(2)
    metric = LossMetric(loss)
    for preds, tgt in split((logits, target), BATCH_SIZES):
        x = preds.clone().requires_grad_(True)
        batch_loss = metric(x, tgt)
        # forward returns the differentiable batch loss.
        assert batch_loss.requires_grad
        torch.testing.assert_close(batch_loss.detach(), reference(loss, preds, tgt))
        batch_loss.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    expected = reference(loss, logits, target)
    torch.testing.assert_close(metric.compute(), expected)
    # The mean of batch means is not the epoch value: the states matter.
    metric.reset()
    for preds, tgt in split((logits, target), BATCH_SIZES):
        metric.update(preds, tgt)  # update() alone gives the same states
    torch.testing.assert_close(metric.compute(), expected)


def test_mean_of_batch_means_would_be_wrong():
    """Guards the test above: with these batches the naive average differs from the exact value."""
    loss = DiceLoss(task="multiclass", num_classes=3, ignore_index=255)
    logits, target = multiclass_data()
    naive = torch.stack([loss(p, t) for p, t in split((logits, target), BATCH_SIZES)]).mean()
    assert abs(naive.item() - loss(logits, target).item()) > 1e-3


def test_sample_loss_after_forward():
    loss = FocalLoss(task="multiclass", ignore_index=255)
    logits, target = multiclass_data()
    metric = LossMetric(loss)
    metric(logits, target)
    expected = FocalLoss(task="multiclass", ignore_index=255, reduction="none")(logits, target)
    torch.testing.assert_close(metric.sample_loss, expected)
    assert metric.sample_loss.shape == (10,) and not metric.sample_loss.requires_grad
    foreign = LossMetric(nn.CrossEntropyLoss())
    foreign(logits[:, :, 0, 0], target[:, 0, 0].clamp_max(2))
    assert foreign.sample_loss is None


def test_reset_and_device_move():
    metric = LossMetric(DiceLoss(task="multiclass", num_classes=3, class_weights=[1.0, 1.0, 2.0]))
    logits, target = multiclass_data()
    target = target.clamp_max(2)
    metric(logits, target)
    metric.reset()
    metric(logits[:3], target[:3])
    torch.testing.assert_close(metric.compute(), metric.loss(logits[:3], target[:3]))
    assert metric.to(torch.float64).loss.class_weights is not None


def test_rejects_a_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        LossMetric(lambda p, t: p.sum())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# DDP: two gloo processes, each with an uneven share of the data
# --------------------------------------------------------------------------------------------
RANK_BATCHES = {0: (3, 2), 1: (4,)}  # 5 and 4 samples


def ddp_configs() -> list[nn.Module]:
    return [
        DiceLoss(task="multiclass", num_classes=3, ignore_index=255),
        DiceLoss(task="multiclass", ignore_index=255),  # states get their shape at the first update
        FocalLoss(task="multiclass", ignore_index=255, aggregation="per_sample"),
        CEDiceLoss(num_classes=3, ignore_index=255),
    ]


def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        logits, target = multiclass_data(n=9)
        start = 0 if rank == 0 else sum(RANK_BATCHES[0])
        mine = (logits[start:], target[start:])
        values = []
        for loss in ddp_configs():
            metric = LossMetric(loss)
            for preds, tgt in split(mine, RANK_BATCHES[rank]):
                metric(preds, tgt)
            values.append(metric.compute())
        torch.save(torch.stack(values), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_give_the_single_process_epoch_value(tmp_path):
    # "fork" shares the parent's imports (a spawned child re-imports torch and the package, which
    # takes tens of seconds on a busy CI machine); both children run the same code either way.
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method=start_method)
    logits, target = multiclass_data(n=9)
    expected = torch.stack([reference(loss, logits, target) for loss in ddp_configs()])
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"), expected)


def test_logged_through_lightning_gives_the_exact_epoch_value():
    """``self.log(name, metric, on_epoch=True)`` in a validation loop over uneven batches."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    logits, target = multiclass_data(n=10)

    class Identity(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))
            self.val_loss = LossMetric(DiceLoss(task="multiclass", num_classes=3, ignore_index=255))

        def validation_step(self, batch, batch_idx):
            preds, tgt = batch
            self.val_loss(preds * self.scale, tgt)
            self.log("val/loss", self.val_loss, on_epoch=True, batch_size=len(tgt))

    loader = DataLoader(TensorDataset(logits, target), batch_size=4)  # batches of 4, 4, 2
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = trainer.validate(Identity(), loader, verbose=False)
    expected = DiceLoss(task="multiclass", ignore_index=255)(logits, target)
    assert result["val/loss"] == pytest.approx(expected.item(), abs=1e-6)
