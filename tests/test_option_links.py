"""Options that the data module and the model both declare are linked by the command line, and the filled-in side
cannot be set (exit 2, naming the option to set): none is accepted and dropped."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from lit_finetune import FinetuneClassifier, ImageFolderDataModule, SegmentationDataModule, SegmentationModule
from lit_finetune.cli import main
from lit_finetune.cli.option_links import option_links, refuse_linked_options

PAIRS = {
    "classification": (FinetuneClassifier, ImageFolderDataModule, False),
    "segmentation": (SegmentationModule, SegmentationDataModule, True),
}
RENAMED = {"mean": "image_mean", "std": "image_std"}
"""Data options that the model declares under another name."""


def init_options(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


def shared_options(model_cls: type, data_cls: type) -> set[tuple[str, str]]:
    """``(model.<name>, data.<name>)`` of every option both classes declare (renamed ones included)."""
    model, data = init_options(model_cls), init_options(data_cls)
    shared = {(f"model.{name}", f"data.{name}") for name in model & data}
    return shared | {(f"model.{RENAMED[name]}", f"data.{name}") for name in data if RENAMED.get(name) in model}


@pytest.mark.parametrize("pair", PAIRS)
def test_every_option_both_classes_declare_is_linked(pair: str) -> None:
    model_cls, data_cls, subclass_mode = PAIRS[pair]
    links = {frozenset((link.source, link.target)) for link in option_links(subclass_mode)}
    shared = shared_options(model_cls, data_cls)
    assert len(shared) >= (7 if subclass_mode else 5)  # task, backbone, weights, mean, std (+ ignore_index, palette, classes)
    unlinked = sorted(f"{m} / {d}" for m, d in shared if frozenset((m, d)) not in links)
    assert not unlinked, f"declared by both classes but neither linked nor refused: {unlinked}"


def _config(pair: str, section: str, name: str, tmp_path: Path, file: str = "config.yaml") -> Path:
    model_cls, data_cls, subclass_mode = PAIRS[pair]
    model: dict = {}
    data: dict = {"root": str(tmp_path)}
    (model if section == "model" else data)[name] = 1
    if subclass_mode:
        model = {"class_path": f"lit_finetune.{model_cls.__name__}", "init_args": model}
        data = {"class_path": f"lit_finetune.{data_cls.__name__}", "init_args": data}
    path = tmp_path / file
    path.write_text(yaml.safe_dump({"model": model, "data": data}))
    return path


class Refused(Exception):
    pass


class RecordingParser:
    """Stands in for the CLI's parser: its ``error`` is what the refusal calls."""

    def error(self, message: str) -> None:
        raise Refused(message)


@pytest.mark.parametrize("pair", PAIRS)
def test_setting_the_filled_in_side_of_any_link_is_refused_naming_the_option_to_set(pair: str, tmp_path: Path) -> None:
    subclass = PAIRS[pair][2]
    for link in option_links(subclass):
        section, _, name = link.target.partition(".")
        in_config = _config(pair, section, name, tmp_path)
        init_args = ".init_args" if subclass else ""
        for argv in (["fit", "--config", str(in_config)], ["fit", f"--{section}{init_args}.{name}", "1"], ["fit", f"--{link.target}=1"]):
            with pytest.raises(Refused, match=f"'{link.target}' is filled in from '{link.source}'"):
                refuse_linked_options(RecordingParser(), argv, option_links(subclass))
    refuse_linked_options(
        RecordingParser(), ["fit", "--config", str(_config(pair, "data", "batch_size", tmp_path))], option_links(subclass)
    )


@pytest.mark.parametrize(
    ("pair", "target", "source"), [("segmentation", "data.task", "model.task"), ("classification", "model.num_classes", "data.num_classes")]
)
def test_the_command_line_exits_2_with_one_short_message(
    pair: str, target: str, source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    section, _, name = target.partition(".")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(_config(pair, section, name, tmp_path))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.splitlines()) <= 4
    assert f"'{target}' is filled in from '{source}'" in err and f"set '{source}' instead" in err and "config.yaml:" in err
