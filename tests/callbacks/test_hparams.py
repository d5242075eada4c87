"""HParamsSummary: the HPARAMS tab gets the hyperparameters and the final metrics."""

from __future__ import annotations

import pytest
from tensorboard.plugins.hparams import plugin_data_pb2

from lit_finetune.callbacks.hparams import HParamsSummary, flatten


def _plugin(events, tag):
    content = events.PluginTagToContent("hparams")[tag]
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def test_hparams_and_final_metrics(full_run):
    start = _plugin(full_run.events, "_hparams_/session_start_info").session_start_info
    assert start.hparams["backbone"].string_value == "resnet18"
    assert start.hparams["num_classes"].number_value == 3
    assert start.hparams["data/batch_size"].number_value == 8
    experiment = _plugin(full_run.events, "_hparams_/experiment").experiment
    names = {m.name.tag for m in experiment.metric_infos}
    assert {"zz-final/val/acc", "zz-final/val/loss"} <= names
    (final,) = full_run.events.Scalars("zz-final/val/acc")
    assert final.value == pytest.approx(full_run.trainer.callback_metrics["val/acc"].item())
    assert final.step == full_run.trainer.global_step
    assert len(full_run.events.Scalars("val/acc")) == 1  # the metric's own curve got no extra point


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a/b": 1, "a/c": "[1, 2]", "d": "None"}
    with pytest.raises(ValueError, match="list of metric names"):
        HParamsSummary(metrics="val/acc")
