"""``FolderDataModule``: what the data modules share: loader options, DDP evaluation sampling, set-up.

The concrete modules (:class:`~lit_finetune.data.datamodule.ClassificationDataModule`,
:class:`~lit_finetune.data.segmentation.SegmentationDataModule`) keep their full typed ``__init__`` (LightningCLI
reads the options from it) and fill in the hooks below: which samples each split holds, how a dataset is
built from them, how batches are collated, what is checked once before the datasets are built.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from lit_finetune.data.folder import list_images

MAX_AUTO_WORKERS = 8
"""``num_workers: auto`` uses at most this many loader processes (per training process)."""


def auto_num_workers(processes: int = 1) -> int:
    """Loader workers for ``num_workers: auto``: the CPUs this process may run on, shared by ``processes``
    training processes on the machine, at most :data:`MAX_AUTO_WORKERS`, at least 1.

    The CPUs are those of ``os.sched_getaffinity`` (what a container or ``taskset`` allows), else ``os.cpu_count()``.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, processes)))


def check_val_fraction(val_fraction: float) -> None:
    """Raise ``ValueError`` unless ``0 < val_fraction < 1``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}.")


def loader_workers(datamodule: Any) -> int:
    """The data module's ``num_workers``; ``auto`` shares the CPUs among the training processes of this machine."""
    trainer = datamodule.trainer
    if datamodule.hparams.num_workers == "auto" and trainer is not None and trainer.world_size > 1:
        return auto_num_workers(max(1, trainer.world_size // max(1, trainer.num_nodes)))
    return datamodule.num_workers


class FolderDataModule(LightningDataModule, ABC):
    """Train/val/test/predict dataloaders over the splits a subclass lists from a data folder.

    Not used on its own: a subclass sets ``root``, ``class_names``, ``train_transform``, ``eval_transform``,
    calls :meth:`_set_loader_options` in its ``__init__``, and implements :meth:`_splits`, :meth:`_dataset` and :meth:`_predict_items`.

    Under DDP, validation, test and predict give each sample to exactly one process
    (``UnrepeatedDistributedSampler``); ``num_workers: auto`` (where a subclass allows it) shares the CPUs of
    the machine among its training processes.

    Example::

        class MyDataModule(FolderDataModule):
            TEST_LAYOUT = "test/<images>"

            def _splits(self):
                return self.train_items, self.val_items, self.test_items

            def _dataset(self, items, transform):
                return MyDataset(items, transform)

            def _predict_items(self, images):
                return [(str(path), None) for path in images]
    """

    hparams: AttributeDict  # what save_hyperparameters stores (the base property says MutableMapping)
    TEST_LAYOUT = "test/<class>/<images>"
    """What the error for ``test`` without a test split asks to add under ``root``."""

    root: Path
    class_names: list[str]
    train_transform: Callable
    eval_transform: Callable

    def _set_loader_options(
        self, batch_size: int, num_workers: int | str, pin_memory: bool | None, persistent_workers: bool, predict_root: str | None
    ) -> None:
        """Resolve the loader options: ``num_workers: auto``, ``pin_memory: None`` (CUDA available),
        ``persistent_workers`` (only with workers), ``predict_root`` as a path (checked by :meth:`_check_predict_root`)."""
        self.batch_size = batch_size
        self.num_workers = auto_num_workers() if num_workers == "auto" else cast(int, num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.predict_root = Path(predict_root) if predict_root else None

    def _check_predict_root(self) -> None:
        """Raise ``FileNotFoundError`` when ``predict_root`` is set but is not a folder."""
        if self.predict_root is not None and not self.predict_root.is_dir():
            raise FileNotFoundError(f"`predict_root` '{self.predict_root}' does not exist.")

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(class_names)``: the class folders or the CSV's classes (classification),
        background included (segmentation; binary: 2)."""
        return len(self.class_names)

    # ------------------------------------------------------------------------------------------ hooks
    @abstractmethod
    def _splits(self) -> tuple[Sequence, Sequence, Sequence]:
        """The train, val and test items (at set-up, after :meth:`_check_files`)."""

    @abstractmethod
    def _dataset(self, items: Sequence, transform: Callable) -> Dataset:
        """A dataset of ``items`` (of :meth:`_splits` or :meth:`_predict_items`) read through ``transform``."""

    @abstractmethod
    def _predict_items(self, images: list[Path]) -> Sequence:
        """Items of the images found under ``predict_root``."""

    def _check_files(self) -> None:
        """Checks done once at set-up, before the datasets are built (may drop items); none by default."""

    def _collate(self, train: bool) -> Callable | None:
        """The ``collate_fn`` of training (``train``) or evaluation batches; None: ``default_collate``."""
        return None

    def _train_sampler(self) -> Sampler | None:
        """The training sampler; None: shuffle."""
        return None

    def _eval_batch_size(self) -> int:
        """Samples per validation, test and predict batch: ``batch_size``."""
        return self.batch_size

    # ------------------------------------------------------------------------------------------ set-up and loaders
    @override
    def setup(self, stage: str) -> None:
        """Check the files (:meth:`_check_files`), then build the train, val, test and predict sets.

        Raises:
            FileNotFoundError: ``stage`` is ``"test"`` and there is no test split.
        """
        self._check_files()
        train, val, test = self._splits()
        self.train_set = self._dataset(train, self.train_transform)
        self.val_set = self._dataset(val, self.eval_transform)
        self.test_set = self._dataset(test, self.eval_transform)
        if self.predict_root is not None:
            self.predict_set = self._dataset(self._predict_items(list_images(self.predict_root)), self.eval_transform)
        else:
            self.predict_set = self.val_set
        if stage == "test" and not test:
            raise FileNotFoundError(f"No test/ folder under '{self.root}': add {self.TEST_LAYOUT} to run `test`.")

    def _eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, a sampler that gives each sample to exactly one process (no padding).

        Lightning's default ``DistributedSampler`` pads the last batches with repeated samples so that every
        process has as many; repeated samples would bias validation and test metrics.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        size = len(cast(Sized, dataset))  # map-style datasets have a length
        if size < trainer.world_size:
            raise ValueError(f"{size} evaluation images for {trainer.world_size} processes: every process needs at least one.")
        return UnrepeatedDistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, sampler: Sampler | None = None, collate_fn: Callable | None = None
    ) -> DataLoader:
        """A loader with the module's worker and memory options."""
        workers = loader_workers(self)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=collate_fn,
        )

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """Validation, test or predict batches in order, each sample on one process under DDP."""
        return self._loader(
            dataset, self._eval_batch_size(), shuffle=False, sampler=self._eval_sampler(dataset), collate_fn=self._collate(train=False)
        )

    # The training sampler's state (a balanced sampler's epoch count) travels in checkpoints through the data
    # module's state: Lightning saves the states of stateful dataloaders only, and a plain DataLoader is not one.
    _sampler: Sampler | None = None
    _sampler_state: dict[str, Any] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        """The training sampler's state when it has one (``BalancedSampler``: its seed and epoch count)."""
        state = getattr(self._sampler, "state_dict", None)
        return {"train_sampler": state()} if callable(state) else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the training sampler's state for the next :meth:`train_dataloader` (called after a checkpoint is loaded)."""
        self._sampler_state = state_dict.get("train_sampler")

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, or those of the subclass's training sampler (resumed from a checkpoint's state)."""
        sampler = self._train_sampler()
        if sampler is not None and self._sampler_state is not None and callable(getattr(sampler, "load_state_dict", None)):
            sampler.load_state_dict(self._sampler_state)  # type: ignore[attr-defined]
            self._sampler_state = None
        self._sampler = sampler
        return self._loader(self.train_set, self.batch_size, shuffle=sampler is None, sampler=sampler, collate_fn=self._collate(train=True))

    @override
    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_set)
