"""Under DDP the bad-image scan runs on rank 0 only; the other processes use its broadcast result."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from reliability_helpers import write_images

from lit_finetune.data import check
from lit_finetune.data.check import BadImage
from lit_finetune.data.datamodule import ImageFolderDataModule


class FakeStrategy:
    """Records the broadcast; ``received`` is what rank 0 sent (the value returned on the other ranks)."""

    def __init__(self, received=None):
        self.received, self.sent = received, []

    def broadcast(self, obj, src=0):
        assert src == 0
        self.sent.append(obj)
        return obj if self.received is None else self.received


def _datamodule(tmp_path, empty_file=False):
    root = tmp_path / "data"
    write_images(root / "train", per_class=2)
    write_images(root / "val", per_class=1, seed=1)
    if empty_file:
        (root / "train" / "a" / "zero.png").write_bytes(b"")
    return ImageFolderDataModule(str(root), num_workers=0, image_size=32, resize_size=32, backbone="resnet18")


def test_rank_one_does_not_decode_and_drops_what_rank_zero_found(tmp_path, monkeypatch):
    dm = _datamodule(tmp_path)
    first = dm.train_samples[0][0]
    strategy = FakeStrategy(received=[BadImage(first, "OSError: truncated")])
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, strategy=strategy)

    def must_not_scan(paths, num_threads=None):
        raise AssertionError("rank 1 decoded the data set")

    monkeypatch.setattr(check, "find_bad_images", must_not_scan)
    with pytest.warns(UserWarning, match="1 of 9 images cannot be read"):
        dm.setup("fit")
    assert strategy.sent == [None]
    assert first not in {p for p, _ in dm.train_set.samples} and len(dm.train_set) == len(dm.train_samples) == 5


def test_rank_zero_scans_once_and_broadcasts(tmp_path, monkeypatch):
    dm = _datamodule(tmp_path, empty_file=True)
    strategy = FakeStrategy()
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0, strategy=strategy)
    calls = []
    real = check.find_bad_images
    monkeypatch.setattr(check, "find_bad_images", lambda paths, num_threads=None: calls.append(len(paths)) or real(paths))
    with pytest.warns(UserWarning, match="1 of 10 images cannot be read"):
        dm.setup("fit")
    assert calls == [10]
    assert [b.path.rsplit("/", 1)[1] for b in strategy.sent[0]] == ["zero.png"]
