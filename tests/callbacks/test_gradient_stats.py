"""GradientStats: logged per-layer statistics equal values computed directly from ``.grad``."""

from __future__ import annotations

import pytest
import torch

from lit_finetune.callbacks.gradient_stats import GradientStats


def _layers(names):
    layers = {}
    for name in names:
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    return layers


def _logged(events, tag, cache=None):
    if cache is None:
        cache = {}
    if (id(events), tag) not in cache:
        cache[id(events), tag] = {e.step: e.value for e in events.Scalars(tag)}
    return cache[id(events), tag]


def test_per_layer_stats_equal_direct_computation(full_run):
    steps = full_run.callbacks["recorder"].steps
    assert sorted(steps) == [0, 1, 2]
    events = full_run.events
    for step, record in steps.items():
        for layer, names in _layers(record["grads"]).items():
            grad = torch.cat([record["grads"][n].flatten() for n in names]).double()
            before = torch.cat([record["before"][n].flatten() for n in names]).double()
            after = torch.cat([record["after"][n].flatten() for n in names]).double()
            expected = {
                f"zz-grad/{layer}/min": grad.min(),
                f"zz-grad/{layer}/max": grad.max(),
                f"zz-grad/{layer}/mean": grad.mean(),
                f"zz-grad/{layer}/norm": grad.norm(),
                f"zz-weight/{layer}/norm": before.norm(),
                f"zz-update_ratio/{layer}": (after - before).norm() / before.norm(),
            }
            scale = grad.abs().max().item()
            for tag, value in expected.items():
                got = _logged(events, tag)[step]
                atol = 1e-5 * scale if "/mean" in tag else 0.0
                assert got == pytest.approx(value.item(), rel=1e-4, abs=atol), (step, tag)
        # The global norm is the one Lightning's grad_norm reports.
        assert _logged(events, "zz-grad/global_norm")[step] == pytest.approx(record["grad_norm"], rel=1e-5)


def test_histograms_on_their_own_interval(full_run):
    histograms = full_run.events.Histograms("zz-grad_hist/head.layers.fc")
    assert [h.step for h in histograms] == [0, 2]
    record = full_run.callbacks["recorder"].steps[2]
    grads = torch.cat([record["grads"]["head.layers.fc.weight"].flatten(), record["grads"]["head.layers.fc.bias"].flatten()])
    hist = histograms[1].histogram_value
    assert hist.num == grads.numel()
    assert hist.min == pytest.approx(grads.min().item(), rel=1e-5)
    assert hist.max == pytest.approx(grads.max().item(), rel=1e-5)


def test_alerts_vanishing_and_exploding():
    cb = GradientStats(vanishing_threshold=1e-6, exploding_factor=10, window=5)
    assert cb._check("a", 1e-9) == "vanishing"
    for norm in (1.0, 1.2, 0.9):
        assert cb._check("b", norm) == ""
    assert cb._check("b", 9.5) == ""  # running median 1.0: below 10x
    assert cb._check("b", 12.1) == "exploding"
    assert cb._check("b", float("inf")) == "exploding"


def test_validation():
    with pytest.raises(ValueError, match="every_n_steps.*got 0"):
        GradientStats(every_n_steps=0)
    with pytest.raises(ValueError, match="include.*not a valid regular expression"):
        GradientStats(include="(")
