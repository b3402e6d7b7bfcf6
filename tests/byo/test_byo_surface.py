"""What a user of their own code meets: top-level names, advice for their generator, samples.png, sweeps."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import yaml
from torch import nn

import lightning_curate
from lightning_curate.experiments import sweep
from lightning_curate.experiments.config_keys import load_base_config
from lightning_curate.loop import report
from lightning_curate.loop.report import fidelity_advice
from lightning_curate.models import ExactCategorical, FlowMatching, Generator, MLPVelocity

REPO = Path(__file__).resolve().parents[2]


def _class_paths(node):
    if isinstance(node, dict):
        if isinstance(node.get("class_path"), str):
            yield node["class_path"]
        for value in node.values():
            yield from _class_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _class_paths(value)


def test_every_class_a_shipped_config_names_is_exported_at_the_top_level():
    files = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "overlays").glob("*.yaml"))
    named = {p for f in files for p in _class_paths(yaml.safe_load(f.read_text()))
             if p.startswith("lightning_curate.")}
    assert "lightning_curate.loop.RoundCheckpoint" in named and len(named) > 15
    for path in sorted(named):
        module, name = path.rsplit(".", 1)
        assert name in lightning_curate.__all__, path
        assert getattr(lightning_curate, name) is getattr(importlib.import_module(module), name), path


def _unfaithful_rows():
    rows = [{"round": 0, "reward_mean": 0.0}]
    for t, fidelity in ((1, 0.5), (2, 0.6)):
        rows.append({"round": t, "reward_mean": float(t), "reward_fidelity": fidelity, "learner_gap": -0.005,
                     "learner_gap_stderr": 0.001})
    return rows


class Gauss(Generator):
    def __init__(self):
        super().__init__()
        self.data_shape = (2,)
        self.mean = nn.Parameter(torch.zeros(2))


class ClosedForm(Generator):
    def fit(self, x):
        pass


class OwnHint(Gauss):
    @property
    def fidelity_hint(self):
        return "Raise OwnHint's temperature."


def test_the_fidelity_warning_advises_for_the_generator_it_watches():
    rows = _unfaithful_rows()
    flow = fidelity_advice(rows, 0.85, FlowMatching(MLPVelocity(dim=2, hidden=8, depth=1), data_shape=[2]))
    assert "ema_decay" in flow and "lightning-curate diagnose solver RUN_DIR" in flow
    assert "lightning-curate diagnose budget RUN_DIR" in flow and "diagnose jitter" in flow
    exact = fidelity_advice(rows, 0.85, ExactCategorical(num_atoms=3))
    assert "ExactCategorical is the exact learner" in exact
    for flow_only in ("ema_decay", "solver", "diagnose budget", "diagnose jitter", "optimizer steps"):
        assert flow_only not in exact, flow_only
    em = fidelity_advice(rows, 0.85, ClosedForm())
    assert "ClosedForm is fitted in closed form (fit)" in em and "EM iterations" in em and "ema_decay" not in em
    gradient = fidelity_advice(rows, 0.85, Gauss())
    assert "Train Gauss more per round" in gradient and "update_ema" in gradient
    assert "ema_decay" not in gradient and "solver" not in gradient and "diagnose jitter" in gradient
    own = fidelity_advice(rows, 0.85, OwnHint())
    assert "Raise OwnHint's temperature." in own and "Train OwnHint" not in own
    # Every kind shares the measured part.
    for text in (flow, exact, em, gradient, own):
        assert text.startswith("the generator moved 0.55x as far per round") and "p0_" in text
        assert "ended on average 0.005 (+-0.0007) reward units below the very set" in text


def test_samples_png_names_the_classes_of_the_data_source(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(report.plots, "plot_round_metrics", lambda rows, path: None)
    monkeypatch.setattr(report.plots, "plot_rounds_2d", lambda shown, path, **kw: drawn.update(kw))

    class Data:
        class_names = ["east", "north"]

        @staticmethod
        def label(x):
            return (x[:, 1] > 0).long()

    preview = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    report.plot_run([{"round": 0}], [preview], tmp_path, generator=Gauss(), reward=lambda x: x[:, 0], device="cpu",
                    datamodule=Data())
    assert drawn["label_names"] == ["east", "north"]
    assert drawn["labels"][0].tolist() == [0, 1]


def test_sweep_merges_repeated_config_files_as_fit_does(tmp_path):
    base, overlay = REPO / "configs" / "mog8.yaml", REPO / "configs" / "overlays/moons.yaml"
    _, settings, specs = sweep.configure(["-c", str(base), "-c", str(overlay), "--seeds", "0",
                                          "--out", str(tmp_path / "sweep")])
    merged = load_base_config([str(base), str(overlay)])
    assert merged != load_base_config(str(base))  # the overlay changes something
    assert specs[0].config["data"]["init_args"]["source"] == merged["data"]["init_args"]["source"]
    assert specs[0].config["model"] == merged["model"]
    assert settings["base"] == f"{base} + {overlay}"
    _, _, single = sweep.configure(["-c", str(base), "--seeds", "0", "--out", str(tmp_path / "one")])
    assert single[0].config["data"]["init_args"]["source"] == load_base_config(str(base))["data"]["init_args"]["source"]
