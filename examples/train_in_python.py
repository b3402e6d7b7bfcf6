"""The same runs as gradient.yaml and em.yaml, built in Python with your own Trainer.

Run from this folder::

    python train_in_python.py --learner em          # or: --learner gradient
    python train_in_python.py --learner em --out runs/py_em --rounds 3

Everything a config names is an ordinary object here: the generator, reward and
data source of this folder, ``CurationModule``, ``BlendingDataModule`` and the
``RetrainingLoop`` callback, which runs the rounds inside one ``Trainer.fit``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from my_data import Blobs
from my_em_learner import GaussianMixtureEM
from my_generator import LearnedMixture
from my_reward import NearTarget

from lightning_curate import BlendingDataModule, CurationModule, RetrainingLoop

__all__ = ["build", "main"]


def build(learner: str, out: Path, rounds: int = 2,
          plots: bool = True) -> tuple[L.Trainer, CurationModule, BlendingDataModule]:
    """The trainer, module and data module of one run of ``learner`` (``gradient`` or ``em``) in ``out``."""
    L.seed_everything(0)
    if learner == "gradient":  # trained by AdamW: ten epochs a round
        generator, lr, epochs, initial, batch = LearnedMixture(num_components=4, spread=2.0), 0.05, 10, 10, 50
    elif learner == "em":  # fitted by fit(x) once a round: one epoch is enough
        generator, lr, epochs, initial, batch = GaussianMixtureEM(num_components=4, iterations=30), 1e-3, 1, 1, 100
    else:
        raise ValueError(f"learner must be 'gradient' or 'em', got {learner!r}")
    module = CurationModule(generator, NearTarget(target=[2.0, 0.0], gamma=2.0), num_slots=500, num_candidates=4,
                            lr=lr, preview_size=300)
    data = BlendingDataModule(Blobs(num_blobs=4, num_train=1000, num_heldout=300), real_fraction=0.0,
                              batch_size=batch)
    loop = RetrainingLoop(rounds=rounds, epochs_per_round=epochs, initial_epochs=initial, seed=0, plots=plots)
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=out, callbacks=[loop],
                        logger=CSVLogger(out, name="", version=""), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10)
    return trainer, module, data


def main(argv: list[str] | None = None) -> Path:
    """Run one example; returns the run's directory (its ``rounds.csv``, ``samples.png``, rounds)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learner", choices=["gradient", "em"], default="em")
    parser.add_argument("--out", type=Path, default=None, help="the run directory (default runs/py_<learner>)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-plots", action="store_true", help="write no figures")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / f"py_{args.learner}"
    trainer, module, data = build(args.learner, out, args.rounds, plots=not args.no_plots)
    trainer.fit(module, datamodule=data)
    return out


if __name__ == "__main__":
    main()
