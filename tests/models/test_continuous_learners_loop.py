"""The continuous exact learners inside the loop: from Python (a Lightning Trainer) and a resumed
YAML run whose checkpoint carries the fitted state (the KDE's stored points change size every round)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from run_configs import store_digest

from lightning_curate.cli import main
from lightning_curate.data import BlendingDataModule, Toy2D
from lightning_curate.loop import CurationModule, RetrainingLoop
from lightning_curate.models import GaussianLearner, KDELearner, gaussian_moments
from lightning_curate.rewards import ClippedDistanceReward

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("generator", [GaussianLearner(dim=2), KDELearner(dim=2, bandwidth="silverman")],
                         ids=["gaussian", "kde"])
def test_python_run_fits_each_round_on_the_previous_rounds_winners(tmp_path, generator):
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.5, gamma=1.0)
    module = CurationModule(generator, reward, num_slots=300, num_candidates=4, preview_size=100)
    data = BlendingDataModule(Toy2D(name="mog8", num_train=600, num_heldout=400, seed=0), batch_size=600)
    loop = RetrainingLoop(rounds=2, epochs_per_round=1, initial_epochs=1, seed=0, plots=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, callbacks=[loop], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert loop.complete and module.configure_optimizers() is None
    assert int(generator.fits) == 3  # rounds 0, 1, 2
    last_set = loop.store.read(1).tensors["x"]  # round 2 trained on round 1's winners (real_fraction 0)
    mean, cov = gaussian_moments(last_set)
    if isinstance(generator, KDELearner):
        assert torch.equal(generator.points, last_set)
        cov = cov + generator.kernel_cov  # the model's law: the set's, smoothed by the kernel
    else:
        assert torch.equal(generator.mean, mean) and torch.equal(generator.cov, cov)
    # rounds.csv carries the model's exact moments.
    row = loop.store.read(2).manifest["row"]
    assert row["model_cov_trace"] == pytest.approx(float(cov.trace()), rel=1e-12)
    assert [row["model_mean_0"], row["model_mean_1"]] == pytest.approx(mean.tolist(), abs=1e-12)
    assert [row["model_var_0"], row["model_var_1"]] == pytest.approx(cov.diagonal().tolist(), rel=1e-12)


def _config(tmp_path: Path, name: str, crash_epoch: int | None = None) -> Path:
    root = tmp_path / name
    callbacks = [{"class_path": "lightning_curate.loop.RetrainingLoop",
                  "init_args": {"rounds": 3, "epochs_per_round": 1, "initial_epochs": 1, "seed": 0, "plots": False}},
                 {"class_path": "lightning_curate.loop.RoundCheckpoint",
                  "init_args": {"dirpath": str(root / "checkpoints"), "save_last": True, "save_top_k": 1}}]
    if crash_epoch is not None:
        callbacks.append({"class_path": "run_configs.CrashAtEpoch", "init_args": {"epoch": crash_epoch}})
    cfg = {"trainer": {"default_root_dir": str(root), "enable_progress_bar": False, "callbacks": callbacks},
           "model": {"init_args": {"num_slots": 300}},
           "data": {"init_args": {"source": {"init_args": {"num_train": 600, "num_heldout": 400}}}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["mog8_gaussian", "mog8_kde"])
def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path, monkeypatch, overlay):
    monkeypatch.setattr(sys, "argv", ["lightning-curate"])
    configs = REPO / "configs"
    base = ["fit", "-c", str(configs / "mog8.yaml"), "-c", str(configs / "overlays" / f"{overlay}.yaml")]
    main([*base, "-c", str(_config(tmp_path, "ref"))])
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*base, "-c", str(_config(tmp_path, "crash", crash_epoch=2))])  # rounds 0 and 1 are done
    assert sorted(store_digest(tmp_path / "crash")) == ["round_000", "round_001"]
    # The fresh model holds one point; the checkpoint's KDE holds 300: loading resizes the buffer.
    main([*base, "-c", str(_config(tmp_path, "crash")), "--ckpt_path", "last"])
    assert store_digest(tmp_path / "crash") == store_digest(tmp_path / "ref")
