"""Sweeps of populations: a base and its overlays as one base, the (epsilon, rho) grid figure, and a tiny
adversarial sweep of the exact learner through the console script."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_curate.experiments import sweep
from lightning_curate.experiments.aggregate import final_grid, plot_final_grid
from lightning_curate.experiments.config_keys import load_base_config
from lightning_curate.experiments.sweep import SweepError, load_sweep_file

REPO = Path(__file__).resolve().parents[2]
OVERLAY = "configs/overlays/discrete_adversarial.yaml"


def test_a_base_with_overlays_merges_like_the_cli(tmp_path):
    merged = load_base_config([REPO / "configs/discrete.yaml", REPO / OVERLAY])
    base = load_base_config(REPO / "configs/discrete.yaml")
    assert [c["init_args"]["name"] for c in merged["model"]["init_args"]["curators"]] == ["honest", "adversary"]
    assert merged["trainer"]["default_root_dir"] == "runs/discrete_adversarial"
    assert merged["model"]["init_args"]["reward"] == base["model"]["init_args"]["reward"]
    assert merged["trainer"]["callbacks"] == base["trainer"]["callbacks"]
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"r": {"class_path": "A", "init_args": {"x": 1, "y": 2}}, "l": [1, 2]}))
    b.write_text(yaml.safe_dump({"r": {"class_path": "B", "init_args": {"z": 3}}, "l": [3]}))
    assert load_base_config([a, b]) == {"r": {"class_path": "B", "init_args": {"z": 3}}, "l": [3]}
    b.write_text(yaml.safe_dump({"r": {"init_args": {"y": 5}}}))
    assert load_base_config([a, b])["r"] == {"class_path": "A", "init_args": {"x": 1, "y": 5}}
    with pytest.raises(SweepError, match="empty list"):
        load_base_config([])


def test_sweep_files_check_the_grid_figure(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": ["configs/discrete.yaml"], "grid_figure": {"x": "a", "metric": "m"}}))
    with pytest.raises(SweepError, match="grid_figure must map x, y, metric"):
        load_sweep_file(path)
    for name in ("discrete_adversarial", "discrete_negated", "mog8_adversarial", "digits_adversarial"):
        spec = load_sweep_file(REPO / "configs" / "sweeps" / f"{name}.yaml")
        assert list(spec["grid"].values()) == [[0.0, 0.1, 0.25, 0.5], [0.0, 0.25, 0.5]], name
        assert spec["grid_figure"]["metric"] == "reward_mean", name


def test_final_grid_averages_the_last_round_over_seeds(tmp_path):
    rows = [{"point": p, "seed": s, "round": t, "eps": e, "rho": 0.5, "m": v}
            for p, e, vals in (("a", 0.0, {0: [1.0, 2.0], 1: [3.0, 5.0]}), ("b", 0.5, {0: [0.0, 0.0], 1: [7.0, "nan"]}))
            for s in (0, 1) for t, v in ((0, vals[0][s]), (1, vals[1][s]))]
    assert final_grid(rows, "rho", "eps", "m") == {(0.5, 0.0): 4.0, (0.5, 0.5): 7.0}
    path = plot_final_grid(rows, tmp_path / "g.png", x="rho", y="eps", metric="m", reference="m")
    assert path is not None and path.stat().st_size > 1000
    assert plot_final_grid(rows, tmp_path / "h.png", x="rho", y="eps", metric="absent") is None


def test_a_tiny_adversarial_sweep_draws_its_grid(tmp_path):
    base = load_base_config([REPO / "configs/discrete.yaml", REPO / OVERLAY])
    base["trainer"]["callbacks"][0]["init_args"].update(rounds=2, plots=False)
    base["model"]["init_args"].update(num_slots=1000, preview_size=500)
    base["data"]["init_args"]["source"]["init_args"].update(num_train=2000, num_heldout=500)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    share = "model.init_args.curators.1.init_args.share"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "base": ["base.yaml"], "grid": {share: [0.0, 0.5], "data.init_args.real_fraction": [0.0]},
        "seeds": [0], "out": str(out), "metrics": ["reward_mean"],
        "grid_figure": {"x": "data.init_args.real_fraction", "y": share, "metric": "reward_mean",
                        "reference": "ideal_reward_mean"}}))
    assert sweep.main([str(tmp_path / "s.yaml")]) == 0
    assert (out / "figures" / "grid_reward_mean.png").is_file()
    _, rows = sweep.aggregate(sweep.configure([str(tmp_path / "s.yaml")])[2], out)
    runs = final_grid(rows, "data.init_args.real_fraction", share, "reward_mean")
    ideal = final_grid(rows, "data.init_args.real_fraction", share, "ideal_reward_mean")
    # Without adversaries the honest reward climbs; half the slots pulling to class 1 hold it back.
    assert runs[(0.0, 0.0)] > runs[(0.0, 0.5)] + 0.5 and ideal[(0.0, 0.0)] > ideal[(0.0, 0.5)] + 0.5
    for cell in runs:  # the exact learner is the ideal learner, up to 1,000-slot sampling noise
        assert abs(runs[cell] - ideal[cell]) < 0.3, cell
