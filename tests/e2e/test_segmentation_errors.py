"""Subclass mode (``model.class_path: lit_finetune.SegmentationModule``): a user error raised while the data module
or the model is built prints its short message and exits with status 2, as classification configs do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli

from lit_finetune.cli import find_user_error
from lit_finetune.data.segmentation_demo import write_digit_segmentation
from lit_finetune.modules.segmentation import SegmentationModule


def run_fit(tmp_path: Path, root: Path, backbone: str = "resnet18") -> subprocess.CompletedProcess:
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False},
        "model": {"class_path": "lit_finetune.SegmentationModule", "init_args": {"backbone": backbone}},
        "data": {
            "class_path": "lit_finetune.SegmentationDataModule",
            "init_args": {"root": str(root), "batch_size": 2, "num_workers": 0, "image_size": 32},
        },
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    return run_cli(["fit", "--config", str(path)], cwd=tmp_path, env=env, timeout=180)


def assert_short_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "Does not validate" not in output  # jsonargparse's wrapper is unwrapped
    assert len(output.strip().splitlines()) <= 10, output
    error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    for fragment in fragments:
        assert fragment in error, error


def test_a_missing_data_folder_is_a_short_error(tmp_path):
    result = run_fit(tmp_path, tmp_path / "nowhere")
    assert_short_error(result, f"Data folder '{tmp_path / 'nowhere'}' does not exist", "Check `data.root`")


def test_an_unknown_segmentation_model_is_a_short_error(tmp_path):
    root = write_digit_segmentation(tmp_path / "digits", n_train=2, n_val=1, size=32)
    result = run_fit(tmp_path, root, backbone="resnet_nope")
    assert_short_error(result, "Unknown segmentation model or encoder 'resnet_nope'", "Did you mean: resnet50")


def test_only_checks_of_this_package_are_unwrapped():
    with pytest.raises(ValueError) as raised:
        SegmentationModule(3, "resnet_nope")
    ours = raised.value
    wrapper = ValueError("Does not validate against any of the Union subtypes")
    wrapper.__cause__ = ours
    assert find_user_error(wrapper) is ours and find_user_error(ours) is ours
    foreign = ValueError("Does not validate against any of the Union subtypes")
    foreign.__cause__ = KeyError("a bug, not a user error")
    assert find_user_error(foreign) is None  # a bug keeps its traceback
    try:
        int("not a number")  # a ValueError raised outside this package
    except ValueError as err:
        foreign.__cause__ = err
    assert find_user_error(foreign) is None
