"""Point 6: configuration mistakes stop the run before anything is built, with a message naming the key."""

from __future__ import annotations

import pytest
import yaml

from lit_finetune.cli import main

SCHEDULER = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"gamma": 0.5}}
CASES = {
    "unknown key": ({"model": {"head_dropuot": 0.2}}, ["does not accept option 'model.head_dropuot'"]),
    "wrong type": ({"data": {"batch_size": "many"}}, ['Parser key "data.batch_size"', "Expected a <class 'int'>", "Got value: many"]),
    "missing required value": ({"data": {"root": None}}, ["data.root"]),
    "scheduler without its argument": ({"model": {"lr_scheduler": SCHEDULER}}, ['Parser key "model.lr_scheduler"', "required: step_size"]),
    "scheduler given the optimizer": (
        {
            "model": {
                "lr_scheduler": {
                    "class_path": "torch.optim.lr_scheduler.StepLR",
                    "init_args": {"step_size": 2, "optimizer": "torch.optim.SGD"},
                }
            }
        },
        ['Parser key "model.lr_scheduler"', "Option 'optimizer' is not accepted"],
    ),
}


def _config(tmp_path, dataset, extra: dict) -> str:
    config = {"model": {"backbone": "resnet18"}, "data": {"root": str(dataset), "image_size": 32}}
    for section, values in extra.items():
        config[section].update(values)
    config["data"] = {k: v for k, v in config["data"].items() if v is not None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_config_error_names_the_key(tmp_path, dataset, capsys, case):
    extra, expected = CASES[case]
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", _config(tmp_path, dataset, extra), "--trainer.logger", "false"])
    assert done.value.code != 0
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err  # one parser message, no stack trace
    for text in expected:
        assert text in err, err


def test_print_config_shows_the_resolved_configuration(tmp_path, dataset, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", _config(tmp_path, dataset, {"data": {"batch_size": 3}}), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["batch_size"] == 3 and printed["data"]["root"] == str(dataset)  # the user's values
    assert printed["data"]["bad_images"] == "skip" and printed["trainer"]["max_epochs"] == 10  # defaults
    assert printed["checkpoint"]["save_last"] is True and printed["interrupt_checkpoint"]["filename"] == "last-interrupted"
    assert printed["trainer"]["plugins"] == [{"class_path": "lit_finetune.models.weights.AtomicCheckpointIO"}]
    assert printed["model"]["optimizer"]["class_path"] == "torch.optim.AdamW"
